"""Fused CPU kernels in C, built on first use: inference of pre-LayerNorm transformer encoders (SASRec,
BERT4Rec: each history's last hidden state, one sequence at a time in cache-sized scratch), exact
full-ranking counts (:class:`ItemRanker`) and the full-softmax cross-entropy with both gradients
(:func:`softmax_ce`, what ``recsys.losses`` trains with on CPU: 48 x 96 tiles of logits in cache, an
online log-sum-exp, the exponentials of up to 48 MB of positions kept for the item gradient, else the
logits recomputed: faster than recomputing and than the PyTorch path through oneDNN at Beauty's shape),
and the elementwise pass of the bf16 full CE (:func:`bf16_exp_column_sums`: a bf16 logits block
exponentiated in place with fp32 column sums, between oneDNN's bf16 products).

The triple every kernel here has:

- reference: :func:`reference_encode_last`, the same function in PyTorch ops (and the models' own
  PyTorch path, which the tests compare against as well);
- kernel: ``cpu_encoder.c``, compiled once per machine with the system C compiler (``cc -O3
  -march=native``, ``$CC`` if set) into ``RECSYS_CACHE/kernels/`` (written to a temporary file and
  renamed) and loaded through ctypes: no build step at install time, no binary shipped, no Python or
  torch headers. Where torch parallelises with GNU OpenMP (its Linux wheels), the kernels run on
  torch's own thread pool: they are handed ``GOMP_parallel`` of the very libgomp torch loaded (no
  OpenMP at build time); with threads of their own (pthreads, the fallback) they competed for the cores
  with torch's workers, which spin a while after every torch op, and ran slower;
- dispatcher: :func:`available` - the kernel where it compiled and passed a check against the
  reference on first use; otherwise (no compiler, ``RECSYS_CPU_ENCODER=torch``, a failed check) the
  models run their PyTorch path, with one warning when a compiler was there but the build or the
  check failed.

Why: on 2 CPU cores an ML-1M test evaluation (2,999 histories of up to 200 items, D = 64) spent
most of its time in PyTorch ops that each stream a [tokens, D] tensor through memory (LayerNorms,
GELU, residual additions, the attention's scores, softmax and masks) and in ~10,000 op calls; the
kernel keeps one sequence's intermediates in L2 cache and runs its products register-blocked. The
results equal the PyTorch path to fp32 rounding (different summation order, polynomial exp and erf;
tests compare both).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("cpu_encoder.c")
FLAGS = ["-O3", "-ffp-contract=fast", "-fPIC", "-shared", "-pthread"]
PARAMS_PER_BLOCK = 12
W1 = 8  # a block's first feed-forward matrix [D, F] in EncoderWeights.blocks

_library: ctypes.CDLL | None = None
_state: str | None = None  # None: not tried yet; "ok", "off", "failed"
QUERY_TILE, RANK_CHUNK, CE_POSITIONS = 6, 1024, 48  # as in cpu_encoder.c
_flop_counters: list[list[int]] = []  # active count_flops() contexts


@contextlib.contextmanager
def counting_flops():
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


def _add_flops(flops: int) -> None:
    for counter in _flop_counters:
        counter[0] += int(flops)


def _round_up(x: np.ndarray, m: int) -> np.ndarray:
    return -(-x // m) * m


def encoder_flops(counts: torch.Tensor, weights: "EncoderWeights") -> int:
    """The products and attention :func:`encode_last` executes for rows of ``counts`` items: the same
    loops as the C code (query tiles of 6, score widths rounded up to 8, the last block's one query)."""
    D, H = weights.item_table.shape[1], weights.heads
    dh, F_dim, nb = D // H, weights.blocks[0][W1].shape[1], len(weights.blocks)
    n = counts.to(torch.int64).numpy()
    total = np.zeros(len(n), dtype=np.int64)
    ffn = 2 * 2 * F_dim * D
    # every block but the last, all n positions
    qkv = (1 if weights.folded else 3) * 2 * D * D
    total += (nb - 1) * n * (qkv + 2 * D * D + ffn)
    # their attention per head: query tiles [i0, i0 + r), r <= 6, keys i0 + r (causal) or n
    longest = int(n.max()) if len(n) else 0
    attn = np.zeros(longest + 1, dtype=np.int64)  # attention flops of one block at each length
    for length in range(1, longest + 1):
        i0 = np.arange(0, length, QUERY_TILE)
        r = np.minimum(QUERY_TILE, length - i0)
        keys = i0 + r if weights.causal else np.full_like(i0, length)
        attn[length] = H * int((2 * r * _round_up(keys, 8) * dh + 2 * r * dh * keys).sum())
    total += (nb - 1) * attn[n]
    # the last block: one query, its output and FFN; its attention over the normalised inputs u_j
    # themselves (folded: one head; otherwise per head Wk_h^T q_h, the scores, sum_j p_j u_j, Wv_h of it)
    total += 2 * D * D + 2 * D * D + ffn
    if weights.folded:
        total += 2 * _round_up(n, 8) * D + 2 * D * n
    else:
        total += H * (2 * D * dh + 2 * _round_up(n, 8) * D + 2 * D * n + 2 * D * dh)
    return int(total.sum())


@dataclass
class EncoderWeights:
    """What the kernel reads, every matrix transposed to [in, out] and contiguous.

    blocks: per block (ln1_weight, ln1_bias, w_qkv [D, 3D] or, folded, w_query [D, D], b_qkv,
    w_out [D, D], b_out, ln2_weight, ln2_bias, w1 [D, F], b1, w2 [F, D], b2)."""

    item_table: torch.Tensor  # [V, D]
    position_table: torch.Tensor  # [max_len + 1, D], row p = position p (counted from the end)
    final_weight: torch.Tensor  # [D]
    final_bias: torch.Tensor  # [D]
    blocks: list[tuple[torch.Tensor, ...]]
    heads: int
    causal: bool
    folded: bool  # one head whose key / value projections are folded into query / output (keys = values = LN(x))
    eps: float = 1e-5
    emb_scale: float = 1.0


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
    source = SOURCE.read_bytes()
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
    target = _private_dir(_cache_dir()) / f"cpu_encoder-{key}.so"
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
    for name, args in (
        ("recsys_encode_last", 8),
        ("recsys_rank_counts", 8),
        ("recsys_softmax_ce", 10),
        ("recsys_keep_mask", 6),
        ("recsys_ce_keeps_exponentials", 1),
        ("recsys_bf16_exp_colsum", 4),
    ):
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
    """Whether the kernel is built, loaded and agrees with :func:`reference_encode_last` (decided once)."""
    global _library, _state
    if _state is None:
        if os.environ.get("RECSYS_CPU_ENCODER", "kernel") == "torch":
            _state = "off"
        else:
            try:
                _library = _compile()
                _state = "ok" if _self_check() else "failed"
                if _state == "failed":
                    warnings.warn(
                        "recsys: the fused CPU encoder disagreed with its PyTorch reference; using the PyTorch path",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _state = "failed"
                warnings.warn(
                    f"recsys: fused CPU encoder unavailable ({err}); using the PyTorch path",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _state == "ok"


def left_padded_counts(item_ids: torch.Tensor) -> torch.Tensor | None:
    """[B] items per row of a left-padded [B, L] id batch (0 = padding), or None where a row is empty or
    has padding between items (the kernel's input is each row's last ``count`` columns)."""
    B, L = item_ids.shape
    not_pad = item_ids != 0
    counts = not_pad.sum(1)
    if B == 0 or L == 0 or bool((counts == 0).any()):
        return None
    expected = torch.arange(L, device=item_ids.device) >= (L - counts)[:, None]
    return counts if bool(torch.equal(not_pad, expected)) else None


def encode_last(
    item_ids: torch.Tensor, weights: EncoderWeights, counts: torch.Tensor, num_threads: int | None = None
) -> torch.Tensor:
    """[B, D] final hidden state at each row's last position, for left-padded ``item_ids`` [B, L] with
    ``counts`` [B] items per row (:func:`left_padded_counts`). Call :func:`available` first."""
    if _library is None:
        raise RuntimeError("the fused CPU encoder is not loaded (call available() first)")
    ids = item_ids.contiguous().to(torch.int64)
    B, L = ids.shape
    D = weights.item_table.shape[1]
    F_dim = weights.blocks[0][W1].shape[1]
    if L >= weights.position_table.shape[0]:
        raise ValueError(f"sequence length {L} exceeds the position table ({weights.position_table.shape[0] - 1})")
    counts = counts.to(torch.int64).contiguous()
    start = (L - counts).contiguous()
    out = torch.empty(B, D, dtype=torch.float32)
    threads = num_threads or torch.get_num_threads()
    dh = D // weights.heads
    config = (ctypes.c_int32 * 9)(
        B, L, D, weights.heads, F_dim, len(weights.blocks), int(weights.causal), int(weights.folded), threads
    )
    scalars = (ctypes.c_float * 3)(weights.eps, weights.emb_scale, 1.0 if weights.folded else dh**-0.5)
    tables = [weights.item_table, weights.position_table, weights.final_weight, weights.final_bias]
    if any(len(block) != PARAMS_PER_BLOCK for block in weights.blocks):  # the C code reads 12 per block
        raise ValueError(f"each block needs {PARAMS_PER_BLOCK} weight tensors (EncoderWeights)")
    flat = [t for block in weights.blocks for t in block]
    for t in tables + flat:
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError("encoder weights must be contiguous fp32 CPU tensors")
    table_ptrs = (ctypes.c_void_p * 4)(*(t.data_ptr() for t in tables))
    block_ptrs = (ctypes.c_void_p * len(flat))(*(t.data_ptr() for t in flat))
    rc = _library.recsys_encode_last(
        ctypes.addressof(config),
        ctypes.addressof(scalars),
        ids.data_ptr(),
        start.data_ptr(),
        counts.data_ptr(),
        ctypes.addressof(table_ptrs),
        ctypes.addressof(block_ptrs),
        out.data_ptr(),
    )
    if rc != 0:
        raise RuntimeError(f"fused CPU encoder failed (code {rc})")
    if _flop_counters:
        _add_flops(encoder_flops(counts, weights))
    return out


class ItemRanker:
    """Exact full-ranking counts by the kernel (``recsys_rank_counts``): for each user the number of
    items that score above its target, without a [V, B] score matrix (scores are made and counted in
    [6 users, 1,024 items] tiles in cache). Every score is the same chain of fp32 FMAs over the D
    dimensions wherever it is computed, so a user's rank does not depend on its block or batch; its
    scores equal torch's products to fp32 rounding (not bit for bit: a near-tie may rank differently).

    items: [V', D] fp32 (rows from ``num_items`` on are padding and never ranked, nor is item 0)."""

    def __init__(self, items: torch.Tensor, num_items: int):
        if _library is None:
            raise RuntimeError("the fused CPU kernels are not loaded (call available() first)")
        self.num_items, self.dim = num_items, items.shape[1]
        stride = -(-num_items // 16) * 16
        self.items_t = torch.zeros(self.dim, stride)  # [D, V rounded up to 16], zero columns past V
        self.items_t[:, :num_items] = items[:num_items].detach().to(torch.float32).T

    def counts(
        self,
        users: torch.Tensor,
        target_ids: torch.Tensor,
        exclude_index: tuple[torch.Tensor, torch.Tensor] | None,
        num_threads: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(above, ties) [B] each, as :func:`recsys.metrics.rank_counts_from_item_scores` defines them.
        exclude_index: (user rows, items) pairs that never outrank the target (seen items)."""
        users = users.detach().to(torch.float32).contiguous()
        B = users.shape[0]
        targets = target_ids.to(torch.int64).contiguous()
        if exclude_index is None:
            offsets, seen = torch.zeros(B + 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
        else:
            rows, seen = (t.to(torch.int64) for t in exclude_index)
            if rows.numel() > 1 and not bool((rows[1:] >= rows[:-1]).all()):
                order = torch.argsort(rows, stable=True)
                rows, seen = rows[order], seen[order]
            offsets = torch.zeros(B + 1, dtype=torch.int64)
            offsets[1:] = torch.bincount(rows, minlength=B).cumsum(0)
            seen = seen.contiguous() if seen.numel() else torch.zeros(1, dtype=torch.int64)
        above = torch.empty(B, dtype=torch.int64)
        ties = torch.empty(B, dtype=torch.int64)
        config = (ctypes.c_int32 * 5)(
            B, self.dim, self.num_items, self.items_t.shape[1], num_threads or torch.get_num_threads()
        )
        rc = _library.recsys_rank_counts(
            ctypes.addressof(config),
            users.data_ptr(),
            self.items_t.data_ptr(),
            targets.data_ptr(),
            offsets.data_ptr(),
            seen.data_ptr(),
            above.data_ptr(),
            ties.data_ptr(),
        )
        if rc != 0:
            raise RuntimeError(f"fused CPU ranking failed (code {rc})")
        if _flop_counters:  # per user: every chunk's columns rounded up to 16, and the target's 16 columns
            chunks = np.minimum(RANK_CHUNK, self.num_items - np.arange(0, self.num_items, RANK_CHUNK))
            _add_flops(B * 2 * self.dim * (int(_round_up(chunks, 16).sum()) + 16))
        return above, ties

    def ranks(
        self,
        users: torch.Tensor,
        target_ids: torch.Tensor,
        exclude_index: tuple[torch.Tensor, torch.Tensor] | None,
        tie_policy: str,
        num_threads: int | None = None,
    ) -> torch.Tensor:
        """[B] 1-based integer ranks (optimistic or pessimistic, :func:`recsys.metrics.ranks_under_policy`)."""
        from ..metrics import ranks_under_policy

        if tie_policy not in ("optimistic", "pessimistic"):
            raise ValueError(f"integer ranks need tie_policy 'optimistic' or 'pessimistic', got {tie_policy!r}")
        return ranks_under_policy(*self.counts(users, target_ids, exclude_index, num_threads), tie_policy)[0]


def ce_keeps_exponentials(padded: int, num_items: int, kept_floats: int | None = None) -> bool:
    """Whether :func:`softmax_ce` with gradients, for ``padded`` positions (a multiple of 48), keeps its
    exponentials (three products) rather than recomputing the logits (four): the kernel's own decision
    (a group of at least CE_KEPT_MIN = 192 positions, or all, must fit in ``kept_floats``, default
    CE_KEPT_FLOATS = 48 MB, x the items rounded up to 96)."""
    if _library is None:
        raise RuntimeError("the fused CPU kernels are not loaded (call available() first)")
    sizes = (ctypes.c_int64 * 3)(padded, num_items, -1 if kept_floats is None else kept_floats)
    return bool(_library.recsys_ce_keeps_exponentials(ctypes.addressof(sizes)))


def softmax_ce(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    want_grads: bool,
    num_threads: int | None = None,
    grad_items_out: torch.Tensor | None = None,
    kept_floats: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Full-softmax cross-entropy of ``hidden @ items.T`` against ``targets`` by the kernel
    (``recsys_softmax_ce``): hidden [P, D], items [V, D] (every row a candidate), targets [P] in [0, V).
    Returns the per-position losses [P] and, with ``want_grads``, the gradients of their mean with
    respect to hidden [P, D] and items [V, D] (written into ``grad_items_out`` if given: a contiguous
    fp32 [V, D]); no [P, V] logits exist (tiles of 48 x 96 in cache), only, with gradients, the
    exponentials of one group of positions at a time, at most ``kept_floats`` of them (default
    CE_KEPT_FLOATS, 48 MB; 0 always recomputes the logits instead: see :func:`ce_keeps_exponentials`)."""
    if _library is None:
        raise RuntimeError("the fused CPU kernels are not loaded (call available() first)")
    P, D = hidden.shape
    V = items.shape[0]
    padded = max(CE_POSITIONS, -(-P // CE_POSITIONS) * CE_POSITIONS)
    h = torch.zeros(padded, D, dtype=torch.float32)
    h[:P] = hidden.detach()
    h_t = h.T.contiguous()  # [D, padded]
    w = items.detach().to(torch.float32).contiguous()
    t = targets.to(torch.int64).contiguous()
    loss, lse = torch.empty(padded), torch.empty(padded)
    grad_h = torch.empty(P, D) if want_grads else None
    grad_w = None
    if want_grads:
        grad_w = torch.empty(V, D) if grad_items_out is None else grad_items_out
        if grad_w.shape != (V, D) or grad_w.dtype != torch.float32 or not grad_w.is_contiguous():
            raise ValueError("grad_items_out must be a contiguous fp32 tensor of the items' shape")
    config = (ctypes.c_int32 * 7)(
        P,
        padded,
        D,
        V,
        num_threads or torch.get_num_threads(),
        int(want_grads),
        -1 if kept_floats is None else kept_floats,
    )
    scale = (ctypes.c_float * 1)(1.0 / max(P, 1))
    rc = _library.recsys_softmax_ce(
        ctypes.addressof(config),
        ctypes.addressof(scale),
        h.data_ptr(),
        h_t.data_ptr(),
        w.data_ptr(),
        t.data_ptr(),
        loss.data_ptr(),
        lse.data_ptr(),
        grad_h.data_ptr() if want_grads else None,
        grad_w.data_ptr() if want_grads else None,
    )
    if rc != 0:
        raise RuntimeError(f"fused CPU cross-entropy failed (code {rc})")
    if _flop_counters:  # the logits once, and with gradients the two gradient products (and, where no
        # exponentials are kept, the logits recomputed)
        products = 1 if not want_grads else 3 if ce_keeps_exponentials(padded, V, kept_floats) else 4
        _add_flops(products * 2 * padded * V * D)
    return loss[:P], grad_h, grad_w


def keep_mask(
    shape: torch.Size | tuple[int, ...], threshold: int, scale: float, num_threads: int | None = None
) -> torch.Tensor:
    """fp32 dropout mask of ``shape``: ``scale`` where an element's 16 random bits are >= ``threshold``
    (so dropped with probability threshold / 65,536), else 0; the bits come from a counter-based
    generator (splitmix64) seeded by one draw of torch's global generator, so ``torch.manual_seed``
    makes masks reproducible and the number of threads does not change them."""
    if _library is None:
        raise RuntimeError("the fused CPU kernels are not loaded (call available() first)")
    out = torch.empty(shape, dtype=torch.float32)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64)) % 2**64
    config = (ctypes.c_int32 * 1)(num_threads or torch.get_num_threads())
    n, thr = (ctypes.c_int64 * 1)(out.numel()), (ctypes.c_int64 * 1)(threshold)
    seed_arg, scale_arg = (ctypes.c_uint64 * 1)(seed), (ctypes.c_float * 1)(scale)
    rc = _library.recsys_keep_mask(
        ctypes.addressof(config),
        ctypes.addressof(n),
        ctypes.addressof(thr),
        ctypes.addressof(seed_arg),
        ctypes.addressof(scale_arg),
        out.data_ptr(),
    )
    if rc != 0:
        raise RuntimeError(f"fused CPU dropout mask failed (code {rc})")
    return out


# a column sum at or above this came from a clamped input (e^88 ~ 2^127): the caller redoes it shifted
BF16_EXP_LARGEST_SUM = 2.0**120


def bf16_exp_column_sums(
    block: torch.Tensor, shift: torch.Tensor | None = None, num_threads: int | None = None
) -> torch.Tensor:
    """``block`` [V, c] bf16 (contiguous, CPU) replaced by ``exp(block - shift)`` rounded to bf16 (to nearest,
    ties to even), in one multi-threaded pass; returns the [c] fp32 column sums of the unrounded
    exponentials (the same bits for any number of threads). ``shift``: [c] fp32 per column, or None.
    Inputs are clamped to [-87, 88]: a sum >= ``BF16_EXP_LARGEST_SUM`` means a clamped value, redo shifted.
    The reference is ``(block.float() - shift).exp()`` (tests)."""
    if _library is None:
        raise RuntimeError("the fused CPU kernels are not loaded (call available() first)")
    if block.dtype != torch.bfloat16 or block.device.type != "cpu" or block.dim() != 2 or not block.is_contiguous():
        raise ValueError("the kernel's bf16 exponentials take a contiguous 2-D bf16 CPU tensor")
    rows, cols = block.shape
    col_sum = torch.empty(cols, dtype=torch.float32)
    if rows == 0 or cols == 0:
        return col_sum.zero_()
    if shift is not None:
        shift = shift.to(torch.float32).contiguous()
        if shift.shape != (cols,):
            raise ValueError(f"shift must hold one value per column ({cols}), got {tuple(shift.shape)}")
    config = (ctypes.c_int64 * 3)(rows, cols, num_threads or torch.get_num_threads())
    rc = _library.recsys_bf16_exp_colsum(
        ctypes.addressof(config), block.data_ptr(), shift.data_ptr() if shift is not None else None, col_sum.data_ptr()
    )
    if rc != 0:
        raise RuntimeError(f"fused CPU bf16 exponentials failed (code {rc})")
    return col_sum


def reference_encode_last(item_ids: torch.Tensor, weights: EncoderWeights) -> torch.Tensor:
    """The kernel's function in PyTorch ops, [B, L] left-padded ids -> [B, D] (every position through
    every block; padding keys masked)."""
    B, L = item_ids.shape
    D = weights.item_table.shape[1]
    H, dh = weights.heads, D // weights.heads
    not_pad = item_ids != 0  # [B, L]
    positions = torch.arange(L, 0, -1).expand(B, L) * not_pad
    x = weights.item_table[item_ids] * weights.emb_scale + weights.position_table[positions]  # [B, L, D]
    allowed = not_pad[:, None, :].expand(B, L, L)  # [B, query, key]
    if weights.causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool).tril()
    allowed = allowed | torch.eye(L, dtype=torch.bool)  # padding queries (never read) see themselves
    for ln1_w, ln1_b, w_qkv, b_qkv, w_out, b_out, ln2_w, ln2_b, w1, b1, w2, b2 in weights.blocks:
        u = F.layer_norm(x, (D,), ln1_w, ln1_b, weights.eps)
        if weights.folded:
            q, k, v, scale = u @ w_qkv + b_qkv, u, u, 1.0
        else:
            q, k, v = (u @ w_qkv + b_qkv).split(D, dim=-1)
            scale = dh**-0.5
        q, k, v = (t.view(B, L, H, dh).transpose(1, 2) for t in (q, k, v))  # [B, H, L, dh]
        scores = (q @ k.transpose(-1, -2)) * scale
        a = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ v
        x = x + a.transpose(1, 2).reshape(B, L, D) @ w_out + b_out
        x = x + F.gelu(F.layer_norm(x, (D,), ln2_w, ln2_b, weights.eps) @ w1 + b1) @ w2 + b2
    return F.layer_norm(x[:, -1], (D,), weights.final_weight, weights.final_bias, weights.eps)


def random_weights(
    num_items: int,
    max_len: int,
    dim: int,
    heads: int,
    ffn: int,
    num_blocks: int,
    causal: bool,
    folded: bool,
    generator: torch.Generator | None = None,
) -> EncoderWeights:
    """Random weights of the kernel's shapes (self check, tests)."""

    def rand(*shape, std=0.3):
        return torch.randn(*shape, generator=generator) * std

    blocks = []
    width = dim if folded else 3 * dim
    for _ in range(num_blocks):
        blocks.append(
            (
                1 + rand(dim, std=0.1),
                rand(dim, std=0.1),
                rand(dim, width),
                rand(width, std=0.1),
                rand(dim, dim),
                rand(dim, std=0.1),
                1 + rand(dim, std=0.1),
                rand(dim, std=0.1),
                rand(dim, ffn),
                rand(ffn, std=0.1),
                rand(ffn, dim),
                rand(dim, std=0.1),
            )
        )
    return EncoderWeights(
        rand(num_items, dim, std=1.0),
        rand(max_len + 1, dim, std=1.0),
        1 + rand(dim, std=0.1),
        rand(dim, std=0.1),
        blocks,
        heads,
        causal,
        folded,
        emb_scale=1.5,
    )


def _self_check() -> bool:
    """The kernel against the reference on small random encoders, both attentions, folded or not."""
    gen = torch.Generator().manual_seed(0)
    for causal, folded, heads in ((True, True, 1), (False, False, 2)):
        weights = random_weights(50, 12, 16, heads, 24, 2, causal, folded, gen)
        counts = torch.tensor([1, 5, 12, 9])
        ids = torch.randint(1, 50, (4, 12), generator=gen) * (torch.arange(12) >= 12 - counts[:, None])
        got = encode_last(ids, weights, counts, num_threads=2)
        if not torch.allclose(got, reference_encode_last(ids, weights), rtol=1e-4, atol=1e-4):
            return False
    return True
