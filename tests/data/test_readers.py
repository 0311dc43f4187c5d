import gzip

import polars as pl
import pytest

from recsys.data.readers import (
    DataError,
    read_item_text,
    read_movielens_100k,
    read_movielens_csv,
    read_movielens_dat,
    read_recbole_inter,
    read_unisrec_sequences,
    read_user_item_lines,
    read_user_sequence_lines,
)
from tests.conftest import DATA_DIR, needs_data


def test_movielens_100k(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("1\t10\t5\t100\n2\t20\t3\t90\n1\t30\t4\t50\n")
    df = read_movielens_100k(p).frame
    assert df.columns[:5] == ["user_id", "item_id", "timestamp", "rating", "line"]
    assert df["item_id"].to_list() == [10, 20, 30]
    assert df["timestamp"].to_list() == [100, 90, 50]
    assert df["line"].to_list() == [1, 2, 3]


def test_movielens_dat_gz_latin1(tmp_path):
    p = tmp_path / "ratings.dat.gz"
    p.write_bytes(gzip.compress("1::1193::5::978300760\n1::661::3::978302109\n".encode("latin-1")))
    df = read_movielens_dat(p).frame
    assert df.height == 2 and df["rating"].to_list() == [5.0, 3.0]


def test_movielens_csv(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    df = read_movielens_csv(p).frame
    assert df["rating"].to_list() == [4.0, 4.5]
    p.write_text("user,movie,rating,timestamp\n1,1,4.0,1\n")
    with pytest.raises(DataError, match="line 1: expected the header"):
        read_movielens_csv(p)


def test_user_item_and_sequence_lines(tmp_path):
    p = tmp_path / "beauty.txt"
    p.write_text("1 1\n1 2\n2 3\n")
    inter = read_user_item_lines(p)
    assert not inter.has_timestamps and inter.frame.height == 3
    q = tmp_path / "Beauty.txt"
    q.write_text("1 5 6 7\n2 8 9\n")
    df = read_user_sequence_lines(q).frame
    assert df["user_id"].to_list() == [1, 1, 1, 2, 2]
    assert df["item_id"].to_list() == [5, 6, 7, 8, 9]


def test_recbole_atomic_inter(tmp_path):
    p = tmp_path / "x.inter"
    p.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t5\t10\nu1\ti2\t4\t5\n")
    df = read_recbole_inter(p).frame
    assert df["user_id"].to_list() == ["u1", "u1"] and df["timestamp"].to_list() == [10, 5]
    p.write_text("user_id:token\tfoo:token\nu1\ti1\n")
    with pytest.raises(DataError, match="missing column 'item_id:token'"):
        read_recbole_inter(p)


def test_unisrec_sequences(tmp_path):
    p = tmp_path / "X.test.inter"
    p.write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1 2\t3\n1\t4 5\t6\n")
    df = read_unisrec_sequences(p).frame
    assert df.filter(pl.col("user_id") == 0)["item_id"].to_list() == [0, 1, 2, 3]
    assert df.height == 7


# --------------------------------------------------------------------- bad input names file and line


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("1\t10\t5\t100\n2\t20\t3\n3\t30\t4\t50\n")
    with pytest.raises(DataError, match=r"u\.data, line 2: expected 4 fields"):
        read_movielens_100k(p)


def test_wrong_separator(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("1,10,5,100\n")
    with pytest.raises(DataError, match=r"line 1: expected 4 fields separated by a tab, found 1.*wrong separator"):
        read_movielens_100k(p)


def test_non_integer_id(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("1\t10\t5\t100\n1\tabc\t5\t101\n")
    with pytest.raises(DataError, match=r"line 2: field 'item_id' must be an integer, got 'abc'"):
        read_movielens_100k(p)


def test_empty_file_and_blank_lines(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("")
    with pytest.raises(DataError, match="file is empty"):
        read_movielens_100k(p)
    p.write_text("1\t10\t5\t100\n\n2\t10\t5\t100\n")
    with pytest.raises(DataError, match="line 2: blank line"):
        read_movielens_100k(p)
    p.write_text("1\t10\t5\t100\n\n\n")  # trailing blank lines are fine
    assert read_movielens_100k(p).frame.height == 1


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_movielens_100k(tmp_path / "nope")


def test_not_utf8_names_line(tmp_path):
    p = tmp_path / "beauty.txt"
    p.write_bytes(b"1 1\n1 \xff\n")
    with pytest.raises(DataError, match="line 2: bytes that are not utf-8"):
        read_user_item_lines(p)


@needs_data("ml-100k")
def test_item_text_ml100k():
    items = read_item_text(DATA_DIR / "ml-100k" / "u.item", "movielens_100k_items")
    assert items.height == 1682
    first = items.row(0, named=True)
    assert first["title"] == "Toy Story (1995)" and first["genres"] == "Animation|Children's|Comedy"


@needs_data("ml-1m")
def test_item_text_ml1m_latin1():
    items = read_item_text(DATA_DIR / "ml-1m" / "movies.dat", "movielens_dat_items")
    assert items.height == 3883
    assert items["title"].str.contains("é").any()  # accented titles decoded as Latin-1


def test_unisrec_text_splits_title_category_brand(tmp_path):
    """UniSRec's Amazon text is "title. category. brand. ", split from the right (titles may hold ". ")."""
    f = tmp_path / "Shop.text"
    f.write_text(
        "item_id:token\ttext:token_seq\n"
        "A1\tGrit Roll. 80 grit. Industrial Sanding Rolls. PORTER-CABLE. \n"
        "A2\tJust a title\n",
        encoding="utf-8",
    )
    rows = read_item_text(f, "unisrec_text").to_dicts()
    assert rows[0] == {
        "item_id": "A1",
        "title": "Grit Roll. 80 grit",
        "genres": None,
        "brand": "PORTER-CABLE",
        "category": "Industrial Sanding Rolls",
    }
    assert rows[1]["title"] == "Just a title" and rows[1]["brand"] is None and rows[1]["category"] is None


@needs_data("amazon-scientific-unisrec")
def test_scientific_item_text_has_every_attribute():
    items = read_item_text(DATA_DIR / "amazon-scientific-unisrec" / "Scientific.text", "unisrec_text")
    assert items.height == 4385
    assert items["brand"].null_count() == 0 and items["category"].null_count() == 0
    # named by UniSRec's item index (Scientific.item2index), as the sequences name them
    assert sorted(items["item_id"].cast(int).to_list()) == list(range(4385))


def test_negative_integer_ids_are_an_error_naming_the_line(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("1\t10\t5\t100\n-3\t11\t4\t101\n2\t12\t3\t102\n")
    with pytest.raises(DataError, match=r"u.data, line 2: field 'user_id' is -3: integer ids must be >= 0"):
        read_movielens_100k(p)
