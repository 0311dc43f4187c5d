"""The fused CPU kernels' library: built from ``cpu_kernels.c`` on first use, loaded, checked.

The C sources hold one op per file (``cpu/*.c``, sharing ``cpu/common.h`` and ``cpu/threads.h``, built as
one translation unit by ``cpu_kernels.c``); each op has its own module with its PyTorch reference, its
fast path and the dispatcher that picks between them (:mod:`.cpu_encoder`: transformer inference,
:mod:`.cpu_ranking`: exact full-ranking counts, :mod:`.cpu_softmax_ce`: the full-softmax cross-entropy
and the bf16 exponentials, :mod:`.cpu_dropout`: dropout masks). This module builds and loads them:

- built once per machine with the system C compiler (``cc -O3 -march=native``, ``$CC`` if set) into a
  private ``RECSYS_CACHE/kernels/`` folder (written to a temporary file and renamed, its sha256 recorded
  and checked before every load) and loaded through ctypes: no build step at install time, no binary
  shipped, no Python or torch headers;
- where torch parallelises with GNU OpenMP (its Linux wheels) the kernels run on torch's own thread
  pool (they are handed ``GOMP_parallel`` of the libgomp torch loaded); otherwise on threads of their own;
- :func:`available` decides once: the library built and loaded, its tile sizes read from it, and every
  entry point agreeing with its PyTorch reference on small random inputs (each op module's
  ``self_check``). Otherwise (no compiler, ``RECSYS_CPU_ENCODER=torch``, a failed check) every op
  takes its PyTorch path, with one warning when a compiler was there but the build or a check failed.

The kernels run outside torch's dispatcher: ``torch.export`` and ``torch.compile`` take the PyTorch
paths (the models check ``torch.compiler.is_exporting()``), and :func:`counting_flops` counts what they
compute for the FLOP benchmarks.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# every file the build reads: a change to any of them makes a new library
SOURCES = [SOURCE, *sorted((SOURCE.parent / "cpu").glob("*.[ch]"))]
FLAGS = ["-O3", "-ffp-contract=fast", "-fPIC", "-shared", "-pthread"]

_library: ctypes.CDLL | None = None
_state: str | None = None  # None: not tried yet; "ok", "off", "failed"
_flop_counters: list[list[int]] = []  # active counting_flops() contexts
# the C code's tile sizes (recsys_tile_constants), read when the library loads
TILES = {"query_tile": 6, "rank_chunk": 1024, "ce_positions": 48}

# entry point -> number of (pointer) arguments
ENTRY_POINTS = {
    "recsys_encode_last": 8,
    "recsys_rank_counts": 8,
    "recsys_softmax_ce": 10,
    "recsys_keep_mask": 6,
    "recsys_ce_keeps_exponentials": 1,
    "recsys_bf16_exp_colsum": 4,
    "recsys_tile_constants": 1,
}


@contextlib.contextmanager
def counting_flops() -> Iterator[list[int]]:
    """Counts the floating-point operations of the kernels' products and attention while active
    (multiply and add counted apart, as torch's FlopCounterMode does; elementwise work not counted):
    yields a one-element list holding the running total. The kernels run outside torch's dispatcher, so
    FlopCounterMode does not see them (benchmarks/flops.py adds this count)."""
    counter = [0]
    _flop_counters.append(counter)
    try:
        yield counter
    finally:
        _flop_counters.remove(counter)


def add_flops(flops: int) -> None:
    for counter in _flop_counters:
        counter[0] += int(flops)


def counting() -> bool:
    """Whether a :func:`counting_flops` context is active."""
    return bool(_flop_counters)


def round_up(x: np.ndarray, m: int) -> np.ndarray:
    return -(-x // m) * m


def _cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_CACHE", Path.home() / ".cache" / "recsys")) / "kernels"


def _private_dir(folder: Path) -> Path:
    """``folder``, created private (mode 700) if missing; refused (RuntimeError) unless it is a real folder
    owned by this user that nobody else can write, and its parent either the same or sticky (like /tmp):
    a library loaded from a folder others can write would run their code."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    for path, own in ((folder, True), (folder.parent, False)):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise RuntimeError(f"{path} is not a folder")
        writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if own and (info.st_uid != os.getuid() or writable_by_others):
            raise RuntimeError(
                f"{path} is not a private folder of this user (owner uid {info.st_uid}, mode "
                f"{stat.S_IMODE(info.st_mode):o}); compiled kernels are only loaded from one "
                "(chmod 700 it, or set RECSYS_CACHE elsewhere)"
            )
        if not own and writable_by_others and not info.st_mode & stat.S_ISVTX:
            raise RuntimeError(
                f"{path} can be written by other users, who could replace {folder.name}/; "
                "compiled kernels are not loaded from under it (set RECSYS_CACHE elsewhere)"
            )
    return folder


def _hash_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified(target: Path) -> bool:
    """Whether ``target`` exists and matches the sha256 recorded when it was built."""
    from ..files import sha256_of

    try:
        return _hash_file(target).read_text().strip() == sha256_of(target)
    except OSError:
        return False


def _cpu_signature() -> str:
    """The CPU's identity for the cache key (-march=native code must not run on another CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _openmp_runtime() -> Path | None:
    """The GNU OpenMP runtime (libgomp) torch runs its thread pool on, as loaded in this process: the
    one in torch's own folder, else the only one loaded; None where torch does not use OpenMP or it
    cannot be told (then the kernels start threads of their own)."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = {Path(line.split(None, 5)[-1].strip()) for line in f if "libgomp" in line}
    except OSError:  # not Linux
        return None
    loaded = sorted(p for p in paths if p.name.startswith("libgomp") and p.is_file())
    torch_dir = Path(torch.__file__).resolve().parent
    own = [p for p in loaded if torch_dir in p.resolve().parents]
    return own[0] if own else (loaded[0] if len(loaded) == 1 else None)


def _compile() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler (cc, gcc or clang) found")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    source = b"".join(path.name.encode() + b"\0" + path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(
        b"\0".join(
            [
                source,
                compiler.encode(),
                version.encode(),
                " ".join(FLAGS).encode(),
                platform.machine().encode(),
                _cpu_signature().encode(),
            ]
        )
    ).hexdigest()[:16]
    target = _private_dir(_cache_dir()) / f"cpu_kernels-{key}.so"
    if target.exists() and not _verified(target):
        why = (
            "does not match the hash recorded when it was built (damaged or replaced)"
            if _hash_file(target).exists()
            else "has no recorded hash"
        )
        warnings.warn(f"recsys: {target} {why}; rebuilding it", RuntimeWarning, stacklevel=3)
    if not _verified(target):
        errors = []
        for arch in (["-march=native"], []):  # some compilers / targets have no -march=native
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
            os.close(fd)
            result = subprocess.run(
                [compiler, *FLAGS, *arch, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True, timeout=300
            )
            if result.returncode == 0:
                # the hash first, then the library (each renamed atomically): a library is loaded only when
                # it matches the hash recorded for it
                from ..files import atomic_write_bytes, sha256_of

                atomic_write_bytes(_hash_file(target), (sha256_of(Path(tmp)) + "\n").encode())
                os.replace(tmp, target)
                break
            os.unlink(tmp)
            errors.append(result.stderr.strip()[-2000:])
        else:
            raise RuntimeError(f"{compiler} could not build {SOURCE.name}: {errors[-1]}")
    if not _verified(target):  # changed between the build and now
        raise RuntimeError(f"{target} does not match the hash recorded when it was built")
    lib = ctypes.CDLL(str(target))
    for name, args in ENTRY_POINTS.items():
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * args
    lib.recsys_use_thread_pool.argtypes, lib.recsys_use_thread_pool.restype = [ctypes.c_void_p], None
    lib.recsys_uses_thread_pool.restype = ctypes.c_int
    runtime = _openmp_runtime()
    if runtime is not None:  # torch's own pool: GOMP_parallel of the very runtime torch loaded
        try:
            parallel = ctypes.cast(ctypes.CDLL(str(runtime)).GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            parallel = None
        lib.recsys_use_thread_pool(parallel)
    return lib


def uses_torch_threads() -> bool:
    """Whether the loaded kernels run on torch's OpenMP thread pool (else on threads of their own)."""
    return _library is not None and bool(_library.recsys_uses_thread_pool())


def available() -> bool:
    """Whether the kernels are built, loaded and agree with their references, each entry point (decided once)."""
    global _library, _state
    if _state is None:
        if os.environ.get("RECSYS_CPU_ENCODER", "kernel") == "torch":
            _state = "off"
        else:
            try:
                _library = _compile()
                _read_tiles(_library)
                failed = _failed_self_checks()
                _state = "failed" if failed else "ok"
                if failed:
                    warnings.warn(
                        f"recsys: the fused CPU kernels disagreed with their PyTorch references ({', '.join(failed)}); "
                        "using the PyTorch paths",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _state = "failed"
                warnings.warn(
                    f"recsys: fused CPU kernels unavailable ({err}); using the PyTorch paths",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _state == "ok"


def library() -> ctypes.CDLL:
    """The loaded library (after :func:`available` said yes)."""
    if _library is None or _state in ("off", "failed"):
        raise RuntimeError("the fused CPU kernels are not loaded (call available() first)")
    return _library


def _read_tiles(lib: ctypes.CDLL) -> None:
    values = (ctypes.c_int64 * 3)()
    lib.recsys_tile_constants(ctypes.addressof(values))
    TILES.update(query_tile=values[0], rank_chunk=values[1], ce_positions=values[2])


def _failed_self_checks() -> list[str]:
    """The entry points whose kernel disagrees with its PyTorch reference on small random inputs."""
    from . import cpu_dropout, cpu_encoder, cpu_ranking, cpu_softmax_ce

    checks = {
        "recsys_encode_last": cpu_encoder.self_check,
        "recsys_rank_counts": cpu_ranking.self_check,
        "recsys_softmax_ce / recsys_ce_keeps_exponentials": cpu_softmax_ce.self_check_ce,
        "recsys_bf16_exp_colsum": cpu_softmax_ce.self_check_bf16,
        "recsys_keep_mask": cpu_dropout.self_check,
    }
    with torch.random.fork_rng(devices=[]):  # the checks draw random numbers: the run's own stream is untouched
        return [name for name, check in checks.items() if not check()]
