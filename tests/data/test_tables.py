"""Logs of one's own (recsys.data.tables): CSV / TSV / Parquet / JSON lines and DataFrames."""

import gzip

import pandas as pd
import polars as pl
import pytest

from recsys.data.readers import DataError, frame_to_interactions, read_table


def test_table_with_column_mapping_csv_and_parquet(tmp_path):
    df = pd.DataFrame(
        {"visitor": ["a", "a", "b"], "thing": [3, 4, 3], "when": ["2020-01-02", "2020-01-01", "2020-01-03"]}
    )
    csv = tmp_path / "log.csv"
    df.to_csv(csv, index=False)
    inter = read_table(csv, {"user_id": "visitor", "item_id": "thing", "timestamp": "when"})
    assert inter.frame["timestamp"].to_list()[1] < inter.frame["timestamp"].to_list()[0]
    assert inter.frame["line"].to_list() == [2, 3, 4]  # file lines (header is line 1)
    pq = tmp_path / "log.parquet"
    df.to_parquet(pq)
    assert read_table(pq, {"user_id": "visitor", "item_id": "thing"}).frame.height == 3
    with pytest.raises(DataError, match=r"missing column\(s\) \['user'\]"):
        read_table(csv, {"user_id": "user", "item_id": "thing"})


def test_table_without_a_header_by_column_numbers_gzipped_too(tmp_path):
    # Amazon's ratings files: user,item,rating,time with no header line
    rows = "A1,B7,5.0,1369699200\nA1,B3,4.0,1369612800\nA2,B7,3.0,1369699300\n"
    csv = tmp_path / "ratings.csv"
    csv.write_text(rows)
    frame = read_table(csv, {"user_id": 1, "item_id": 2, "rating": 3, "timestamp": 4}, header=False).frame
    assert frame["item_id"].to_list() == ["B7", "B3", "B7"]
    assert frame["rating"].to_list() == [5.0, 4.0, 3.0]
    assert frame["line"].to_list() == [1, 2, 3]  # no header: the first record is line 1
    packed = tmp_path / "ratings.csv.gz"
    packed.write_bytes(gzip.compress(rows.encode()))
    assert read_table(packed, {"user_id": 1, "item_id": 2}, header=False).frame.equals(
        read_table(csv, {"user_id": 1, "item_id": 2}, header=False).frame
    )
    with pytest.raises(DataError, match=r"ratings\.csv: columns\.item_id = 5, but the file has 4 columns"):
        read_table(csv, {"user_id": 1, "item_id": 5}, header=False)
    # with a header, a number is the column's position
    named = tmp_path / "named.csv"
    named.write_text("who,what\nu,i\n")
    assert read_table(named, {"user_id": 1, "item_id": "what"}).frame["user_id"].to_list() == ["u"]


def test_table_json_lines_plain_and_gzipped_name_their_lines(tmp_path):
    lines = [
        '{"reviewerID": "A1", "asin": "B7", "unixReviewTime": 200, "overall": 5.0, "style": {"size": "S"}}',
        "",
        '{"reviewerID": "A1", "asin": "B3", "unixReviewTime": 100, "overall": 4.0}',
    ]
    mapping = {"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime", "rating": "overall"}
    log = tmp_path / "reviews.jsonl"
    log.write_text("\n".join(lines) + "\n")
    frame = read_table(log, mapping).frame
    assert frame["item_id"].to_list() == ["B7", "B3"] and frame["timestamp"].to_list() == [200, 100]
    assert frame["line"].to_list() == [1, 3]  # the blank line counts
    packed = tmp_path / "reviews_Beauty_5.json.gz"  # Amazon's name for JSON lines
    packed.write_bytes(gzip.compress(log.read_bytes()))
    assert read_table(packed, mapping).frame.equals(frame)
    log.write_text("\n".join(lines) + '\n{"reviewerID": "A2", "asin": \n')
    with pytest.raises(DataError, match=r"reviews\.jsonl, line 4: not valid JSON"):
        read_table(log, mapping)
    log.write_text("\n".join(lines) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"reviews\.jsonl, line 4: a JSON list, not an object"):
        read_table(log, mapping)
    with pytest.raises(DataError, match=r"column 'style' \(item_id\) is Struct"):
        read_table(packed, {**mapping, "item_id": "style"})
    with pytest.raises(DataError, match=r"JSON lines name their fields"):
        read_table(packed, {**mapping, "item_id": 2})
    with pytest.raises(DataError, match=r"header = false applies to CSV"):
        read_table(packed, mapping, header=False)
    array = tmp_path / "all.json"
    array.write_text("[" + lines[0] + "]")
    with pytest.raises(DataError, match=r"all\.json: a JSON array; write one JSON object per line"):
        read_table(array, mapping)


def test_table_text_of_another_encoding(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_bytes("u,i\n1,tea\n1,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"log\.csv, line 3: not UTF-8 \(byte 0xe9 at column 6\); give .*data\.encoding"
    ):
        read_table(csv, {"user_id": "u", "item_id": "i"})
    assert read_table(csv, {"user_id": "u", "item_id": "i"}, encoding="latin-1").frame["item_id"][1] == "caf\u00e9"
    log = tmp_path / "log.jsonl.gz"
    log.write_bytes(gzip.compress('{"u": 1, "i": "caf\u00e9"}\n'.encode("cp1252")))
    with pytest.raises(DataError, match=r"log\.jsonl\.gz, line 1: not UTF-8"):
        read_table(log, {"user_id": "u", "item_id": "i"})
    assert read_table(log, {"user_id": "u", "item_id": "i"}, encoding="cp1252").frame["item_id"][0] == "caf\u00e9"
    wide = tmp_path / "wide.csv"
    wide.write_bytes("u,i\n1,2\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"wide\.csv: UTF-16 text .* data\.encoding = 'utf-16'"):
        read_table(wide, {"user_id": "u", "item_id": "i"})
    assert read_table(wide, {"user_id": "u", "item_id": "i"}, encoding="utf-16").frame["item_id"].to_list() == [2]
    with pytest.raises(DataError, match=r"unknown encoding 'klingon'"):
        read_table(csv, {"user_id": "u", "item_id": "i"}, encoding="klingon")


def test_a_mapped_time_or_rating_that_is_empty_names_its_line(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("u,i,t\n1,2,3\n4,5,\n")
    with pytest.raises(DataError, match=r"log\.csv, line 3: field 'timestamp' \(column 't'\) is empty"):
        read_table(csv, {"user_id": "u", "item_id": "i", "timestamp": "t"})
    csv.write_text("u,i,t\n1,2,3\n4,5\n")  # a line too short to hold it
    with pytest.raises(DataError, match=r"line 3: field 'timestamp' \(column 't'\) is empty"):
        read_table(csv, {"user_id": "u", "item_id": "i", "timestamp": "t"})
    csv.write_text("u,i,r\n1,2,3\n4,5, \n")
    with pytest.raises(DataError, match=r"line 3: field 'rating' \(column 'r'\) is empty"):
        read_table(csv, {"user_id": "u", "item_id": "i", "rating": "r"})
    times = pd.DataFrame({"u": [1, 2], "i": [3, 4], "t": [pd.Timestamp("2020-01-01"), pd.NaT]})
    with pytest.raises(DataError, match=r"DataFrame, line 2: field 'timestamp' \(column 't'\) is empty"):
        frame_to_interactions(times, {"user_id": "u", "item_id": "i", "timestamp": "t"})
    ratings = pd.DataFrame({"u": [1, 2], "i": [3, 4], "r": [1.0, float("nan")]})
    with pytest.raises(DataError, match=r"DataFrame, line 2: field 'rating' \(column 'r'\) is empty"):
        frame_to_interactions(ratings, {"user_id": "u", "item_id": "i", "rating": "r"})


def test_table_suffixes_in_any_case(tmp_path):
    pq = tmp_path / "LOG.PARQUET"
    pd.DataFrame({"u": [1, 2], "i": [3, 4]}).to_parquet(pq)
    assert read_table(pq, {"user_id": "u", "item_id": "i"}).frame["item_id"].to_list() == [3, 4]
    with pytest.raises(DataError, match=r"a separator applies to CSV / TSV files, not to Parquet"):
        read_table(pq, {"user_id": "u", "item_id": "i"}, separator=";")


def test_table_with_an_extra_field_names_its_line(tmp_path):
    csv = tmp_path / "log.csv"
    # a quoted field spanning two lines comes first: the line named is the file's, not the record's
    csv.write_text('u,i,t\n1,"a\nb",3\n1,2,4\n2,3,5,6\n')
    with pytest.raises(DataError, match=r"log\.csv, line 5: 4 fields where the header has 3"):
        read_table(csv, {"user_id": "u", "item_id": "i", "timestamp": "t"})


def test_table_bad_timestamp_names_line(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("u,i,t\n1,2,2020-01-01\n1,3,yesterday\n")
    with pytest.raises(DataError, match=r"line 3: field 'timestamp' is neither"):
        read_table(csv, {"user_id": "u", "item_id": "i", "timestamp": "t"})


def test_table_integer_timestamps_with_one_bad_value_names_its_line(tmp_path):
    # polars finds no date-time format for such a column (it raised from deep inside before)
    csv = tmp_path / "log.csv"
    csv.write_text("u,i,t\n1,2,100\n1,3,200\n2,3,notatime\n")
    with pytest.raises(
        DataError, match=r"log.csv, line 4: field 'timestamp' is neither an integer nor a date-time: 'notatime'"
    ):
        read_table(csv, {"user_id": "u", "item_id": "i", "timestamp": "t"})


def test_table_timestamps_mixing_integers_and_dates_is_an_error(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("u,i,t\n1,2,2020-01-01\n1,3,1577923200\n")
    with pytest.raises(DataError, match=r"line 3: field 'timestamp' is an integer where line 2 has a date-time"):
        read_table(csv, {"user_id": "u", "item_id": "i", "timestamp": "t"})


def test_table_separator_from_suffix_and_explicit_timestamp_format(tmp_path):
    tsv = tmp_path / "log.tsv"
    tsv.write_text("u\ti\tt\n1\t2\t02/01/2020 10:00\n1\t3\t01/02/2020 09:00\n")  # day first
    frame = read_table(tsv, {"user_id": "u", "item_id": "i", "timestamp": "t"}, timestamp_format="%d/%m/%Y %H:%M").frame
    assert frame["timestamp"].to_list() == [1577959200, 1580547600]  # 2 Jan 10:00, 1 Feb 09:00 UTC
    assert frame["line"].to_list() == [2, 3]
    comma = tmp_path / "log.csv"
    comma.write_text("u;i\n1;2\n")
    assert read_table(comma, {"user_id": "u", "item_id": "i"}, separator=";").frame.height == 1


def test_a_column_called_line_is_data_and_errors_list_only_the_files_columns(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("line,u,i\nA,1,2\nB,1,3\n")
    frame = read_table(csv, {"user_id": "u", "item_id": "i"}).frame
    assert frame["line"].to_list() == [2, 3]  # file lines, not the column called 'line'
    with pytest.raises(DataError, match=r"missing column\(s\) \['user'\]; the file has \['line', 'u', 'i'\]$"):
        read_table(csv, {"user_id": "user", "item_id": "i"})
    with pytest.raises(DataError, match=r"DataFrame, line 2: field 'item_id' is empty"):
        frame_to_interactions(
            pd.DataFrame({"line": ["x", "y"], "u": [1, 2], "i": [5, None]}), {"user_id": "u", "item_id": "i"}
        )


def test_events_within_one_second_keep_their_order_in_time(tmp_path):
    from recsys.data.prepare import prepare_sequences

    def first_user_items(inter):
        seq = prepare_sequences(inter, verbose=False)
        return [seq.item_raw_ids[i] for i in seq.item_ids[seq.seq_offsets[0] : seq.seq_offsets[1]]]

    # the file lists them out of order within second 10: b (10.2) comes before a (10.7) in time
    csv = tmp_path / "log.csv"
    csv.write_text("u,i,t\n1,a,10.7\n1,b,10.2\n1,c,11\n")
    inter = read_table(csv, {"user_id": "u", "item_id": "i", "timestamp": "t"})
    assert inter.frame["timestamp"].to_list() == [10, 10, 11]  # whole seconds, as everywhere
    assert first_user_items(inter) == ["b", "a", "c"]
    dates = tmp_path / "dates.csv"
    dates.write_text("u,i,t\n1,a,2024-01-01 10:00:00.700\n1,b,2024-01-01 10:00:00.200\n1,c,2024-01-01 10:00:01.000\n")
    assert first_user_items(read_table(dates, {"user_id": "u", "item_id": "i", "timestamp": "t"})) == ["b", "a", "c"]
    typed = pd.DataFrame(
        {
            "u": [1, 1, 1],
            "i": ["a", "b", "c"],
            "t": pd.to_datetime(["2024-01-01 10:00:00.7", "2024-01-01 10:00:00.2", "2024-01-01 10:00:01.0"]),
        }
    )
    assert first_user_items(frame_to_interactions(typed, {"user_id": "u", "item_id": "i", "timestamp": "t"})) == [
        "b",
        "a",
        "c",
    ]
    whole = frame_to_interactions(
        pd.DataFrame({"u": [1, 1], "i": [1, 2], "t": [5.0, 4.0]}), {"user_id": "u", "item_id": "i", "timestamp": "t"}
    )
    assert "timestamp_order" not in whole.frame.columns  # whole seconds order by themselves
    with pytest.raises(DataError, match=r"line 2: field 'timestamp' \(column 't'\) is empty"):
        prepare_sequences(
            frame_to_interactions(
                pd.DataFrame({"u": [1, 1], "i": [1, 2], "t": [5.5, float("nan")]}),
                {"user_id": "u", "item_id": "i", "timestamp": "t"},
            ),
            verbose=False,
        )


def test_frame_to_interactions_pandas_and_unknown_column():
    df = pd.DataFrame({"u": [1, 2], "i": [5, 6]})
    assert frame_to_interactions(df, {"user_id": "u", "item_id": "i"}).frame.height == 2
    with pytest.raises(DataError, match="unknown canonical column 'who'"):
        frame_to_interactions(df, {"user_id": "u", "item_id": "i", "who": "u"})


def test_digit_string_ids_become_integers_only_where_no_two_ids_would_merge():
    def item_ids(raw):
        frame = pl.DataFrame({"u": ["a"] * len(raw), "i": raw})
        return frame_to_interactions(frame, {"user_id": "u", "item_id": "i"}).frame["item_id"]

    assert item_ids(["1", " 2", "30"]).dtype == pl.Int64  # plain integers (padding aside)
    kept = item_ids(["007", "7", "30"])  # "007" is not "7": an integer column would merge them
    assert kept.dtype == pl.Utf8 and kept.n_unique() == 3


def test_categorical_and_whole_float_ids_are_read_and_other_id_types_refused():
    cols = {"user_id": "u", "item_id": "i"}
    categorical = pd.DataFrame({"u": pd.Categorical(["a", "a", "b"]), "i": pd.Categorical(["x", "y", "x"])})
    assert frame_to_interactions(categorical, cols).frame["user_id"].dtype == pl.Utf8
    # a pandas integer column that once held a gap is float: its whole values are the ids
    whole = frame_to_interactions(pd.DataFrame({"u": [1.0, 1.0, 2.0], "i": [3.0, 4.0, 3.0]}), cols).frame
    assert whole["item_id"].dtype == pl.Int64 and whole["item_id"].to_list() == [3, 4, 3]
    with pytest.raises(DataError, match=r"DataFrame, line 2: field 'item_id' is 4.5: an id must be an integer"):
        frame_to_interactions(pd.DataFrame({"u": [1, 1, 2], "i": [3.0, 4.5, 3.0]}), cols)
    with pytest.raises(DataError, match=r"column 'u' \(user_id\) is Boolean: ids must be integers or strings"):
        frame_to_interactions(pd.DataFrame({"u": [True, False], "i": ["x", "y"]}), cols)


def test_a_pandas_id_column_of_mixed_types_is_named_with_its_first_odd_row():
    df = pd.DataFrame({"u": ["a", "b", "c"], "i": ["x", "y", 7]})
    with pytest.raises(DataError, match=r"DataFrame, line 3: column 'i' holds int 7 where earlier rows hold str"):
        frame_to_interactions(df, {"user_id": "u", "item_id": "i"})
    with pytest.raises(DataError, match="expected a polars or pandas DataFrame, got list"):
        frame_to_interactions([("a", "x")], {"user_id": "u", "item_id": "i"})


def test_numeric_times_in_milliseconds_and_finer_become_seconds(tmp_path):
    from recsys.data.prepare import prepare_sequences

    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"}
    second = 1_700_000_000  # 2023-11-14
    # the file lists b before a, a second apart in seconds: in milliseconds a (…000.7) comes first
    for unit, per_second in (("ms", 10**3), ("us", 10**6), ("ns", 10**9)):
        csv = tmp_path / f"{unit}.csv"
        times = [second * per_second + per_second * 7 // 10, second * per_second + per_second * 2 // 10]
        csv.write_text(f"u,i,t\n1,a,{times[0]}\n1,b,{times[1]}\n1,c,{(second + 1) * per_second}\n")
        for given in ("auto", unit):  # the magnitude says the unit, or it is given
            inter = read_table(csv, cols, timestamp_unit=given)
            assert inter.frame["timestamp"].to_list() == [second, second, second + 1], (unit, given)
            seq = prepare_sequences(inter, verbose=False)
            assert [seq.item_raw_ids[i] for i in seq.item_ids] == ["b", "a", "c"]  # sub-second order kept
    # seconds stay seconds; a unit given is used even where auto would read the magnitude otherwise
    csv = tmp_path / "s.csv"
    csv.write_text(f"u,i,t\n1,a,{second}\n1,b,{second + 5}\n")
    assert read_table(csv, cols).frame["timestamp"].to_list() == [second, second + 5]
    assert read_table(csv, cols, timestamp_unit="ms").frame["timestamp"].to_list() == [second // 1000] * 2
    ms = pd.DataFrame({"u": [1, 1], "i": ["a", "b"], "t": [1.7e12 + 1500.0, 1.7e12 - 500.0]})  # floats, negative rest
    assert frame_to_interactions(ms, cols).frame["timestamp"].to_list() == [1_700_000_001, 1_699_999_999]
    dates = tmp_path / "dates.csv"
    dates.write_text("u,i,t\n1,a,2024-01-01 10:00:00\n")
    with pytest.raises(DataError, match="timestamp_unit = 'ms' applies to numeric timestamps"):
        read_table(dates, cols, timestamp_unit="ms")


def test_times_that_are_no_times_and_repeated_header_names_are_errors(tmp_path):
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"}
    for value in ("inf", "-inf", "1e30", "99999999999999999999999"):  # infinite, or past 64-bit seconds
        csv = tmp_path / "log.csv"
        csv.write_text(f"u,i,t\n1,a,5\n1,b,{value}\n")
        with pytest.raises(DataError, match=f"log.csv, line 3: field 'timestamp' is '{value}': not a time"):
            read_table(csv, cols)
    flags = pd.DataFrame({"u": [1, 1], "i": ["a", "b"], "t": [True, False]})
    with pytest.raises(DataError, match="the timestamp column is Boolean: times are numbers, date-times or text"):
        frame_to_interactions(flags, cols)
    csv = tmp_path / "twice.csv"
    csv.write_text("u,i,i,x,x\n1,a,b,1,2\n")
    with pytest.raises(DataError, match="twice.csv: the header names column 'i' more than once"):
        read_table(csv, {"user_id": "u", "item_id": "i"})
    assert read_table(csv, {"user_id": "u", "item_id": 2}).frame["item_id"].to_list() == ["a"]  # by position
    assert read_table(csv, {"user_id": "u", "item_id": 3}).frame["item_id"].to_list() == ["b"]


def test_mixed_utc_offsets_and_naive_times_are_named(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("u,i,t\na,x,2024-01-01T10:00:00+02:00\na,y,2024-01-01T11:00:00+02:00\nb,x,2024-01-01 12:00:00\n")
    with pytest.raises(
        DataError, match=r"log.csv, line 2: field 'timestamp' has a UTC offset .* where line 4 has none"
    ):
        read_table(p, {"user_id": "u", "item_id": "i", "timestamp": "t"})


def test_gzip_is_told_by_its_bytes_and_a_cut_off_archive_is_named(tmp_path):
    rows = "u,i\n" + "".join(f"{k % 50},{k}\n" for k in range(20_000))
    packed = gzip.compress(rows.encode(), compresslevel=1)
    cut = tmp_path / "log.csv.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"log\.csv\.gz: a damaged or cut-off gzip file"):
        read_table(cut, {"user_id": "u", "item_id": "i"})
    cut_json = tmp_path / "log.jsonl.gz"
    cut_json.write_bytes(
        gzip.compress("".join(f'{{"u": {k % 50}, "i": {k}}}\n' for k in range(20_000)).encode(), 1)[:2000]
    )
    with pytest.raises(DataError, match=r"log\.jsonl\.gz: a damaged or cut-off gzip file"):
        read_table(cut_json, {"user_id": "u", "item_id": "i"})
    plain = tmp_path / "named.jsonl.gz"  # named .gz, not compressed: read as it is
    plain.write_text('{"u": 1, "i": 2}\n')
    assert read_table(plain, {"user_id": "u", "item_id": "i"}).frame["item_id"].to_list() == [2]
