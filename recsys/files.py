"""What recsys writes and reads back: atomic writes, content hashes, checked checkpoints, run locks and
the run's own log.

- Every file is written to a temporary name in its folder, flushed and renamed: a killed process
  leaves the old file or the new one, never half of one.
- A checkpoint carries the sha256 of its content (every tensor's bytes, dtype and shape, and every
  other value) under the key ``"sha256"``; :func:`load_checkpoint` recomputes it after
  ``torch.load(weights_only=True)`` and refuses a file that does not match (a zeroed table, flipped
  bits, a file put together from two runs).
- :class:`RunLock`: one writer per run folder (an ``flock`` held for the run's lifetime: the operating
  system releases it on any exit, ``kill -9`` included, so a lock file left by a dead process is
  taken over, with a note).
- :class:`RunLog`: everything a run prints goes to its ``train.log`` as well, also when the terminal
  is silenced.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .errors import DataError, RecsysError


class IntegrityError(RecsysError, ValueError):
    """A file recsys wrote does not match the hash recorded when it was written."""


class RunLockedError(RecsysError, RuntimeError):
    """Another process is writing the same run folder."""


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def make_folder(path: str | Path) -> Path:
    """``mkdir -p``, with a :class:`RecsysError` naming the path where a file stands in a folder's place."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RecsysError(f"{path}: a file is there (or above it), where a folder is due") from None
    return path


def _read_text(path: Path, what: str) -> str:
    """The file's UTF-8 text; a missing file stays a FileNotFoundError, other failures name the file."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a readable {what} (not UTF-8 text: {err.reason})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the {what} ({err.strerror})") from None


def read_json(path: str | Path, what: str = "file", expect: type = dict) -> Any:
    """A JSON file's content, or a :class:`recsys.errors.DataError` naming the file
    and the line where it stops being JSON, or what it holds where ``expect`` (an object) was due."""
    path = Path(path)
    try:
        content = json.loads(_read_text(path, what))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not a readable {what} ({err.msg})") from None
    if not isinstance(content, expect):
        names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
        found, wanted = names.get(type(content), type(content).__name__), names.get(expect, expect.__name__)
        raise DataError(f"{path}: not a readable {what} (it holds {found}, where {wanted} is due)")
    return content


def read_json_lines(path: str | Path, what: str = "file") -> list[dict]:
    """The objects of a JSON-lines file (blank lines skipped), or a :class:`recsys.errors.DataError`
    naming the file and the line that is not a JSON object."""
    path = Path(path)
    records = []
    for number, line in enumerate(_read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not a readable {what} ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: not a readable {what} (a line holds no JSON object)")
        records.append(record)
    return records


def content_digest(obj: Any) -> str:
    """sha256 over a nested structure of dicts, lists, tuples, tensors and plain values, in a canonical
    order (dict keys sorted): the same content gives the same digest wherever it was saved."""
    import torch  # (imported here: listing cards or recipes needs no torch)

    digest = hashlib.sha256()

    def feed(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{path}:tensor:{t.dtype}:{tuple(t.shape)}\0".encode())
            if t.numel():  # the tensor's own bytes, no copy
                digest.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            digest.update(f"{path}:dict:{len(value)}\0".encode())
            for key in sorted(value, key=repr):
                feed(value[key], f"{path}/{key!r}")
        elif isinstance(value, (list, tuple)):
            digest.update(f"{path}:{type(value).__name__}:{len(value)}\0".encode())
            for i, item in enumerate(value):
                feed(item, f"{path}/{i}")
        else:
            digest.update(f"{path}:{type(value).__name__}:{value!r}\0".encode())

    feed(obj, "")
    return digest.hexdigest()


def atomic_torch_save(obj: dict, path: Path) -> None:
    """``torch.save`` of a dict with its :func:`content_digest` under ``"sha256"``, atomically."""
    import torch

    path = Path(path)
    payload = {**obj, "sha256": content_digest(obj)}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`atomic_torch_save` (``weights_only``: no code runs), after checking
    its content against the digest it carries."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated or foreign file
        raise DataError(f"{path}: not a readable recsys checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "sha256" not in state:
        raise IntegrityError(
            f"{path}: the checkpoint carries no content hash (not written by recsys, or "
            "written by a version before checkpoints were hashed); refusing to trust it"
        )
    recorded = state.pop("sha256")
    if content_digest(state) != recorded:
        raise IntegrityError(
            f"{path}: the checkpoint's content does not match the hash recorded when it was "
            "written (the file was changed or damaged after it was saved)"
        )
    return state


# ----------------------------------------------------------------------------- one writer per run folder

_held: dict[Path, list] = {}  # lock path -> [file, count]: re-entrant within this process


class RunLock:
    """An exclusive lock on a run folder for as long as the ``with`` block (or until :meth:`release`).

    A second process fails at once with :class:`RunLockedError` naming the holder (pid, host, command,
    start time). The lock is an ``flock`` on ``FOLDER/.lock``: the operating system drops it when its
    holder exits in any way, so a file left by a killed process is taken over (with a note)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)  # as given: errors name it so
        self.path = self.folder.resolve() / ".lock"
        self.acquired = False

    def acquire(self) -> "RunLock":
        if self.path in _held:
            _held[self.path][1] += 1
            self.acquired = True
            return self
        make_folder(self.folder)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunLockedError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish or use another --run-dir"
            ) from None
        f.seek(0)
        previous = f.read().strip()
        if previous:
            print(
                f"note: {self.path.parent}: taking over the lock left by {previous} (no longer running)",
                file=sys.stderr,
            )
        f.seek(0)
        f.truncate()
        f.write(
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} ({' '.join(sys.argv[:4])[:200]})\n"
        )
        f.flush()
        _held[self.path] = [f, 1]
        self.acquired = True
        return self

    def release(self) -> None:
        if not self.acquired:
            return
        self.acquired = False
        entry = _held[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.path]
            f = entry[0]
            f.seek(0)
            f.truncate()  # an empty file: nobody holds it
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------- the run's own log


class _Tee(io.TextIOBase):
    """Writes to the terminal stream (unless muted) and to the log; progress-bar redraws (carriage
    returns, terminal escapes) go to the terminal only."""

    def __init__(self, terminal: TextIO, log: TextIO, owner: "RunLog | None"):
        self.terminal, self.log, self.owner = terminal, log, owner

    def write(self, text: str) -> int:
        if self.owner is None or not self.owner.muted:
            self.terminal.write(text)
        if "\r" not in text and "\x1b[" not in text:
            self.log.write(text)
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()


_logging: set[Path] = set()  # the run logs open in this process


class RunLog:
    """Inside ``with RunLog(path, muted=...)``, what is printed to stdout and stderr is appended to
    ``path`` too; ``muted`` silences stdout on the terminal only (``--quiet``; warnings on stderr still
    show), and can be changed on the way. Opening a log that is already open in this process does
    nothing (``active`` is then False); logs of different paths nest, the inner one writing through
    the outer."""

    def __init__(self, path: str | Path, muted: bool = False):
        self.path, self.muted = Path(path), muted
        self.active = False

    def __enter__(self) -> "RunLog":
        key = self.path.resolve()
        if key in _logging:
            return self
        make_folder(self.path.parent)
        self.file = open(self.path, "a", encoding="utf-8")
        self.file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {' '.join(sys.argv)}\n")
        self.saved = sys.stdout, sys.stderr
        sys.stdout = _Tee(self.saved[0], self.file, self)
        sys.stderr = _Tee(self.saved[1], self.file, None)
        _logging.add(key)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        sys.stdout, sys.stderr = self.saved
        self.file.close()
        _logging.discard(self.path.resolve())
        self.active = False

    def write(self, text: str) -> None:
        """Into the log only."""
        if self.active:
            self.file.write(text)
            self.file.flush()

    def say(self, *args, **kwargs) -> None:
        """``print`` to the terminal even when muted (and to the log)."""
        muted, self.muted = self.muted, False
        try:
            print(*args, **kwargs)
        finally:
            self.muted = muted
