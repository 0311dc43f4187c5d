"""RESULTS.md is rendered (benchmarks/render_results.py) from records of every kind the benchmarks write."""

import sys
from pathlib import Path

import pytest

from recsys.results import make_record

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from render_results import _machine_short, render_markdown, write_markdown  # noqa: E402

MACHINE = {"cpu": "test cpu", "torch_threads": 2}


def _rec(kind, **fields):
    r = make_record(kind, command=f"cmd-{kind}", commit="abc1234", **fields)
    r["machine"] = MACHINE
    return r


def test_every_record_kind_renders():
    ds = {"dataset": "beauty", "file": "beauty.txt", "items": 54542}
    records = [
        _rec(
            "train",
            recipe="recipes/beauty/sasrec_ce.toml",
            dataset=ds,
            model="sasrec",
            loss="ce",
            protocol={"split": "leave_one_out", "exclude_seen": True},
            metrics={"test": {"hr@10": 0.0512, "ndcg@10": 0.0321}, "best_epoch": 20, "epochs_run": 30},
            timings={"train_seconds": 1800.0},
            peak_memory_mb=900.0,
            note="a remark",
            history=[
                {"epoch": 1, "train_loss": 9.0, "ndcg@10": 0.01},
                {"epoch": 2, "train_loss": 8.0, "ndcg@10": 0.02},
            ],
        ),
        _rec(
            "timing",
            dataset=ds,
            model="sasrec",
            loss="ce",
            max_seq_len=50,
            train_epoch_seconds=90.0,
            targets_per_second=2500.0,
            eval_seconds=2.8,
            eval_users=40226,
            eval_users_per_second=14366.0,
            peak_memory_mb=800.0,
        ),
        _rec(
            "timing",
            dataset=ds,
            model="sasrec",
            loss="ce",
            max_seq_len=50,
            train_epoch_seconds=32.5,
            targets_per_second=7000.0,
            eval_seconds=2.8,
            eval_users=40226,
            eval_users_per_second=14366.0,
            peak_memory_mb=800.0,
            from_epoch=34,
            recipe="recipes/beauty/sasrec_ce.toml",
            overrides=["model.reasoning_steps=3", "train.num_threads=1"],
        ),
        _rec(
            "retrieval",
            catalogue="synthetic 1,000,000 x 64",
            rows=[
                {
                    "index": "hnsw",
                    "params": {"M": 32},
                    "build_seconds": 100.0,
                    "queries_per_second": 5000.0,
                    "speedup_vs_exact": 25.0,
                    "recall@10": 0.97,
                    "ndcg@10": 0.03,
                }
            ],
        ),
        _rec(
            "click",
            recipe="recipes/taobao/dare.toml",
            dataset="taobao",
            model="dare",
            samples={"train": 100, "test": 10},
            per_seed=[{}, {}],
            summary={f"test_{m}_{s}": 0.5 for m in ("auc", "gauc", "logloss") for s in ("mean", "std")},
        ),
        _rec(
            "dare_sweep",
            recipe="r.toml",
            seeds=5,
            history=1000,
            rows=[
                {
                    "attention_dim": 8,
                    "stage1_ms": 9.0,
                    "test_auc_mean": 0.65,
                    "test_auc_std": 0.01,
                    "test_gauc_mean": 0.64,
                    "test_gauc_std": 0.02,
                }
            ],
        ),
        _rec(
            "full_ce",
            rows=[
                {
                    "items": 10**6,
                    "positions": 25600,
                    "dim": 64,
                    "impl": "chunked",
                    "seconds": 100.0,
                    "peak_rss_mb": 900.0,
                    "plain_logits_gb": 190.7,
                }
            ],
        ),
        _rec(
            "ingest",
            events=20_000_000,
            users=300_000,
            items=900_000,
            file_mb=300.0,
            read_seconds=5.0,
            prepare_seconds=10.0,
            save_seconds=1.0,
            total_seconds=20.0,
            peak_rss_mb=3000.0,
            custom_first_seconds=7.5,
            custom_first_peak_rss_mb=3100.0,
            custom_cached_seconds=0.16,
            custom_cached_peak_rss_mb=480.0,
        ),
        _rec(
            "kernels",
            dtype="bf16",
            heads=4,
            dim=128,
            tokens=131072,
            rows=[
                {
                    "N": 4096,
                    "batch": 32,
                    "impl": "triton",
                    "fwd_ms": 1.0,
                    "fwd_tflops": 150.0,
                    "fwdbwd_ms": 3.0,
                    "fwdbwd_tflops": 100.0,
                    "fwdbwd_peak_mb": 1000.0,
                },
                {"N": 8192, "batch": 16, "impl": "reference", "error": "out of memory"},
            ],
        ),
        _rec(
            "eval_breakdown",
            recipe="r.toml",
            dataset="ml-1m",
            model="sasrec",
            max_seq_len=200,
            ranks="cutoff",
            threads=2,
            repeats=5,
            num_users=2999,
            metrics={},
            attention_free_bound=1.71,
            eval_flops=17.9e9,
            rows=[
                {
                    "variant": "as is",
                    "total_seconds": 0.231,
                    "encoder_seconds": 0.212,
                    "batches_seconds": 0.004,
                    "rest_seconds": 0.014,
                    "total_seconds_range": [0.227, 0.233],
                    "users_per_second": 12977.0,
                }
            ],
        ),
    ]
    md = render_markdown(
        records,
        {"recipes/beauty/sasrec_ce.toml": {"hr@10": 0.0533, "ndcg@10": 0.0327, "source": "paper"}},
        plots=[("beauty", "learning_curves_beauty.png")],
    )
    for expected in (
        "0.0321",
        "0.0327 (paper)",
        "a remark",
        "learning_curves_beauty.png",
        "2.80 s",
        "0.970",
        "0.5000 ± 0.5000",
        "9.00 ms",
        "32.5 s (after epoch 34)",
        "sasrec_ce (model.reasoning_steps=3): sasrec / ce",  # a timing's variant is named, not its threads
        "190.7 GB",
        "20,000,000",
        "out of memory",
        "150.0",
        "at most 1.71x",
        "0.227-0.233",
        "17.90 GFLOP",
        "77.5 GFLOP/s",
        "| 0.16 s | 480 MB |",
    ):
        assert expected in md, expected


def test_a_line_that_is_not_json_names_the_file_and_line(tmp_path):
    import pytest

    from recsys.errors import DataError

    bad = tmp_path / "results.jsonl"
    bad.write_text('{"kind": "train"}\nnot json\n')
    with pytest.raises(DataError, match="results.jsonl, line 2: not a readable results record"):
        write_markdown(bad, tmp_path / "R.md")
    assert not (tmp_path / "R.md").exists()


def test_machine_names_the_cpu_generation_and_its_vector_units():
    import torch

    from recsys.results import machine

    m = machine()
    assert m["cores"] >= 1 and m["torch_threads"] == torch.get_num_threads()
    if hasattr(torch.backends, "cpu") and hasattr(torch.backends.cpu, "get_cpu_capability"):
        assert m["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
        assert f"({m['cpu_isa']})" in _machine_short(m)
    assert isinstance(m.get("cpu_bf16_units", False), bool)
    # an older record (no cpu_isa) still renders as before
    assert _machine_short({"cpu": "X", "torch_threads": 2}) == "X, 2 threads"
    assert _machine_short({"cpu": "X", "torch_threads": 1}) == "X, 1 thread"


def test_seed_runs_and_rearec_steps_get_their_tables(tmp_path):
    from render_results import plot_rearec, seed_tables

    def run(ndcg, seed, extra=(), date="2026-12-06 10:00 UTC"):
        overrides = [*extra, f"train.seed={seed}"]
        r = make_record(
            "train",
            command="recsys train s3rec-lastfm/sasrec --seeds 2 " + " ".join(f"--set {o}" for o in extra),
            commit="abc1234",
            recipe="s3rec-lastfm/sasrec",
            overrides=overrides,
            dataset={"dataset": "s3rec-lastfm", "file": "LastFM.txt"},
            model="sasrec",
            loss="ce",
            metrics={"test": {"hr@10": 2 * ndcg, "ndcg@10": ndcg}},
        )
        r["machine"], r["date"] = MACHINE, date
        return r

    records = [
        run(0.040, 42),
        run(0.044, 43),
        *(run(v, s, ["model.reasoning_steps=0", "model.reasoning_method=erl"]) for v, s in ((0.030, 42), (0.032, 43))),
        *(run(v, s, ["model.reasoning_steps=2", "model.reasoning_method=prl"]) for v, s in ((0.050, 42), (0.054, 43))),
    ]
    text = "\n".join(seed_tables(records, {"s3rec-lastfm/sasrec": {"ndcg@10": 0.0427, "source": "S3-Rec"}}))
    # the recipe as it ships: mean 0.042, sample std 0.0028 (sqrt(2) * 0.002)
    assert (
        "| `s3rec-lastfm/sasrec` | s3rec-lastfm (LastFM.txt) | sasrec / ce | 2 | 0.0840 ± 0.0057 | 0.0420 ± 0.0028 |"
        in text
    )
    assert "0.0427 (S3-Rec)" in text
    # ReaRec: K = 0 and K = 2 for PRL, K = 1 never run
    assert "| `s3rec-lastfm/sasrec` | prl | 0.0310 ± 0.0014 | 0.0520 ± 0.0028 | 2 |" in text
    # the same command again, stopped after its first seed: its one run replaces the earlier invocation
    again = run(0.058, 43, ["model.reasoning_steps=2", "model.reasoning_method=prl"], date="2026-12-06 11:00 UTC")
    text = "\n".join(seed_tables([*records, again], {}))
    assert "| `s3rec-lastfm/sasrec` | prl | 0.0310 ± 0.0014 | 0.0580 | 1/2 |" in text
    # rows by settings: K = 0 / 1 runs of the recipe file's settings, and of a width it no longer has
    import tomllib

    file_settings = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "recipes/s3rec-lastfm/sasrec.toml").read_text()
    )

    def configured(r, width):
        r["recipe"] = "recipes/s3rec-lastfm/sasrec.toml"  # as the CLI records a packaged recipe
        r["config"] = {section: dict(v) for section, v in file_settings.items() if isinstance(v, dict)}
        r["config"]["model"]["hidden_dim"] = width
        return r

    width = file_settings["model"]["hidden_dim"]
    rows = [
        configured(run(v, s, [f"model.reasoning_steps={k}", "model.reasoning_method=erl"]), w)
        for w, k, v in ((width, 0, 0.040), (width, 1, 0.044), (width // 2, 0, 0.030), (width // 2, 1, 0.020))
        for s in (42, 43)
    ]
    text = "\n".join(seed_tables(rows, {}))
    assert "| `recipes/s3rec-lastfm/sasrec.toml` | erl | 0.0400 ± 0.0000 | 0.0440 ± 0.0000 | 2 |" in text
    # without K = 0 runs of its own, a row's K = 0 is the recipe's plain run of the same settings
    plain = [configured(run(v, s), width) for v, s in ((0.036, 42), (0.040, 43))]
    no_k0 = [r for r in rows if "model.reasoning_steps=0" not in r["overrides"]]
    plain_text = "\n".join(seed_tables([*plain, *no_k0], {}))
    assert "| `recipes/s3rec-lastfm/sasrec.toml` | erl | 0.0380 ± 0.0028 | 0.0440 ± 0.0000 | 2 |" in plain_text
    assert "(earlier settings) | erl | – | 0.0200 ± 0.0000 | 2 |" in plain_text  # no plain run of that width
    assert (
        "| `recipes/s3rec-lastfm/sasrec.toml` (earlier settings) | erl | 0.0300 ± 0.0000 | 0.0200 ± 0.0000 | 2 |"
        in text
    )
    # the plot: one curve per recipe of its file's settings with K = 0 and another K (here +10% at K = 1)
    pytest.importorskip("matplotlib")
    assert plot_rearec(rows, tmp_path) == "rearec_steps.png" and (tmp_path / "rearec_steps.png").stat().st_size > 5000
    earlier = [r for r in rows if r["config"]["model"]["hidden_dim"] != width]
    assert plot_rearec(earlier, tmp_path / "none") is None  # only settings the recipe file no longer holds
    assert "![ReaRec: test NDCG@10 against K](rearec_steps.png)" in "\n".join(seed_tables(rows, {}, "rearec_steps.png"))
    study = make_record(
        "tune",
        command="recsys tune s3rec-lastfm/sasrec --timeout 3600",
        commit="abc1234",
        recipe="s3rec-lastfm/sasrec",
        trials={"COMPLETE": 6, "PRUNED": 4},
        study_wall_seconds=3600.0,
        trial_seconds=7200.0,
        best_trial=3,
        best_valid=0.07,
        best_params={"train.lr": 0.004},
        importances={},
        final_test=[{"ndcg@10": 0.05}, {"ndcg@10": 0.046}],
    )
    study["machine"] = MACHINE
    text = "\n".join(seed_tables([*records, study], {}))
    assert "| `s3rec-lastfm/sasrec` | 10 (6 / 4) | 1.00 h / 2.00 h | 0.0700 | 0.0480 ± 0.0028 (seeds: 2) |" in text
    assert "| 0.0420 ± 0.0028 |" in text.split("10 (6 / 4)")[1]  # the untuned recipe's test, beside it
    assert "0.0700" in render_markdown([study])  # the full page renders a study too


def test_the_log_is_a_folder_of_monthly_files(tmp_path):
    from render_results import read_records

    from recsys.results import append_record

    folder = tmp_path / "results"
    for date in ("2026-11-30 23:59 UTC", "2026-12-01 00:00 UTC", "2026-12-06 10:00 UTC"):
        record = _rec("startup", rows={})
        record["date"] = date
        append_record(record, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["2026-11.jsonl", "2026-12.jsonl"]
    assert len((folder / "2026-12.jsonl").read_text().splitlines()) == 2
    assert [r["date"][:10] for r in read_records(folder)] == ["2026-11-30", "2026-12-01", "2026-12-06"]
    single = tmp_path / "one.jsonl"  # a .jsonl path is still one file
    append_record(record, single)
    assert read_records(single) == [record]


def test_a_month_past_the_part_size_goes_on_in_a_numbered_part(tmp_path, monkeypatch):
    import json

    from render_results import read_records

    import recsys.results as results

    folder = tmp_path / "results"
    record = _rec("startup", rows={})
    line_bytes = len(json.dumps(record, sort_keys=True)) + 1
    monkeypatch.setattr(results, "PART_BYTES", 2 * line_bytes)  # two lines a file
    written = []
    for i in range(20):
        record = _rec("startup", rows={})
        record["date"] = f"2026-12-{i + 1:02d} 10:00 UTC"
        results.append_record(record, folder)
        written.append(record["date"][:10])
    names = [p.name for p in results.record_files(folder)]
    # numbered parts sort by number, not as text (".10" after ".9", the first part before ".2")
    assert names == ["2026-12.jsonl"] + [f"2026-12.{n}.jsonl" for n in range(2, 11)]
    assert all((folder / n).stat().st_size <= 2 * line_bytes for n in names)
    assert [r["date"][:10] for r in read_records(folder)] == written  # nothing lost, in order
    record["date"] = "2027-01-01 00:00 UTC"  # a new month starts its own file
    results.append_record(record, folder)
    assert results.record_files(folder)[-1].name == "2027-01.jsonl"


def test_no_file_of_the_shipped_log_reaches_one_mebibyte():
    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    files = list(folder.glob("*.jsonl"))
    assert files and all(f.stat().st_size < 1 << 20 for f in files)


def test_targets_table_holds_each_file_best_recipe_to_its_strongest_published_number():
    from render_results import targets_table

    def run(recipe, ndcg, seed, dataset="s3rec-lastfm", seeds=True):
        r = make_record(
            "train",
            command=f"recsys train {recipe}" + (" --seeds 2" if seeds else ""),
            commit="abc1234",
            recipe=recipe,
            overrides=[f"train.seed={seed}"],
            dataset={"dataset": dataset, "file": f"{dataset}.txt"},
            model="sasrec",
            loss="ce",
            metrics={"test": {"hr@10": 2 * ndcg, "ndcg@10": ndcg}},
        )
        r["machine"], r["date"] = MACHINE, "2026-12-07 10:00 UTC"
        return r

    records = [
        run("recipes/a.toml", 0.040, 42),
        run("recipes/a.toml", 0.044, 43),  # mean 0.042
        run("recipes/b.toml", 0.050, 42),
        run("recipes/b.toml", 0.052, 43),  # mean 0.051: the file's best
        run("recipes/c.toml", 0.070, 42, dataset="other", seeds=False),
        run("runs/study/best.toml", 0.060, 42),  # a study's settings, not a shipped recipe: never the best
        run("runs/study/best.toml", 0.062, 43),
    ]
    refs = {
        "recipes/a.toml": {"ndcg@10": 0.048, "source": "P1"},
        "recipes/b.toml": {"ndcg@10": 0.030, "source": "P2"},
        "recipes/c.toml": {"ndcg@10": 0.060, "source": "P3", "target": 0.071},
    }
    text = "\n".join(targets_table(records, refs))
    # the strongest published number on the file is a's 0.048, target 0.0504; b's mean 0.051 is +6.3%
    assert (
        "| s3rec-lastfm (s3rec-lastfm.txt) | 0.0480 (P1) | 0.0504 | `recipes/b.toml` | 2 | 0.0510 ± 0.0014 | +6.2% | yes |"
        in text
    )
    # one run only, below the file's own stricter bar (0.071 > 1.05 x 0.060)
    assert (
        "| other (other.txt) | 0.0600 (P3) | 0.0710 | `recipes/c.toml` | 1 | 0.0700 | +16.7% | no (one seed) |" in text
    )
    refs["recipes/a.toml"]["ndcg@10"] = 0.049  # now b misses the target (0.05145)
    assert "| no |" in "\n".join(targets_table(records, refs))


def test_a_recipe_file_changed_since_its_run_no_longer_owns_that_result():
    import tomllib

    from render_results import REPO, headline, seed_tables

    recipe = "recipes/s3rec-lastfm/sasrec.toml"
    today = tomllib.loads((REPO / recipe).read_text())

    def run(ndcg, seed, hidden, date):
        config = {s: dict(v) for s, v in today.items() if isinstance(v, dict)}
        config["model"]["hidden_dim"] = hidden
        config["train"].update(seed=seed, num_threads=2)
        config["loss"]["ce_matmul_dtype"] = "bfloat16"  # "auto" as the run resolved it
        r = make_record(
            "train",
            command="recsys train s3rec-lastfm/sasrec --seeds 2",
            commit="abc1234",
            recipe=recipe,
            overrides=[f"train.seed={seed}"],
            dataset={"dataset": "s3rec-lastfm", "file": "LastFM.txt"},
            model="sasrec",
            loss="ce",
            config=config,
            metrics={"test": {"hr@10": 2 * ndcg, "ndcg@10": ndcg}},
        )
        r["machine"], r["date"] = MACHINE, date
        return r

    old_hidden = today["model"]["hidden_dim"] // 2  # the file held another width then
    old = [run(0.030, 42, old_hidden, "2026-12-01 10:00 UTC"), run(0.032, 43, old_hidden, "2026-12-01 10:10 UTC")]
    text = "\n".join(seed_tables(old, {}) + headline(old, {}))
    assert "0.0310 ±" not in text and "| 0.0300 |" not in text  # neither table calls them the recipe's
    now = [run(0.040, 42, today["model"]["hidden_dim"], "2026-12-03 10:00 UTC")]
    now.append(run(0.044, 43, today["model"]["hidden_dim"], "2026-12-03 10:10 UTC"))
    text = "\n".join(seed_tables(old + now, {}))
    assert "| 0.0420 ± 0.0028 |" in text and "0.0310 ±" not in text
    study = make_record(
        "tune",
        command="recsys tune s3rec-lastfm/sasrec",
        commit="abc1234",
        recipe=recipe,
        trials={"COMPLETE": 2},
        study_wall_seconds=60.0,
        trial_seconds=60.0,
        best_trial=1,
        best_valid=0.07,
        best_params={},
        importances={},
        final_test=[],
    )
    study["machine"], study["date"] = MACHINE, "2026-12-02 10:00 UTC"
    row = [line for line in seed_tables([*old, *now, study], {}) if "2 (2 / 0)" in line][0]
    assert "| 0.0310 ± 0.0014 |" in row  # against what the study started from, not today's recipe


def test_the_shipped_recipes_table_leaves_out_a_study_best_recipe_under_runs():
    from render_results import headline

    def run(recipe, ndcg):
        r = make_record(
            "train",
            command=f"recsys train {recipe}",
            commit="abc1234",
            recipe=recipe,
            overrides=[],
            dataset={"dataset": "s3rec-lastfm", "file": "LastFM.txt"},
            model="sasrec",
            loss="ce",
            config={"model": {"hidden_dim": 64}},
            metrics={"test": {"hr@10": 2 * ndcg, "ndcg@10": ndcg}},
        )
        r["machine"] = MACHINE
        return r

    # neither file exists in the repository, so each record is its recipe "as it ships"
    text = "\n".join(headline([run("recipes/x/sasrec.toml", 0.0411), run("runs/tune-x/best.toml", 0.0422)], {}))
    assert "| `recipes/x/sasrec.toml` |" in text and "| 0.0411 |" in text
    assert "runs/tune-x/best.toml" not in text
