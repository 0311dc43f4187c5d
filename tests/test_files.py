"""recsys.files: checked checkpoints, one writer per run folder, the run's own log."""

import subprocess
import sys
import time

import pytest
import torch

from recsys.data.readers import DataError
from recsys.errors import RecsysError
from recsys.files import (
    IntegrityError,
    RunLock,
    RunLockedError,
    RunLog,
    atomic_torch_save,
    load_checkpoint,
    make_folder,
    read_json,
    read_json_lines,
)
from tests.conftest import REPO


def _checkpoint(path):
    state = {
        "model": {"item_embedding.weight": torch.randn(500, 16), "b": torch.zeros(3)},
        "epoch": 4,
        "best_metric": float("-inf"),
        "history": [{"epoch": 1, "valid": {"ndcg@10": 0.1}}],
        "rng": torch.get_rng_state(),
        "betas": (0.9, 0.98),
    }
    atomic_torch_save(state, path)
    return state


def test_a_checkpoint_round_trips_with_its_hash(tmp_path):
    state = _checkpoint(tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["model"]["item_embedding.weight"], state["model"]["item_embedding.weight"])
    assert loaded["epoch"] == 4 and "sha256" not in loaded


def test_a_zeroed_item_table_is_refused(tmp_path):
    _checkpoint(tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    raw["model"]["item_embedding.weight"].zero_()  # the recorded hash kept, the content changed
    torch.save(raw, tmp_path / "c.pt")
    with pytest.raises(IntegrityError, match="does not match the hash recorded"):
        load_checkpoint(tmp_path / "c.pt")


def test_flipped_bits_are_refused(tmp_path):
    _checkpoint(tmp_path / "c.pt")
    data = bytearray((tmp_path / "c.pt").read_bytes())
    table = torch.load(tmp_path / "c.pt", weights_only=True)["model"]["item_embedding.weight"]
    start = bytes(data).find(table.numpy().tobytes()[:64])  # the table's bytes inside the zip
    assert start > 0
    gen = torch.Generator().manual_seed(0)
    for offset in torch.randint(0, table.numel() * 4, (1024,), generator=gen).tolist():
        data[start + offset] ^= 1 << (offset % 8)
    (tmp_path / "c.pt").write_bytes(bytes(data))
    with pytest.raises((IntegrityError, DataError)):
        load_checkpoint(tmp_path / "c.pt")


def test_a_checkpoint_without_a_hash_is_refused(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(IntegrityError, match="carries no content hash"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_unreadable_json_names_the_file_and_line(tmp_path):
    (tmp_path / "config.json").write_text('{"data": {\n  "dataset": oops}\n')
    with pytest.raises(DataError, match=r"config.json, line 2: not a readable run configuration"):
        read_json(tmp_path / "config.json", "run configuration")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="not UTF-8"):
        read_json(tmp_path / "bin.json")
    (tmp_path / "final_metrics.json").write_text("[1, 2]")  # valid JSON, not what a run writes
    with pytest.raises(DataError, match=r"final_metrics.json: not a readable file \(it holds a list, where an object"):
        read_json(tmp_path / "final_metrics.json")
    assert read_json(tmp_path / "final_metrics.json", expect=list) == [1, 2]


def test_a_json_lines_file_names_the_line_that_is_not_an_object(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\n\n{"epoch": 2}\n')
    assert read_json_lines(log, "per-epoch metrics log") == [{"epoch": 1}, {"epoch": 2}]  # blank lines skipped
    log.write_text('{"epoch": 1}\n\n{"epoch": 2, "train_lo')  # a cut-off last line
    with pytest.raises(DataError, match=r"metrics.jsonl, line 3: not a readable per-epoch metrics log"):
        read_json_lines(log, "per-epoch metrics log")
    log.write_text('{"epoch": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2: .*no JSON object"):
        read_json_lines(log)
    log.write_bytes(b'{"a": 1}\n\xff\n')
    with pytest.raises(DataError, match="not UTF-8"):
        read_json_lines(log)


HOLD = """
import sys, time
from recsys.files import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run"), "30"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.perf_counter()
        with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} "):
            RunLock(tmp_path / "run").acquire()
        assert time.perf_counter() - start < 1.0
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process
        holder.wait()
    with RunLock(tmp_path / "run"):  # a stale lock file is taken over
        with RunLock(tmp_path / "run"):  # re-entrant within one process
            pass
    assert (tmp_path / "run" / ".lock").read_text() == ""


def test_the_run_log_keeps_what_a_muted_terminal_does_not_show(tmp_path, capsys):
    with RunLog(tmp_path / "train.log", muted=True) as log:
        print("dropped 3 users with fewer than 3 events")
        print("warning: something", file=sys.stderr)
        sys.stderr.write("\rbar 10%")  # a progress-bar redraw: terminal only
        log.say("results")
        with RunLog(tmp_path / "train.log") as again:  # already open: nothing is written twice
            assert not again.active
            print("once")
    out = capsys.readouterr()
    assert out.out == "results\n" and "warning: something" in out.err  # muted: stdout only
    text = (tmp_path / "train.log").read_text()
    assert "dropped 3 users" in text and "warning: something" in text and "results" in text and "bar 10%" not in text
    assert text.count("once") == 1


def test_a_file_where_a_run_folder_is_due_is_an_error_naming_it(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    for folder in (tmp_path / "taken", tmp_path / "taken" / "run"):
        with pytest.raises(RecsysError, match=f"{folder}: a file is there"):
            make_folder(folder)
        with pytest.raises(RecsysError, match=f"{folder}: a file is there"):
            RunLock(folder).acquire()
    assert make_folder(tmp_path / "a" / "b").is_dir()
