"""Item attributes in the item vectors (recsys/models/layers/attributes.py): the attribute file reader, the
card that declares it, the per-item index, SASRec's vectors, and a training run through a card."""

import hashlib
import json

import numpy as np
import polars as pl
import pytest
import torch

from recsys.config import ConfigError
from recsys.data.cards import load_item_attributes
from recsys.data.readers import DataError, item_attribute_index, read_item_attributes
from recsys.models.sasrec import SASRec, SASRecConfig
from tests.conftest import DATA_DIR, needs_data


def test_the_reader_gives_one_row_per_item_and_attribute(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"4": [1, 2, 2], "83": [4], "9": []}))
    table = read_item_attributes(path, "s3rec_json")
    assert table.rows() == [("4", "1"), ("4", "2"), ("83", "4")]  # a repeated attribute counts once


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"4": [1, 2],\n "5": [3,]}', r"a.json, line 2: not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"4": [1], "5": 7}', r"item '5': expected a list of attribute ids"),
        ('{"4": [1, [2]]}', r"item '4': expected a list"),
    ],
)
def test_bad_attribute_files_are_errors_naming_the_place(tmp_path, text, message):
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_item_attributes(path, "s3rec_json")
    with pytest.raises(DataError, match="unknown item attribute format"):
        read_item_attributes(path, "csv")


def test_the_index_lists_each_internal_items_attributes():
    table = pl.DataFrame({"item_id": ["10", "10", "30", "99"], "attribute": ["b", "a", "b", "z"]})
    raw_ids = np.array([None, 30, 20, 10], dtype=object)  # internal 1 = "30", 2 = "20" (none), 3 = "10"
    ids, offsets, count = item_attribute_index(raw_ids, table)
    assert count == 2  # "z" belongs to an item the catalogue does not hold
    assert offsets.tolist() == [0, 0, 1, 1, 3]
    names = {0: "b", 1: "a"}
    assert [names[i] for i in ids[offsets[1] : offsets[2]]] == ["b"]
    assert sorted(names[i] for i in ids[offsets[3] : offsets[4]]) == ["a", "b"]


def _toy_card(tmp_path, monkeypatch, attributes: dict, sha256: str | None = None):
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [" ".join(str(x) for x in [u, *rng.integers(1, 31, 8)]) for u in range(1, 61)]
    (folder / "seq.txt").write_text("\n".join(lines) + "\n")
    payload = json.dumps(attributes).encode()
    (folder / "attrs.json").write_bytes(payload)
    digest = sha256 or hashlib.sha256(payload).hexdigest()
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "toy.toml").write_text(
        'name = "toy"\nfolder = "toy"\nreader = "user_sequence_lines"\n'
        f'item_attributes = {{ file = "attrs.json", format = "s3rec_json", sha256 = "{digest}" }}\n'
        '[[variants]]\nfile = "seq.txt"\n'
    )
    monkeypatch.setenv("RECSYS_CARDS", str(cards))
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))


def test_the_card_checks_the_attribute_file(tmp_path, monkeypatch):
    _toy_card(tmp_path, monkeypatch, {"1": [1]}, sha256="0" * 64)
    with pytest.raises(DataError, match="attrs.json: sha256 .* differs from the card's"):
        load_item_attributes("toy")
    (tmp_path / "data" / "toy" / "attrs.json").unlink()
    with pytest.raises(DataError, match="its item attributes attrs.json are not in"):
        load_item_attributes("toy")


def test_sasrec_item_vectors_add_the_mean_attribute_embedding():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=6, hidden_dim=8, attribute_embeddings=True), 4)
    assert model.needs_item_attributes
    ids, offsets = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 2, 2, 3])  # item 1: {0, 1}, 2: none, 3: {1}
    model.set_item_attribute_ids(ids, offsets, 2)
    table = model.attributes.table.weight
    vectors = model.item_vectors()
    torch.testing.assert_close(vectors[1], model.item_embedding.weight[1] + table[:2].mean(0))
    torch.testing.assert_close(vectors[2], model.item_embedding.weight[2])
    torch.testing.assert_close(vectors[3], model.item_embedding.weight[3] + table[1])
    assert torch.all(vectors[0] == 0)  # padding: no ID vector, no attributes
    model.eval()
    history = torch.tensor([[0, 1, 3, 2]])
    with torch.no_grad():
        last = model.user_vectors(history)
        full = model(history)[:, -1]
    torch.testing.assert_close(last, full)  # the fused kernel (ID table only) stays off
    model.train()
    model(history).sum().backward()  # the encoder reads the attributes too
    assert model.attributes.table.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="attribute offsets for 2 items"):
        model.set_item_attribute_ids(ids, torch.tensor([0, 1, 3]), 2)


def test_training_reads_the_attributes_through_the_card(tmp_path, monkeypatch):
    import recsys

    _toy_card(tmp_path, monkeypatch, {str(i): [i % 5, 10 + i % 3] for i in range(1, 31)})
    settings = {"model.max_seq_len": 8, "model.hidden_dim": 16, "model.attribute_embeddings": True}
    run = recsys.fit("toy", "sasrec", epochs=2, overrides=settings, run_dir=tmp_path / "r", progress=False)
    assert run.model.attributes is not None and run.model.attributes.table.num_embeddings == 8
    loaded = recsys.load(run.path)  # the attributes come back from the card with the model
    torch.testing.assert_close(loaded.model.item_vectors(), run.model.item_vectors())
    assert run.evaluate("test")["num_users"] == 60
    from recsys.export import export_run  # the encoder exports with its attribute table (checked in onnxruntime)

    export = export_run(run.trainer, tmp_path / "export", users="test", onnx=True)
    assert (export / "encoder.onnx").exists()
    with pytest.raises(ConfigError, match="has no item attributes"):
        recsys.fit(
            pl.DataFrame({"user_id": [1] * 4 + [2] * 4, "item_id": [1, 2, 3, 4, 1, 3, 2, 4]}),
            "sasrec",
            epochs=1,
            overrides=settings,
            run_dir=tmp_path / "custom",
            progress=False,
        )


@needs_data("s3rec-beauty-lastfm")
def test_s3rec_beauty_attributes_cover_the_catalogue(monkeypatch):
    from recsys.data.cards import load_dataset

    monkeypatch.setenv("RECSYS_DATA", str(DATA_DIR))
    table = load_item_attributes("s3rec-beauty")
    catalogue = load_dataset("s3rec-beauty").interactions.frame["item_id"].unique().sort().to_list()
    ids, offsets, count = item_attribute_index(np.array([None, *catalogue], dtype=object), table)
    assert len(catalogue) == 12_101 and count == 637  # the card's counts, and S3-Rec's
    assert (np.diff(offsets)[1:] > 0).all()  # every item has attributes
    assert len(ids) / len(catalogue) == pytest.approx(3.72, abs=0.01)
