import json
import re
import subprocess
import sys

from recsys.cli import main
from tests.conftest import REPO, needs_data


@needs_data("amazon-beauty-bert4rec")
def test_data_info_beauty(capsys):
    assert main(["data", "info", "beauty"]) == 0
    out = capsys.readouterr().out
    assert "users         40,226" in out
    assert "items         54,542" in out
    assert "interactions  353,962" in out
    assert "p50=" in out
    assert "side files    none\n" in out


@needs_data("s3rec-beauty-lastfm")
def test_data_info_names_a_cards_side_files(capsys):
    assert main(["data", "info", "s3rec-beauty"]) == 0
    assert "side files    item attributes (Beauty_item2attributes.json)\n" in capsys.readouterr().out


@needs_data("ml-100k")
def test_data_info_ml100k(capsys):
    assert main(["data", "info", "ml-100k"]) == 0
    out = capsys.readouterr().out
    assert "users         943\n" in out and "items         1,682\n" in out and "interactions  100,000\n" in out


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    assert "beauty" in capsys.readouterr().out


def test_bad_override_exits_2_with_key_name(capsys):
    code = main(["train", str(REPO / "recipes/ml-100k/sasrec.toml"), "--set", "model.num_blockz=3"])
    assert code == 2
    assert "unknown key 'model.num_blockz'" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path))
    code = main(["data", "info", "scientific"])
    assert code == 2 and "none of [Scientific.test.inter] found" in capsys.readouterr().err


@needs_data("ml-100k")
def test_train_evaluate_and_log_results(tmp_path, capsys):
    run = tmp_path / "run"
    jsonl = tmp_path / "results.jsonl"
    args = [
        "train",
        str(REPO / "recipes/ml-100k/sasrec.toml"),
        "--run-dir",
        str(run),
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "model.max_seq_len=20",
        "--set",
        "model.num_blocks=1",
        "--log-results",
        str(jsonl),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test (best epoch 1 of 1)" in out and "ndcg@10=" in out
    record = json.loads(jsonl.read_text().splitlines()[0])
    assert record["kind"] == "train" and record["dataset"]["sha256"].startswith("06416e59")
    assert record["protocol"]["exclude_seen"] is True
    final = json.loads((run / "final_metrics.json").read_text())
    assert record["metrics"]["test"]["ndcg@10"] == final["test"]["ndcg@10"]
    # evaluate re-computes the same test metrics from the best checkpoint
    assert main(["evaluate", str(run)]) == 0
    assert f"ndcg@10={final['test']['ndcg@10']:.4f}" in capsys.readouterr().out
    # results markdown is rendered from the JSONL alone
    md = tmp_path / "RESULTS.md"
    render = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "render_results.py"), str(jsonl), "--out", str(md)],
        capture_output=True,
        text=True,
    )
    assert render.returncode == 0, render.stderr
    assert f"{final['test']['ndcg@10']:.4f}" in md.read_text()


def test_data_info_on_a_file_of_ones_own(tmp_path, capsys):
    p = tmp_path / "log.txt"
    p.write_text("1 5\n1 6\n2 5\n2 7\n2 8\n")
    assert main(["data", "info", str(p), "--reader", "user_item_lines"]) == 0
    out = capsys.readouterr().out
    assert "users         2\n" in out and "items         4\n" in out and "p50=2.5" in out
    assert "events per item percentiles: p0=1  p50=1  p90=1.7" in out  # 5: 2 events, 6 7 8: one each
    assert "repeat events 0.0% of all, 0.0% of the users' last ones" in out
    assert main(["data", "info", str(p)]) == 2
    assert "give --reader" in capsys.readouterr().err
    # a log timed in milliseconds: the span of its dates shows the unit read
    ms = tmp_path / "ms.csv"
    ms.write_text("user_id,item_id,ts\nu1,a,1700000000700\nu1,b,1700086400000\n")
    args = ["data", "info", str(ms), "--columns", "user_id=user_id,item_id=item_id,timestamp=ts"]
    assert main(args) == 0
    assert "timestamps    yes, 2023-11-14 to 2023-11-15 (UTC" in capsys.readouterr().out
    assert main([*args, "--timestamp-unit", "s"]) == 0  # read as seconds: past the calendar's years
    assert "timestamps    yes, 1,700,000,000,700 s to 1,700,086,400,000 s" in capsys.readouterr().out


@needs_data("taobao-userbehavior-sample")
def test_click_recipe_trains_seeds_and_reports_spread(tmp_path, capsys):
    jsonl = tmp_path / "r.jsonl"
    args = [
        "train",
        str(REPO / "recipes/taobao/dare.toml"),
        "--seeds",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "data.max_history=30",
        "--log-results",
        str(jsonl),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dare on taobao, 2 seed(s)" in out and "auc" in out and "±" in out
    record = json.loads(jsonl.read_text())
    assert record["kind"] == "click" and len(record["per_seed"]) == 2
    assert 0.0 <= record["summary"]["test_auc_mean"] <= 1.0
    assert main(["train", str(REPO / "recipes/taobao/dare.toml"), "--set", "model.top_kk=3"]) == 2


def _custom_log(tmp_path, bad_line: int | None = None):
    """A TSV log with day-first date-times: 30 users x 6 events over 20 items; optionally one bad date."""
    rows = ["visitor\tproduct\twhen"]
    for user in range(30):
        for k in range(6):
            rows.append(f"v{user}\tp{(user * 7 + k * 3) % 20}\t{k + 1:02d}/02/2024 {user % 24:02d}:00")
    if bad_line is not None:
        rows[bad_line - 1] = "v1\tp1\tsoon"
    (tmp_path / "events.tsv").write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "custom.toml"
    recipe.write_text(
        '[data]\ndataset = "custom"\npath = "' + str(tmp_path / "events.tsv") + '"\nreader = "table"\n'
        'columns = { user_id = "visitor", item_id = "product", timestamp = "when" }\n'
        'timestamp_format = "%d/%m/%Y %H:%M"\n'
        '[model]\nname = "sasrec"\nmax_seq_len = 10\nhidden_dim = 16\nnum_blocks = 1\n[train]\nepochs = 1\n'
    )
    return recipe


def test_train_on_a_custom_tsv_log_with_a_date_format(tmp_path, capsys):
    recipe = _custom_log(tmp_path)
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "30 users, 20 items, 180 interactions" in out
    metrics = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert metrics["test"]["num_users"] == 30


def test_a_bad_date_in_a_custom_log_names_its_line(tmp_path, capsys):
    recipe = _custom_log(tmp_path, bad_line=9)
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "events.tsv, line 9: field 'timestamp' is neither an integer nor a date-time: 'soon'" in err


def test_train_on_a_gzipped_csv_without_a_header_by_column_numbers(tmp_path, capsys):
    import gzip

    # Amazon's ratings files: user,item,rating,time and no header line; here in Latin-1
    rows = [
        f"A{user},B\u00e9{(user * 7 + k * 3) % 20},5.0,{1_400_000_000 + k * 86_400}"
        for user in range(30)
        for k in range(6)
    ]
    (tmp_path / "ratings.csv.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode("latin-1")))
    recipe = tmp_path / "ratings.toml"
    recipe.write_text(
        '[data]\ndataset = "custom"\npath = "ratings.csv.gz"\nreader = "table"\nheader = false\n'
        'encoding = "latin-1"\n'
        "columns = { user_id = 1, item_id = 2, rating = 3, timestamp = 4 }\n"
        '[model]\nname = "sasrec"\nmax_seq_len = 10\nhidden_dim = 16\nnum_blocks = 1\n[train]\nepochs = 1\n'
    )
    assert main(["data", "info", str(recipe)]) == 0
    assert re.search(r"users\s+30\n", capsys.readouterr().out)
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    assert "30 users, 20 items, 180 interactions" in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "info",
                str(tmp_path / "ratings.csv.gz"),
                "--no-header",
                "--encoding",
                "latin-1",
                "--columns",
                "user_id=1,item_id=2",
            ]
        )
        == 0
    )
    assert re.search(r"users\s+30\n", capsys.readouterr().out)
    recipe.write_text(recipe.read_text().replace("user_id = 1,", "user_id = true,"))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run2"), "--quiet"]) == 2
    assert "data.columns" in capsys.readouterr().err


def test_table_options_with_another_reader_are_refused(tmp_path, capsys):
    log = tmp_path / "log.txt"
    log.write_text("1 2\n1 3\n1 4\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\ndataset = "custom"\npath = "{log}"\nreader = "user_item_lines"\nseparator = ";"\n')
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    assert "data.separator is an option of data.reader = 'table', not 'user_item_lines'" in capsys.readouterr().err
    recipe.write_text(
        f'[data]\ndataset = "custom"\npath = "{log}"\nreader = "user_item_lines"\ntimestamp_unit = "ms"\n'
    )
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    assert "data.timestamp_unit is an option of data.reader = 'table'" in capsys.readouterr().err


def test_a_recipe_that_is_not_toml_is_a_clear_error(tmp_path, capsys):
    recipe = tmp_path / "broken.toml"
    recipe.write_text('[data\ndataset = "ml-100k"\n')
    assert main(["train", str(recipe)]) == 2
    assert (
        "broken.toml: not valid TOML (Expected ']' at the end of a table declaration (at line 1"
        in capsys.readouterr().err
    )


def test_an_existing_run_is_refused_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    import recsys.train

    recipe = _custom_log(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    monkeypatch.setattr(recsys.train, "prepare_data", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    assert "already holds a run; use --resume" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file")
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "taken"), "--quiet"]) == 2
    assert "taken: a file is there (or above it), where a folder is due" in capsys.readouterr().err


def test_evaluate_refuses_to_change_a_finished_runs_model_or_data(tmp_path, capsys):
    recipe = _custom_log(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--set", "model.hidden_dim=32"]) == 2
    assert "--set model.hidden_dim: a finished run's model and data are fixed" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--set", "eval.exclude_seen=false", "--set", "train.num_threads=1"]) == 0


def test_click_recipe_ranges_are_checked(capsys):
    assert main(["train", str(REPO / "recipes/taobao/din.toml"), "--set", "train.epochs=0"]) == 2
    assert "din.toml: train.epochs must be >= 1" in capsys.readouterr().err


def test_seeds_trains_one_run_per_seed_and_reports_the_spread(tmp_path, capsys):
    recipe = _custom_log(tmp_path)
    jsonl = tmp_path / "results.jsonl"
    assert (
        main(
            [
                "train",
                str(recipe),
                "--run-dir",
                str(tmp_path / "runs"),
                "--seeds",
                "2",
                "--quiet",
                "--log-results",
                str(jsonl),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test over 2 seeds (42..43): mean ± standard deviation" in out
    configs = [json.loads((tmp_path / "runs" / f"seed-{s}" / "config.json").read_text()) for s in (42, 43)]
    assert [c["train"]["seed"] for c in configs] == [42, 43]
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["overrides"] for r in records] == [["train.seed=42"], ["train.seed=43"]]
    assert main(["train", str(REPO / "recipes/taobao/din.toml"), "--seeds", "0"]) == 2
    assert "train.seeds must be >= 1" in capsys.readouterr().err
    assert main(["train", str(recipe), "--seeds", "0"]) == 2
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err


def test_a_relative_data_path_is_found_beside_the_recipe_and_kept_absolute(tmp_path, monkeypatch, capsys):
    recipe = _custom_log(tmp_path)
    recipe.write_text(recipe.read_text().replace(str(tmp_path / "events.tsv"), "events.tsv"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the file is not here: the recipe's folder holds it
    assert main(["train", str(recipe), "--run-dir", "run", "--quiet"]) == 0
    config = json.loads((elsewhere / "run" / "config.json").read_text())
    assert config["data"]["path"] == str((tmp_path / "events.tsv").resolve())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(elsewhere / "run")]) == 0  # from another directory
    assert "(30 users" in capsys.readouterr().out


def test_data_info_of_a_custom_recipe_and_of_a_table_file(tmp_path, capsys):
    recipe = _custom_log(tmp_path)
    assert main(["data", "info", str(recipe)]) == 0  # the recipe's reader, columns and date format
    out = capsys.readouterr().out
    assert "users         30\n" in out and "interactions  180\n" in out and "timestamps    yes" in out
    log = tmp_path / "plain.csv"
    log.write_text("who,what\n" + "".join(f"u{u},i{(u + k) % 9}\n" for u in range(4) for k in range(5)))
    assert main(["data", "info", str(log), "--reader", "table", "--columns", "user_id=who,item_id=what"]) == 0
    assert "interactions  20\n" in capsys.readouterr().out
    assert main(["data", "info", str(log), "--reader", "table"]) == 2  # it was a TypeError
    assert "missing column(s) ['user_id', 'item_id']; the file has ['who', 'what']" in capsys.readouterr().err


def test_a_log_filtered_to_nothing_says_which_filter(tmp_path, capsys):
    log = tmp_path / "tiny.csv"
    log.write_text("u,i,t\n1,a,1\n1,b,2\n")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'[data]\ndataset = "custom"\npath = "{log}"\nreader = "table"\n'
        'columns = { user_id = "u", item_id = "i", timestamp = "t" }\n[train]\nepochs = 1\n'
    )
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    assert "no interactions left after filtering (dropped 1 users with fewer than 3 events" in capsys.readouterr().err
    log.write_text("u,i,t\n1,a,1\n1,b,2\n1,c,3\n")
    assert (
        main(
            ["train", str(recipe), "--run-dir", str(tmp_path / "run2"), "--quiet", "--set", "eval.sampled_negatives=5"]
        )
        == 2
    )
    assert "eval.sampled_negatives=5: the catalogue has 3 items" in capsys.readouterr().err


def test_data_info_on_a_missing_path_or_a_folder_says_so(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "events.csv")]) == 2
    assert "events.csv: file not found" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_recipes_and_config_show(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "ml-100k/sasrec" in out and "beauty/sasrec_ce" in out
    assert main(["config", "show", "ml-100k/sasrec", "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "[train]" in out and "epochs = 3   (default 200)" in out
    assert "epochs without validation improvement before stopping" in out  # each key's meaning
    assert main(["config", "show", "taobao/dare"]) == 0 and "top_k" in capsys.readouterr().out
    assert main(["config", "show", "ml-100k/sasrc"]) == 2
    assert "did you mean ml-100k/sasrec" in capsys.readouterr().err


def test_help_and_data_list_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from recsys.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['data', 'list']); main(['recipes'])\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules, 'recsys.models' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


@needs_data("ml-100k")
def test_train_takes_a_packaged_recipe_by_name(tmp_path, capsys):
    args = [
        "train",
        "ml-100k/sasrec",
        "--run-dir",
        str(tmp_path / "r"),
        "--quiet",
        "--log-results",
        str(tmp_path / "r.jsonl"),
    ]
    args += ["--set", "train.epochs=1", "--set", "model.hidden_dim=16", "--set", "model.num_blocks=1"]
    assert main(args) == 0
    assert json.loads((tmp_path / "r.jsonl").read_text())["recipe"] == "recipes/ml-100k/sasrec.toml"


def test_a_path_the_system_refuses_is_an_error_line_not_a_traceback(tmp_path, capsys):
    recipe = _custom_log(tmp_path)
    (tmp_path / "afile").write_text("")
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "afile" / "run"), "--quiet"]) == 2
    where = tmp_path / "afile" / "run"
    assert capsys.readouterr().err.strip() == f"error: {where}: a file is there (or above it), where a folder is due"
    # an export folder that exists is refused before the run (here: none) is read
    assert main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'afile'} exists; export into a new folder"


def test_a_log_changed_after_training_is_refused_by_evaluate_export_and_resume(tmp_path, capsys):
    recipe = _custom_log(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run), "--quiet"]) == 0
    log = tmp_path / "events.tsv"
    log.write_text(log.read_text() + "v1\tp3\t09/02/2024 10:00\n")  # one more event: v1's test target moves
    capsys.readouterr()
    for command in (
        ["evaluate", str(run)],
        ["export", str(run), "--out", str(tmp_path / "export")],
        ["train", str(recipe), "--run-dir", str(run), "--resume", "--quiet"],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{log} is not the data {run} was trained on (sha256: " in err and "test targets would differ" in err
    # a run killed before it saved a model: said before its data is read
    (run / "best.pt").unlink()
    for command in (["evaluate", str(run)], ["export", str(run), "--out", str(tmp_path / "export")]):
        assert main(command) == 2
        assert "no best.pt: the run has not saved a model yet" in capsys.readouterr().err


@needs_data("ml-100k")
def test_config_new_writes_a_recipe_for_a_log_that_trains_from_anywhere(tmp_path, capsys, monkeypatch):
    from tests.conftest import DATA_DIR

    log = (DATA_DIR / "ml-100k" / "u.data").resolve()  # tab-separated, no header: user, item, rating, time
    out = tmp_path / "recipes" / "mine.toml"
    flags = ["--separator", "\t", "--no-header", "--columns", "user_id=1,item_id=2,timestamp=4"]
    assert main(["config", "new", str(log), "--model", "hstu", *flags, "--out", str(out)]) == 0
    assert "943 users, 1,682 items" in capsys.readouterr().out
    text = out.read_text()
    assert "The median history holds 65 events: a window of 200." in text and 'name = "hstu"' in text
    assert "columns = { " in text and '"timestamp" = 4' in text and "header = false" in text
    monkeypatch.chdir(tmp_path)  # the recipe names the log relative to itself
    small = ["--set", "train.epochs=1", "--set", "model.hidden_dim=16", "--set", "train.num_threads=1"]
    assert main(["train", str(out), "--run-dir", str(tmp_path / "run"), "--quiet", *small]) == 0
    assert "943 users" in (tmp_path / "run" / "train.log").read_text()
    # refused: an existing recipe, a text model, a column name where numbers are due, a missing log
    assert main(["config", "new", str(log), *flags, "--out", str(out)]) == 2
    assert "mine.toml exists" in capsys.readouterr().err
    assert main(["config", "new", str(log), "--model", "recformer", *flags]) == 2
    assert "the text models need item text" in capsys.readouterr().err
    assert main(["config", "new", str(log), "--no-header", "--columns", "user_id=user,item_id=2"]) == 2
    assert "user_id='user' is not a column number" in capsys.readouterr().err
    assert main(["config", "new", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err


def test_a_gpu_asked_for_on_a_machine_without_one_is_an_error_line(tmp_path, capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    recipe = _custom_log(tmp_path)
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--set", "train.device=cuda"]) == 2
    assert "error: train.device = 'cuda' but no CUDA device is available here" in capsys.readouterr().err
