import numpy as np
import polars as pl
import pytest

from recsys.data.prepare import k_core, prepare_sequences, repeat_events
from recsys.data.readers import DataError, Interactions, frame_to_interactions


def _inter(rows, with_time=True):
    cols = {"user_id": "u", "item_id": "i"}
    data = {"u": [r[0] for r in rows], "i": [r[1] for r in rows]}
    if with_time:
        cols["timestamp"] = "t"
        data["t"] = [r[2] for r in rows]
    if len(rows[0]) > 3:
        cols["rating"] = "r"
        data["r"] = [float(r[3]) for r in rows]
    return frame_to_interactions(pl.DataFrame(data), cols)


def test_stable_chronological_sort_ties_keep_file_order():
    # user 7: items 30 (t=5), 10 (t=1), 20 (t=5), 40 (t=1) -> by time, ties in file order: 10, 40, 30, 20
    seq = prepare_sequences(_inter([(7, 30, 5), (7, 10, 1), (7, 20, 5), (7, 40, 1)]), verbose=False)
    raw = seq.item_raw_ids[seq.sequence(0)]
    assert list(raw) == [10, 40, 30, 20]
    assert list(seq.timestamps) == [1, 1, 5, 5]


def test_remap_padding_zero_and_offsets():
    seq = prepare_sequences(_inter([(2, "b", 1), (1, "a", 1), (2, "a", 2)]), verbose=False)
    assert seq.num_items == 3 and seq.item_raw_ids[0] is None
    assert list(seq.seq_offsets) == [0, 1, 3]
    assert (seq.item_ids >= 1).all()
    assert list(seq.user_raw_ids) == [1, 2]
    assert list(seq.item_index(["b", "a"])) == [2, 1]
    with pytest.raises(DataError, match="unknown item id"):
        seq.item_index(["zzz"])


def test_no_timestamps_uses_positions():
    seq = prepare_sequences(_inter([(1, 5, 0), (1, 6, 0), (2, 5, 0)], with_time=False), verbose=False)
    assert list(seq.timestamps) == [0, 1, 0] and not seq.has_timestamps


def test_rating_filter_and_dedupe_are_counted(capsys):
    rows = [(1, 1, 1, 5), (1, 2, 2, 1), (1, 1, 3, 4), (2, 3, 1, 5)]
    seq = prepare_sequences(_inter(rows), min_rating=4, dedupe="first", verbose=True)
    out = capsys.readouterr().out
    assert "rating >= 4: dropped 1 of 4" in out
    assert "dedupe=first: dropped 1 repeated" in out
    assert seq.num_interactions == 2


def test_k_core_is_iterative():
    # item 9 has 2 users; after dropping user 3 (1 event) item 8 falls below 2, then user 2 too
    df = pl.DataFrame({"user_id": [1, 1, 2, 2, 3, 1, 2], "item_id": [9, 7, 9, 8, 8, 7, 7]})
    kept = k_core(df, 2)
    assert set(kept["user_id"]) == {1, 2}
    counts_u = kept.group_by("user_id").len()["len"].min()
    counts_i = kept.group_by("item_id").len()["len"].min()
    assert counts_u >= 2 and counts_i >= 2


def test_short_users_dropped_with_a_count(capsys):
    seq = prepare_sequences(_inter([(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 1, 1)]), min_seq_len=3, verbose=True)
    assert "dropped 1 users with fewer than 3 events" in capsys.readouterr().out
    assert seq.num_users == 1


def test_missing_timestamp_names_line():
    df = pl.DataFrame({"u": [1, 1], "i": [1, 2], "t": [5, None]})
    with pytest.raises(DataError, match=r"line 2: field 'timestamp' \(column 't'\) is empty"):
        frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"})
    # a reader of its own that leaves a gap: preparation refuses it too
    inter = frame_to_interactions(
        df.with_columns(pl.col("t").fill_null(0)), {"user_id": "u", "item_id": "i", "timestamp": "t"}
    )
    inter = Interactions(inter.frame.with_columns(pl.Series("timestamp", [5, None])), inter.source, True)
    with pytest.raises(DataError, match="line 2: field 'timestamp' is empty"):
        prepare_sequences(inter, verbose=False)


def test_save_and_memory_mapped_load(tmp_path):
    seq = prepare_sequences(_inter([(2, "b", 1), (1, "a", 1), (2, "a", 2), (2, "c", 0)]), verbose=False)
    seq.save(tmp_path / "prepared")
    again = type(seq).load(tmp_path / "prepared", mmap=True)
    assert isinstance(again.item_ids, np.memmap)
    for name in ("item_ids", "timestamps", "seq_offsets"):
        assert np.array_equal(getattr(again, name), getattr(seq, name))
    assert list(again.item_raw_ids) == list(seq.item_raw_ids) and list(again.user_raw_ids) == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # no temporary folder left


def test_exact_duplicate_rows_are_counted_not_silently_kept(capsys):
    df = pl.DataFrame({"u": [1, 1, 1, 1, 2, 2], "i": [5, 6, 6, 6, 5, 7], "t": [1, 2, 2, 2, 1, 3]})
    seq = prepare_sequences(frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}))
    assert "2 exact duplicate rows (same user, item, time and rating): kept" in capsys.readouterr().out
    assert seq.num_interactions == 6 and any("exact duplicate" in line for line in seq.log)
    prepare_sequences(frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}), dedupe="first")
    out = capsys.readouterr().out
    assert "dropped by dedupe=first" in out and "dropped 2 repeated (user, item) pairs" in out


def test_events_keep_only_the_types_asked_for_and_a_type_the_log_lacks_is_named(capsys):
    df = pl.DataFrame(
        {"u": [1, 1, 1, 2, 2], "i": [1, 2, 3, 1, 2], "t": [1, 2, 3, 1, 2], "e": ["view", "buy", "view", "view", "cart"]}
    )
    inter = frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t", "event": "e"})
    seq = prepare_sequences(inter, events=["view"], verbose=True)
    assert seq.num_interactions == 3
    assert "events ['view']: dropped 2 of 5 interactions" in capsys.readouterr().out
    with pytest.raises(
        DataError,
        match=r"data\.events names \['purchase'\], which the log does not have; it has \['buy', 'cart', 'view'\]",
    ):
        prepare_sequences(inter, events=["view", "purchase"], verbose=False)
    plain = frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"})
    with pytest.raises(DataError, match=r"data\.events is set but the data has no 'event' field"):
        prepare_sequences(plain, events=["view"], verbose=False)


def test_repeat_events_flag_each_pairs_events_after_its_first():
    # user 1: a b a a (the 3rd and 4th repeat a); user 2: b c (none); user 3: c b c (its last repeats c)
    rows = [(1, "a", 1), (1, "b", 2), (1, "a", 3), (1, "a", 4), (2, "b", 1), (2, "c", 2)]
    rows += [(3, "c", 1), (3, "b", 2), (3, "c", 3)]
    seq = prepare_sequences(_inter(rows), verbose=False)
    assert repeat_events(seq).tolist() == [False, False, True, True, False, False, False, False, True]
