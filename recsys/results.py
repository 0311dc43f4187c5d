"""Result records: one JSON line per run in ``benchmarks/results/`` (``--log-results``), one file per month
of the records' dates (``2026-12.jsonl``; a month that outgrows :data:`PART_BYTES` goes on in
``2026-12.2.jsonl``, ``2026-12.3.jsonl``, ...: the log stays in files of a reviewable size), rendered to
``benchmarks/RESULTS.md`` by ``python benchmarks/render_results.py``.

A record says when (UTC date), at which git commit, on which machine, by which command, on which data
file (and its sha256), under which protocol, what was measured (metrics, timings, peak memory).
``benchmarks/RESULTS.md`` is generated from these lines only, so no figure in it is typed by hand;
published reference numbers come from ``benchmarks/references.toml`` and are labelled as such.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"  # a folder of monthly JSONL files
PART_BYTES = 900 * 1024  # a month's file takes no line that would carry it past this; the next part does


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        # the results log itself is not code: a run appended to it earlier must not mark later runs dirty
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)benchmarks/results",
                ":(exclude)benchmarks/RESULTS.md",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """The machine a record was measured on. Besides the CPU's name (which a cloud CPU may reduce to its
    vendor and line, e.g. "AMD EPYC" for several generations), its family / model numbers, the vector
    instructions torch dispatches to (``cpu_isa``: AVX2, AVX512, ...) and whether bf16 products run on
    bf16 units: the same "AMD EPYC" with AVX-512 and without ran our fp32 products ~4x apart."""
    cpu = platform.processor() or platform.machine()
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            if len(fields) == 3:
                break
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if "cpu family" in fields and "model" in fields:
        info["cpu_family_model"] = f"{fields['cpu family']}/{fields['model']}"
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if capability is not None:
        info["cpu_isa"] = capability()
    try:
        info["cpu_bf16_units"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def benchmark_command(script: str, argv: list[str] | None = None) -> str:
    """The command line that ran ``benchmarks/<script>.py`` with ``argv`` (default: this process's arguments)."""
    return f"python benchmarks/{script}.py " + shlex.join(argv if argv is not None else sys.argv[1:])


def make_record(kind: str, command: str, commit: str | None = None, **fields) -> dict:
    """``commit``: the code the run started with (default: HEAD now)."""
    return {
        "kind": kind,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or git_commit(),
        "machine": machine(),
        "command": command,
        **fields,
    }


def records_file(path: str | Path, record: dict, line_bytes: int = 0, part_bytes: int | None = None) -> Path:
    """Where ``record`` (a line of ``line_bytes``) goes: ``path`` itself when it names a ``.jsonl`` file, else
    the last part of the record's month in the folder ``path`` (``YYYY-MM.jsonl``, then ``YYYY-MM.2.jsonl``,
    ...), or a new part when the line would carry that file past ``part_bytes`` (default :data:`PART_BYTES`)."""
    path = Path(path)
    part_bytes = PART_BYTES if part_bytes is None else part_bytes
    if path.suffix == ".jsonl":
        return path
    month = record["date"][:7]
    parts = [f for f in record_files(path) if _part_key(f)[0] == month] if path.is_dir() else []
    if not parts:
        return path / f"{month}.jsonl"
    last = parts[-1]
    if last.stat().st_size + line_bytes <= part_bytes:
        return last
    return path / f"{month}.{_part_key(last)[1] + 1}.jsonl"


def _part_key(file: Path) -> tuple[str, int]:
    """``2026-12.jsonl`` -> ("2026-12", 1), ``2026-12.2.jsonl`` -> ("2026-12", 2); other names sort by name."""
    month, _, part = file.stem.partition(".")
    return (month, int(part)) if part.isdigit() else (file.stem, 1)


def record_files(path: str | Path) -> list[Path]:
    """The JSONL files of a results log: ``path`` itself, or a folder's monthly files (and their parts) in
    date order."""
    path = Path(path)
    return sorted(path.glob("*.jsonl"), key=_part_key) if path.is_dir() else [path]


def append_record(record: dict, path: str | Path = DEFAULT_RESULTS) -> None:
    """Append one line (to :func:`records_file`); a single write of a whole line, so a crash never leaves
    half a record."""
    line = json.dumps(record, sort_keys=True) + "\n"
    path = records_file(path, record, len(line.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(line)
