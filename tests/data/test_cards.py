import gzip
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recsys.data import cards
from recsys.data.cards import DataError, load_dataset
from tests.conftest import needs_data


@needs_data("ml-100k")
def test_ml100k_counts_and_checksum():
    d = load_dataset("ml-100k")
    assert d.counts == {"users": 943, "items": 1682, "interactions": 100000}


@needs_data("amazon-beauty-bert4rec")
def test_beauty_counts():
    d = load_dataset("beauty")
    assert d.counts == {"users": 40226, "items": 54542, "interactions": 353962}


@needs_data("ml-1m")
def test_ml1m_uses_partial_file_when_official_is_absent():
    d = load_dataset("ml-1m")
    assert d.file.name == "ratings_users0001-2999.dat.gz"
    assert d.counts == {"users": 2999, "items": 3615, "interactions": 487650}


def _card_dir(tmp_path: Path, body: str) -> Path:
    (tmp_path / "cards").mkdir(exist_ok=True)
    (tmp_path / "cards" / "toy.toml").write_text(body)
    return tmp_path / "cards"


def _toy_bytes() -> bytes:
    return b"1\t1\t5\t10\n1\t2\t4\t11\n2\t1\t3\t12\n"


def test_download_extracts_checks_and_caches(tmp_path, monkeypatch):
    data = _toy_bytes()
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("toy/u.data", data)
    sha = hashlib.sha256(data).hexdigest()
    body = f'''name = "toy"
folder = "toy"
reader = "movielens_100k"
download = {{ url = "{archive.as_uri()}", members = {{ "toy/u.data" = "u.data" }} }}
[[variants]]
file = "u.data"
sha256 = "{sha}"
users = 2
items = 2
interactions = 3
'''
    monkeypatch.setenv("RECSYS_CARDS", str(_card_dir(tmp_path, body)))
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))
    d = load_dataset("toy")
    assert d.file == tmp_path / "cache" / "datasets" / "toy" / "u.data"
    assert d.counts["interactions"] == 3
    os.remove(archive)  # second load comes from the cache, no download
    assert load_dataset("toy").counts["users"] == 2


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("toy/u.data", _toy_bytes())
    body = f'''name = "toy"
folder = "toy"
reader = "movielens_100k"
download = {{ url = "{archive.as_uri()}", members = {{ "toy/u.data" = "u.data" }} }}
[[variants]]
file = "u.data"
sha256 = "{"0" * 64}"
'''
    monkeypatch.setenv("RECSYS_CARDS", str(_card_dir(tmp_path, body)))
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="sha256"):
        load_dataset("toy")
    assert not (tmp_path / "cache" / "datasets" / "toy" / "u.data").exists()


def test_safe_extract_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../evil.txt", b"x")
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(DataError, match="outside"):
        cards.safe_extract(archive, {"../../evil.txt": "../../evil.txt"}, target)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_count_mismatch_names_each_field(tmp_path, monkeypatch):
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "u.data").write_bytes(_toy_bytes())
    body = """name = "toy"
folder = "toy"
reader = "movielens_100k"
[[variants]]
file = "u.data"
users = 3
items = 2
interactions = 4
"""
    monkeypatch.setenv("RECSYS_CARDS", str(_card_dir(tmp_path, body)))
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"users: expected 3, found 2; interactions: expected 4, found 3"):
        load_dataset("toy")


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"none of .* found in .*\(note: the data folder .*nowhere does not exist\)"):
        load_dataset("scientific")
    (tmp_path / "nowhere").mkdir()  # a folder that exists, without the file: no note
    with pytest.raises(DataError, match=r"none of .* found in .*no official download\)$"):
        load_dataset("scientific")
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_official_ml1m_format_runs_through_the_ml1m_card(tmp_path, monkeypatch):
    """A synthetic file in the official ratings.dat format with the official counts is read by the
    ml-1m card's reader and passes its count check (its git blob differs, so only that is relaxed)."""
    rng = np.random.default_rng(0)
    users, items, rows = 6040, 3706, 1_000_209
    user_ids = np.concatenate([np.arange(1, users + 1), rng.integers(1, users + 1, rows - users)])
    item_ids = np.concatenate([np.arange(1, items + 1), rng.integers(1, items + 1, rows - items)])
    order = np.argsort(user_ids, kind="stable")
    ts = rng.integers(956703932, 1046454590, rows)
    lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in zip(user_ids[order], item_ids, rng.integers(1, 6, rows), ts)]
    folder = tmp_path / "data" / "ml-1m"
    folder.mkdir(parents=True)
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    card = (cards.REPO_ROOT / "datasets" / "ml-1m.toml").read_text()
    card = card.replace('git_blob = "77a7c4b150f588c23bb9e1f068aa996c0b413695"\n', "")
    monkeypatch.setenv("RECSYS_CARDS", str(_card_dir(tmp_path, card).parent / "cards"))
    (tmp_path / "cards" / "ml-1m.toml").write_text(card)
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "data"))
    d = load_dataset("ml-1m")
    assert d.file.name == "ratings.dat"
    assert d.counts == {"users": 6040, "items": 3706, "interactions": 1_000_209}


GOOD_CARD = 'name = "toy"\nfolder = "toy"\nreader = "movielens_100k"\n[[variants]]\nfile = "u.data"\n'


@pytest.mark.parametrize(
    "body, message",
    [
        ('name = "toy\n', r"toy\.toml: not a valid card \(Illegal character"),
        ('name = "toy"\nfolder = "toy"\nreader = "movielens_100k"\n', r"missing key 'variants'"),
        (GOOD_CARD + 'colour = "red"\n', r"unknown key 'variants\[0\]\.colour'; allowed: \['file'"),
        ('colour = "red"\n' + GOOD_CARD, r"unknown key 'colour'; allowed: \['name'"),
        (GOOD_CARD + "users = 'many'\n", r"'variants\[0\]\.users' must be an integer, got 'many'"),
        (GOOD_CARD + "users = -3\n", r"'variants\[0\]\.users' must be >= 0"),
        (GOOD_CARD + 'sha256 = "abc"\n', r"'variants\[0\]\.sha256' must be 64 lowercase hex digits"),
        (
            GOOD_CARD.replace('"u.data"', '"../../etc/passwd"'),
            r"'variants\[0\]\.file' = '\.\./\.\./etc/passwd' must be a relative",
        ),
        (GOOD_CARD.replace('folder = "toy"', 'folder = "/etc"'), r"'folder' = '/etc' must be a relative path"),
        (GOOD_CARD.replace('name = "toy"', 'name = "../toy"'), r"a card's name is its file's name, 'toy'"),
        (GOOD_CARD.replace('"movielens_100k"', '"csv"'), r"'reader' must be one of"),
        (
            'reader_options = { colums = ["u"] }\n' + GOOD_CARD.replace('"movielens_100k"', '"table"'),
            r"unknown key 'reader_options\.colums'; reader 'table' takes \['columns'",
        ),
        (GOOD_CARD.replace('"movielens_100k"', '"table"'), r"reader 'table' needs 'reader_options\.columns'"),
        (
            'reader_options = { columns = "user" }\n' + GOOD_CARD.replace('"movielens_100k"', '"table"'),
            r"toy\.toml: reader_options\.columns: expected a table",
        ),
        (
            'reader_options = { columns = { user_id = 1, item_id = 2 }, header = "no" }\n'
            + GOOD_CARD.replace('"movielens_100k"', '"table"'),
            r"reader_options\.header: expected true or false, got 'no'",
        ),
        (
            'reader_options = { events = "pv" }\n' + GOOD_CARD.replace('"movielens_100k"', '"taobao_userbehavior"'),
            r"reader_options\.events: expected a list",
        ),
        ('item_text = { file = "u.item", format = "html" }\n' + GOOD_CARD, r"'item_text\.format' must be one of"),
        (
            'download = { url = "https://example.org/x.zip" }\n' + GOOD_CARD,
            r"'download' names a 'file' or an archive's 'members'",
        ),
        (
            'download = { url = "https://example.org/x.zip", members = { "a/u.data" = "../u.data" } }\n' + GOOD_CARD,
            r"'download\.members\.a/u\.data' = '\.\./u\.data' must be a relative path",
        ),
        ("variants = []\n" + GOOD_CARD.split("[[variants]]")[0], r"'variants' is empty"),
    ],
)
def test_a_bad_card_is_an_error_naming_the_file_and_the_key(tmp_path, monkeypatch, body, message):
    monkeypatch.setenv("RECSYS_CARDS", str(_card_dir(tmp_path, GOOD_CARD)))
    assert cards.load_card("toy").variants[0].file == "u.data"  # the card each case breaks is a good one
    _card_dir(tmp_path, body)
    with pytest.raises(DataError, match=message):
        cards.load_card("toy")


def test_every_shipped_card_is_valid_and_a_bad_one_is_listed_as_such(tmp_path, monkeypatch, capsys):
    from recsys.cli import main

    for name in cards.list_cards():
        assert cards.load_card(name).name == name
    folder = tmp_path / "cards"
    folder.mkdir()
    for name in cards.list_cards():
        (folder / f"{name}.toml").write_bytes((cards.cards_dir() / f"{name}.toml").read_bytes())
    (folder / "toy.toml").write_text(GOOD_CARD + "users = 'many'\n")
    monkeypatch.setenv("RECSYS_CARDS", str(folder))
    assert main(["data", "list"]) == 2  # every other card is still listed
    out = capsys.readouterr().out
    assert "toy                invalid" in out and "must be an integer" in out and "ml-100k" in out
    monkeypatch.setenv("RECSYS_CARDS", str(tmp_path / "no-cards"))  # a typo lists nothing: said so
    assert main(["data", "list"]) == 2
    assert "no-cards: no such folder (it holds the dataset cards" in capsys.readouterr().err


def test_a_card_for_a_log_the_table_reader_reads(tmp_path, monkeypatch):
    # e.g. a gzipped Latin-1 CSV without a header: a card needs no reader of its own
    (tmp_path / "data" / "shop").mkdir(parents=True)
    rows = "".join(f"u{u};caf\u00e9{(u + k) % 4};{k}\n" for u in range(3) for k in range(3))
    (tmp_path / "data" / "shop" / "log.csv.gz").write_bytes(gzip.compress(rows.encode("latin-1")))
    body = (
        'name = "shop"\nfolder = "shop"\nreader = "table"\n'
        "reader_options = { columns = { user_id = 1, item_id = 2, timestamp = 3 }, header = false, "
        'separator = ";", encoding = "latin-1" }\n[[variants]]\nfile = "log.csv.gz"\nusers = 3\nitems = 4\n'
        "interactions = 9\n"
    )
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "shop.toml").write_text(body)
    monkeypatch.setenv("RECSYS_CARDS", str(tmp_path / "cards"))
    monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "data"))
    loaded = load_dataset("shop")
    assert loaded.counts == {"users": 3, "items": 4, "interactions": 9}
    assert "caf\u00e9" + "1" in loaded.interactions.frame["item_id"].to_list()
