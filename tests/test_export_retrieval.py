"""Round trip: train a tiny model -> export -> build index -> retrieve == the evaluator's exact top-k."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import recsys
from recsys.cli import main
from recsys.data.readers import DataError
from recsys.export import export_run, load_encoder, read_manifest, save_encoder

faiss = pytest.importorskip("faiss")

from recsys.retrieval import build_index, evaluate_through_index, load_index, search  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(80):
        start = rng.integers(0, 40)
        step = rng.integers(1, 3)
        rows += [(f"u{u}", f"i{(start + step * k) % 40}", k) for k in range(10)]
    data = recsys.from_frame(pd.DataFrame(rows, columns=["user", "item", "t"]), user="user", item="item", time="t")
    run = tmp_path_factory.mktemp("run") / "run"
    model = recsys.fit(
        data,
        overrides=[
            "model.max_seq_len=8",
            "model.hidden_dim=16",
            "model.num_blocks=1",
            "train.epochs=3",
            "train.patience=0",
        ],
        run_dir=run,
        progress=False,
    )
    return model, data, run


def test_export_files_and_manifest(trained, tmp_path):
    model, _, _ = trained
    out = export_run(model.trainer, tmp_path / "export")
    manifest = read_manifest(out)
    emb = np.load(out / "item_embeddings.npy")
    assert emb.shape == (manifest["num_items"], manifest["dimension"]) == (40, 16)
    assert manifest["similarity"] == "dot" and manifest["encoder"] == "torch.export"
    assert (out / "encoder.pt2").exists() and not (out / "encoder.pt").exists()
    assert manifest["files"]["user_embeddings.npy"]["rows"] == 80
    # raw ids, not internal indices
    import polars as pl

    ids = pl.read_parquet(out / "item_ids.parquet")
    assert set(ids["item_id"]) == {f"i{k}" for k in range(40)}
    np.testing.assert_allclose(emb, model.model.item_vectors()[1:].detach().numpy())
    # no temporary folder is left beside the export
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_exported_encoder_gives_the_same_user_vectors(trained, tmp_path):
    model, _, _ = trained
    out = export_run(model.trainer, tmp_path / "export", users="none")
    encoder = load_encoder(out, read_manifest(out))
    ids = torch.zeros(4, 8, dtype=torch.long)  # histories of 1, 3, 5 and 8 items, in one batch
    for row, history in enumerate(
        (["i7"], ["i3", "i4", "i5"], [f"i{k}" for k in range(5)], [f"i{k}" for k in range(8)])
    ):
        ids[row, -len(history) :] = torch.from_numpy(model.data.item_index(history))
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids), model.model.user_vectors(ids), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(encoder(ids[1:2]), model.model.user_vectors(ids[1:2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("bert4rec", {"hidden_dim": 16, "num_heads": 2, "num_blocks": 1}, "torch.export"),
        (
            "hstu",
            {"hidden_dim": 16, "num_blocks": 2, "num_heads": 2, "use_time_bias": False},
            "torch.export",
        ),  # its grid path
        (
            "recformer",
            {"hidden_dim": 16, "num_heads": 2, "num_blocks": 1, "text_dim": 24, "adapter_dim": 32},
            "torch.export",
        ),
    ],
)
def test_other_encoders_export_and_load_back(name, overrides, expected, tmp_path):
    from recsys.export import _UserEncoder
    from recsys.models import build_model, model_config_class

    torch.manual_seed(0)
    model = build_model(name, model_config_class(name)(max_seq_len=12, dropout=0.0, **overrides), 30).eval()
    if getattr(model, "needs_item_text", False):  # items are their text vectors (carried by the program)
        model.set_item_text(torch.randn(30, overrides["text_dim"]))
    assert save_encoder(_UserEncoder(model, normalize=False), 12, tmp_path) == expected
    encoder = load_encoder(tmp_path, {"encoder": expected})
    ids = torch.zeros(3, 12, dtype=torch.long)
    ids[0, -2:], ids[1, -9:], ids[2] = torch.tensor([4, 5]), torch.arange(1, 10), torch.arange(10, 22)
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids), model.user_vectors(ids), rtol=1e-5, atol=1e-6)


def test_tampered_export_is_refused(trained, tmp_path):
    model, _, _ = trained
    out = export_run(model.trainer, tmp_path / "export", users="none", encoder=False)
    np.save(out / "item_embeddings.npy", np.zeros((40, 16), np.float32))
    with pytest.raises(DataError, match="does not match its manifest checksum"):
        read_manifest(out)
    with pytest.raises(FileExistsError):
        export_run(model.trainer, out)


def test_flat_index_equals_exact_evaluator(trained, tmp_path):
    model, _, _ = trained
    exact = model.trainer.evaluate("test")
    out = export_run(model.trainer, tmp_path / "export", users="none", encoder=False)
    index = build_index(np.load(out / "item_embeddings.npy"), "flat")
    through = evaluate_through_index(model.trainer, index, "test", ks=(1, 5, 10))
    for name in ("hr@1", "hr@5", "hr@10", "ndcg@10", "mrr@10"):
        assert through[name] == pytest.approx(exact[name], abs=1e-9), name


def test_a_time_bias_model_exports_its_users_with_their_times(trained, tmp_path):
    """HSTU with time bias reads timestamps: the exported test users are the evaluator's (same metrics
    through a flat index), and a histories file without times is refused."""
    _, data, _ = trained
    hstu = recsys.fit(
        data,
        overrides=[
            "model.name=hstu",
            "model.max_seq_len=8",
            "model.hidden_dim=16",
            "model.num_blocks=1",
            "model.use_time_bias=true",
            "train.epochs=2",
            "train.patience=0",
        ],
        run_dir=tmp_path / "run",
        progress=False,
    )
    exact = hstu.trainer.evaluate("test")
    out = export_run(hstu.trainer, tmp_path / "export", users="test")
    manifest = read_manifest(out)
    assert manifest["files"]["user_embeddings.npy"]["rows"] == 80
    assert manifest["encoder"] == "torch.export" and manifest["encoder_inputs"] == [
        "item_ids",
        "timestamps",
        "query_time",
    ]
    through = evaluate_through_index(
        hstu.trainer, build_index(np.load(out / "item_embeddings.npy"), "flat"), "test", ks=(1, 5, 10)
    )
    for name in ("hr@1", "hr@10", "ndcg@10"):
        assert through[name] == pytest.approx(exact[name], abs=1e-9), name
    histories = tmp_path / "h.tsv"
    histories.write_text("a\ti1,i2\n")
    with pytest.raises(DataError, match="reads time .* a histories file has none"):
        export_run(hstu.trainer, tmp_path / "export2", histories=histories)
    # the API scores a history with its times as the export encoded that user
    seq, test = hstu.data, hstu.trainer.split.test
    u, n = int(test.users[0]), int(test.history_lengths[0])
    start = int(seq.seq_offsets[u])
    history = [seq.item_raw_ids[i] for i in seq.item_ids[start : start + n]]
    times = [int(t) for t in seq.timestamps[start : start + n]]
    scores = hstu.score(histories=[history], times=[times], at=[int(seq.timestamps[start + n])])
    exported = np.load(out / "user_embeddings.npy")[0] @ np.load(out / "item_embeddings.npy").T
    assert scores["item"].to_list() == list(seq.item_raw_ids[1:])  # every item, in catalogue order
    np.testing.assert_allclose(scores["score"].to_numpy(), exported, rtol=1e-4, atol=1e-5)
    # and the exported encoder, given the same window, times and request time, gives that user's vector
    window, stamps = torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)
    window[0, -min(n, 8) :] = torch.from_numpy(seq.item_ids[start : start + n][-8:].astype(np.int64))
    stamps[0, -min(n, 8) :] = torch.tensor(times[-8:])
    with torch.no_grad():
        vector = load_encoder(out, manifest)(window, stamps, torch.tensor([int(seq.timestamps[start + n])]))
    np.testing.assert_allclose(vector[0].numpy(), np.load(out / "user_embeddings.npy")[0], rtol=1e-4, atol=1e-5)
    # the CLI asks for the times such an encoder reads
    assert main(["index", "build", str(out), "--type", "flat"]) == 0
    index_dir, history_arg = str(out / "index-flat"), ",".join(str(h) for h in history)
    assert main(["retrieve", index_dir, "--history", history_arg, "-k", "3"]) == 2
    assert main(["retrieve", index_dir, "--history", history_arg, "--times", ",".join(map(str, times)), "-k", "3"]) == 0
    users_file = tmp_path / "u.txt"
    users_file.write_text(str(seq.user_raw_ids[u]) + "\n")
    assert main(["retrieve", index_dir, "--users", str(users_file), "--times", "1", "-k", "3"]) == 2
    with pytest.raises(DataError, match="this model reads time"):
        hstu.recommend(histories=[history], k=3)


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat", "ivf_pq"])
def test_approximate_indexes_find_most_exact_neighbours(kind):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(5000, 32)).astype(np.float32)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    _, exact = search(build_index(items, "flat"), queries, 10)
    params = {"ivf_pq": {"m": 8, "nprobe": 64}, "ivf_flat": {"nprobe": 64}}.get(kind, {})
    _, approx = search(build_index(items, kind, params), queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > (0.3 if kind == "ivf_pq" else 0.9)


def test_a_small_ivf_pq_build_warns_once(capfd):
    """5,000 items for 256 centroids per sub-quantiser: one note from recsys, not one FAISS warning per
    sub-quantiser."""
    items = np.random.default_rng(0).normal(size=(5000, 32)).astype(np.float32)
    build_index(items, "ivf_pq", {"m": 8})
    err = capfd.readouterr().err
    assert err.count("note: ivf_pq: 5,000 items train 256 centroids") == 1
    assert "WARNING clustering" not in err


def test_hnsw_on_unnormalised_vectors_returns_true_inner_products():
    rng = np.random.default_rng(1)
    items = (rng.normal(size=(3000, 16)) * rng.uniform(0.2, 3.0, size=(3000, 1))).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    exact_scores, exact = search(build_index(items, "flat"), queries, 10)
    scores, rows = search(build_index(items, "hnsw", {"ef_search": 256}), queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(rows, exact)])
    assert recall > 0.9  # MIPS through the L2 transform, not raw inner-product HNSW
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, rows, 1), rtol=1e-3, atol=1e-3)


def test_search_excludes_seen_rows():
    items = np.eye(6, dtype=np.float32)
    query = np.array([[6, 5, 4, 3, 2, 1]], dtype=np.float32)
    _, rows = search(build_index(items, "flat"), query, 3, exclude=[[0, 2]])
    assert rows.tolist() == [[1, 3, 4]]


def test_cli_round_trip_retrieve_equals_exact_topk(trained, tmp_path, capsys):
    model, _, run = trained
    export_dir = tmp_path / "export"
    # a run trained on an in-memory table kept it: the CLI exports it with no data passed
    assert main(["export", str(run), "--out", str(export_dir), "--users", "test"]) == 0
    capsys.readouterr()
    assert main(["index", "build", str(export_dir), "--type", "flat"]) == 0
    capsys.readouterr()
    index_dir = export_dir / "index-flat"
    history = ["i10", "i11", "i12"]
    assert main(["retrieve", str(index_dir), "--history", ",".join(history), "-k", "5"]) == 0
    printed = [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]]
    expected = model.recommend(histories=[history], k=5)["item"].to_list()
    assert printed == expected
    # the same as JSON lines and as CSV
    assert main(["retrieve", str(index_dir), "--history", ",".join(history), "-k", "5", "--format", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["item"] for r in records] == expected and [r["rank"] for r in records] == [1, 2, 3, 4, 5]
    assert set(records[0]) >= {"query", "rank", "item", "score"}
    assert main(["retrieve", str(index_dir), "--history", ",".join(history), "-k", "5", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query,rank,item,score") and [line.split(",")[2] for line in lines[1:]] == expected
    # users from the export, with their seen items filtered
    users_file = tmp_path / "users.txt"
    users_file.write_text("u3\nu7\n")
    assert main(["retrieve", str(index_dir), "--users", str(users_file), "-k", "3"]) == 0
    assert "u3:" in capsys.readouterr().out
    users_file.write_text("\n  \n")  # no user id at all
    assert main(["retrieve", str(index_dir), "--users", str(users_file), "-k", "3"]) == 2
    assert "users.txt: holds no user id" in capsys.readouterr().err
    users_file.write_bytes(b"u3\n\xff\n")
    assert main(["retrieve", str(index_dir), "--users", str(users_file), "-k", "3"]) == 2
    assert "users.txt: not UTF-8 text" in capsys.readouterr().err
    # an index used with another model's export is refused
    other = tmp_path / "other"
    export_run(model.trainer, other, users="none", encoder=False)
    np.save(other / "item_embeddings.npy", np.ones((40, 16), np.float32))
    manifest = json.loads((other / "manifest.json").read_text())
    import hashlib

    manifest["files"]["item_embeddings.npy"]["sha256"] = hashlib.sha256(
        (other / "item_embeddings.npy").read_bytes()
    ).hexdigest()
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="built for other item embeddings"):
        load_index(index_dir, other)
    assert main(["retrieve", str(index_dir), "--history", "nope", "-k", "3"]) == 2
    assert "unknown item id" in capsys.readouterr().err
    assert main(["retrieve", str(index_dir), "--history", "i1", "-k", "0"]) == 2
    assert "-k must be at least 1, got 0" in capsys.readouterr().err
    assert main(["retrieve", str(index_dir), "--history", f"{history[0]},,{history[1]}", "-k", "3"]) == 2
    assert "--history: field 2 of" in capsys.readouterr().err  # an empty id is an error, not skipped
    # every item but the history's from an exhaustive index; an approximate one that returns fewer says so
    assert main(["retrieve", str(index_dir), "--history", ",".join(history), "-k", "100"]) == 0
    printed = capsys.readouterr()
    assert len(printed.out.splitlines()) == 1 + 40 - len(history) and "warning" not in printed.err
    assert (
        main(["index", "build", str(export_dir), "--type", "ivf_flat", "--param", "nlist=4", "--param", "nprobe=1"])
        == 0
    )
    capsys.readouterr()
    assert main(["retrieve", str(export_dir / "index-ivf_flat"), "--history", ",".join(history), "-k", "37"]) == 0
    assert "the ivf_flat index returned" in capsys.readouterr().err
    assert main(["index", "build", str(export_dir), "--type", "hnsw", "--param", "efs=3"]) == 2


@pytest.mark.parametrize(
    "kind, params, message",
    [
        (
            "hnsw",
            {"M": -3},
            r"index parameter M must be an integer in \[2, 512\], got -3",
        ),  # FAISS allocated until killed
        ("hnsw", {"ef_search": 2.5}, r"ef_search must be an integer"),
        ("ivf_pq", {"nbits": 40}, r"nbits must be an integer in \[1, 16\]"),
        ("ivf_flat", {"nprobe": 0}, r"nprobe must be an integer in \[1, "),
    ],
)
def test_index_parameters_out_of_range_are_refused(kind, params, message):
    from recsys.retrieval import index_params

    with pytest.raises(ValueError, match=message):
        index_params(kind, params)


def test_index_parameters_that_do_not_fit_the_vectors_are_refused():
    vectors = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="nlist=64 is more than the 50 items"):
        build_index(vectors, "ivf_flat", {"nlist": 64})
    with pytest.raises(ValueError, match="dimension 16 must be divisible by m=5"):
        build_index(vectors, "ivf_pq", {"m": 5, "nlist": 2})


def test_an_encoder_torch_export_cannot_capture_is_written_as_torchscript(monkeypatch, tmp_path, capsys):
    from recsys.export import _UserEncoder
    from recsys.models import build_model, model_config_class

    def refuse(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression")

    monkeypatch.setattr(torch.export, "export", refuse)
    model = build_model("sasrec", model_config_class("sasrec")(max_seq_len=10, hidden_dim=16, dropout=0.0), 30).eval()
    assert save_encoder(_UserEncoder(model, normalize=False), 10, tmp_path) == "torchscript"
    assert "torch.export could not capture this encoder (Could not guard" in capsys.readouterr().out
    ids = torch.zeros(2, 10, dtype=torch.long)
    ids[0, -3:], ids[1] = torch.tensor([1, 2, 3]), torch.arange(5, 15)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(tmp_path, {"encoder": "torchscript"})(ids), model.user_vectors(ids))


def test_an_altered_or_truncated_index_is_refused(trained, tmp_path, capsys):
    """A shuffled index.faiss returned wrong items silently, a truncated one ended in a FAISS traceback."""
    from safetensors.torch import load_file

    from recsys.files import IntegrityError

    model, _, _ = trained
    export_dir = export_run(model.trainer, tmp_path / "export", users="none", encoder=False)
    weights = load_file(str(export_dir / "model.safetensors"))  # plain tensors: nothing is unpickled
    assert torch.equal(weights["item_embedding.weight"], model.model.item_embedding.weight.detach())
    assert main(["index", "build", str(export_dir), "--type", "flat"]) == 0
    index_file = export_dir / "index-flat" / "index.faiss"
    original = index_file.read_bytes()
    vectors = np.load(export_dir / "item_embeddings.npy")
    faiss = pytest.importorskip("faiss")
    shuffled = build_index(vectors[np.random.default_rng(0).permutation(len(vectors))], "flat")
    for damaged in (faiss.serialize_index(shuffled).tobytes(), original[: len(original) // 2]):
        index_file.write_bytes(damaged)
        with pytest.raises(IntegrityError, match="does not match the checksum"):
            load_index(export_dir / "index-flat")
        assert main(["retrieve", str(export_dir / "index-flat"), "--history", "i1,i2", "-k", "3"]) == 2
        assert "index.faiss: does not match" in capsys.readouterr().err
    index_file.write_bytes(original)
    load_index(export_dir / "index-flat")


def test_the_index_path_counts_ties_and_refuses_non_finite_vectors(trained):
    model, _, _ = trained
    trainer = model.trainer
    vectors = np.zeros((40, 16), np.float32)  # every item scored alike
    out = evaluate_through_index(trainer, build_index(vectors, "flat"), "test", ks=(1, 10), exclude_seen=False)
    # the index lists 10 items, all tied: a listed target's rank is uniform over 1..10, not 1
    assert 0 < out["hr@10"] < 1 and out["hr@1"] == pytest.approx(out["hr@10"] / 10)
    assert out["tie_policy"] == "expected"
    with pytest.raises(ValueError, match="NaN or infinite"):
        build_index(np.full((40, 16), np.nan, np.float32), "flat")


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "hstu"])
def test_default_encoders_are_captured_by_torch_export(name, tmp_path):
    """The recipes' encoders at their default sizes (HSTU with its time bias) become torch.export programs
    on CPU, never the TorchScript fallback, and the program gives the module's user vectors."""
    from recsys.export import ENCODER_FILES, _UserEncoder, save_encoder
    from recsys.models import build_model, model_config_class

    torch.manual_seed(0)
    cfg = model_config_class(name)()
    model = build_model(name, cfg, 1000).eval()
    wrapped = _UserEncoder(model, normalize=False)
    assert save_encoder(wrapped, cfg.max_seq_len, tmp_path) == "torch.export"
    assert not (tmp_path / ENCODER_FILES["torchscript"]).exists()
    program = load_encoder(tmp_path, {"encoder": "torch.export"})
    ids = torch.zeros(5, cfg.max_seq_len, dtype=torch.long)
    for row, length in enumerate((1, 4, 17, cfg.max_seq_len - 1, cfg.max_seq_len)):
        ids[row, -length:] = torch.randint(1, 1000, (length,))
    inputs = (ids,)
    if wrapped.timed:
        inputs = (ids, torch.arange(cfg.max_seq_len).expand_as(ids) * 600 * (ids != 0), torch.full((5,), 10**6))
    with torch.no_grad():
        torch.testing.assert_close(program(*inputs), wrapped(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name, settings", [("sasrec", {}), ("bert4rec", {}), ("hstu", {}), ("hstu", {"reasoning_steps": 2})]
)
def test_default_encoders_export_to_onnx_and_match_in_onnxruntime(name, settings, tmp_path):
    """ONNX of the recipes' encoders at their default sizes (HSTU with its time bias; with ReaRec's
    reasoning steps), run in onnxruntime on batches of other sizes and lengths than the capture's."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from recsys.export import ONNX_FILE, _UserEncoder, save_onnx
    from recsys.models import build_model, model_config_class

    torch.manual_seed(0)
    cfg = model_config_class(name)(**settings)
    wrapped = _UserEncoder(build_model(name, cfg, 1000).eval(), normalize=True).eval()
    save_onnx(wrapped, cfg.max_seq_len, tmp_path)
    runtime = onnxruntime.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in runtime.get_inputs()] == (
        ["item_ids", "timestamps", "query_time"] if wrapped.timed else ["item_ids"]
    )
    for batch in (1, 7):
        ids = torch.zeros(batch, cfg.max_seq_len, dtype=torch.long)
        for row in range(batch):
            length = 1 + (row * 13) % cfg.max_seq_len
            ids[row, -length:] = torch.randint(1, 1000, (length,))
        inputs = [ids]
        if wrapped.timed:
            inputs += [torch.arange(cfg.max_seq_len).expand_as(ids) * 900 * (ids != 0), torch.full((batch,), 10**6)]
        got = runtime.run(None, {i.name: t.numpy() for i, t in zip(runtime.get_inputs(), inputs)})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, wrapped(*inputs).numpy(), rtol=1e-4, atol=1e-5)


def test_cli_export_writes_onnx(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, _, run = trained
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--onnx", "--users", "none"]) == 0
    manifest = read_manifest(tmp_path / "e")
    assert "encoder.onnx" in manifest["files"]
