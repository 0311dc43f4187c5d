"""Fused HSTU attention in Triton: forward and backward on jagged sequences.

Same math as :func:`recsys.kernels.hstu_attention.hstu_attention_reference` (see there): per sequence
and head, ``out_i = sum_{j<=i} SiLU(q_i.k_j + pos[i-j] + time[bucket(tq_i - tk_j)]) / N * v_j``.

Forward: one program per (query block, sequence x head) walks the key blocks up to the diagonal,
computes the scores, bias, SiLU, 1/N and causal mask in registers and accumulates ``A V`` in fp32:
no N x N tensor ever reaches memory and, without a softmax, there is no running max or row sum.
Backward recomputes the scores: one kernel per key block accumulates dK and dV over the query blocks
below the diagonal; one per query block accumulates dQ. The bias tables' gradients are reduced inside
each tile before they reach memory: the position table's by summing the tile's diagonals (the tile is
skewed with ``tl.gather`` so that each diagonal becomes a column; one atomic add per diagonal), the
time table's by summing the tile once per time bucket present in it (a tile spans few buckets; one
atomic add per bucket). Inputs may be fp32, fp16 or bf16; accumulation is fp32, and fp32 dot products
run in full fp32 precision (no TF32), as torch's own fp32 matmuls do by default.

Runs on CUDA GPUs, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI checks parity).
Importing this module needs ``triton``; the dispatcher only imports it when it is installed.

Why one file of this length: it is one op, its forward and the two backward kernels, which share the
score, bias and mask code and the tile configurations; split apart, a change to the scores would have
to be made in three places that must stay bit-for-bit alike.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG_BUCKET_DIVISOR = tl.constexpr(0.301)  # a global a kernel reads must be a constexpr


def _configs(extra=()):
    if INTERPRET:  # one small configuration: the interpreter runs every program in numpy
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "SKEW": 32}, num_warps=1)]
    if os.environ.get("RECSYS_TRITON_AUTOTUNE") == "0":  # one configuration, no tuning (quick tests)
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "SKEW": 128}, num_warps=4, num_stages=2)]
    # SKEW: the width of a skewed tile (one column per diagonal), a power of two >= BLOCK_M + BLOCK_N - 1
    shapes = [(64, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (128, 128, 8, 2), *extra]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "SKEW": 2 * max(m, n)}, num_warps=w, num_stages=s)
        for m, n, w, s in shapes
    ]


def _dkdv_prune(configs, named_args, **kwargs):
    """With bias gradients, the dK/dV kernel keeps query blocks of <= 64 rows: its skewed tile is
    BLOCK_M x SKEW fp32 values, and Triton 3.6's LLVM aborts compiling (128, 64, 4 warps, 3 stages)
    with them (seen on an H200; reproduced on CPU by compiling for sm_90)."""
    if kwargs.get("HAS_POS") or kwargs.get("HAS_TIME"):
        small = [c for c in configs if c.kwargs["BLOCK_M"] <= 64]
        return small or configs
    return configs


@triton.jit
def _program(offsets_ptr, H, LAST_FIRST: tl.constexpr):
    """(block index along the sequence, head, first token, length) of this program's sequence x head.
    LAST_FIRST: programs start with the last block, whose causal loop is the longest (load balance)."""
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    seq_start = tl.load(offsets_ptr + b)
    block = tl.program_id(0)
    if LAST_FIRST:
        block = tl.num_programs(0) - 1 - block
    return block, pid_bh % H, seq_start, tl.load(offsets_ptr + b + 1) - seq_start


@triton.jit
def _tile(ptr, seq_start, rows, seq_len, stride_t, h, stride_h, cols, dim):
    """[len(rows), len(cols)] tile of head h of a jagged [T, H, dim] tensor; zeros outside the sequence."""
    return tl.load(
        ptr + (seq_start + rows)[:, None] * stride_t + h * stride_h + cols[None, :],
        mask=(rows[:, None] < seq_len) & (cols[None, :] < dim),
        other=0.0,
    )


@triton.jit
def _time_bucket(offs_m, offs_n, seq_start, seq_len, qt_ptr, kt_ptr, num_buckets):
    """[M, N] log time-gap bucket of each (query, key) pair: floor(ln(max(|gap|, 1)) / 0.301)."""
    tq = tl.load(qt_ptr + seq_start + offs_m, mask=offs_m < seq_len, other=0)
    tk = tl.load(kt_ptr + seq_start + offs_n, mask=offs_n < seq_len, other=0)
    gap = tq[:, None] - tk[None, :]
    gap = tl.maximum(tl.where(gap < 0, -gap, gap), 1).to(tl.float32)
    bucket = tl.floor(tl.log(gap) / LOG_BUCKET_DIVISOR).to(tl.int32)
    return tl.minimum(tl.maximum(bucket, 0), num_buckets - 1)


@triton.jit
def _scores(
    q,
    k,
    offs_m,
    offs_n,
    seq_start,
    seq_len,
    pos_ptr,
    num_pos,
    time_ptr,
    num_buckets,
    qt_ptr,
    kt_ptr,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    PREC: tl.constexpr,
):
    """[BLOCK_M, BLOCK_N] fp32 scores q.k + relative bias, and the causal / length mask."""
    s = tl.dot(q, tl.trans(k), out_dtype=tl.float32, input_precision=PREC)
    if HAS_POS:
        rel = tl.minimum(tl.maximum(offs_m[:, None] - offs_n[None, :], 0), num_pos - 1)
        s += tl.load(pos_ptr + rel).to(tl.float32)
    if HAS_TIME:
        bucket = _time_bucket(offs_m, offs_n, seq_start, seq_len, qt_ptr, kt_ptr, num_buckets)
        s += tl.load(time_ptr + bucket).to(tl.float32)
    mask = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] < seq_len) & (offs_n[None, :] < seq_len)
    return s, mask


@triton.autotune(configs=_configs(), key=["D", "DV", "N_BLOCKS_HINT", "HAS_POS", "HAS_TIME"])
@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    OUT,
    offsets_ptr,
    pos_ptr,
    time_ptr,
    qt_ptr,
    kt_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    num_pos,
    num_buckets,
    inv_n,
    H,
    N_BLOCKS_HINT,
    D: tl.constexpr,
    DV: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SKEW: tl.constexpr,
):
    block, h, seq_start, seq_len = _program(offsets_ptr, H, True)
    start_m = block * BLOCK_M
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    q = _tile(Q, seq_start, offs_m, seq_len, stride_qt, h, stride_qh, offs_d, D)
    acc = tl.zeros([BLOCK_M, DV_PAD], dtype=tl.float32)
    end_n = tl.minimum(seq_len, start_m + BLOCK_M)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K, seq_start, offs_n, seq_len, stride_kt, h, stride_kh, offs_d, D)
        v = _tile(V, seq_start, offs_n, seq_len, stride_vt, h, stride_vh, offs_dv, DV)
        s, mask = _scores(
            q,
            k,
            offs_m,
            offs_n,
            seq_start,
            seq_len,
            pos_ptr,
            num_pos,
            time_ptr,
            num_buckets,
            qt_ptr,
            kt_ptr,
            HAS_POS,
            HAS_TIME,
            PREC,
        )
        a = s * tl.sigmoid(s) * inv_n
        a = tl.where(mask, a, 0.0)
        acc += tl.dot(a.to(v.dtype), v, out_dtype=tl.float32, input_precision=PREC)
    tl.store(
        OUT + (seq_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_dv[None, :],
        acc.to(OUT.dtype.element_ty),
        mask=(offs_m[:, None] < seq_len) & (offs_dv[None, :] < DV),
    )


@triton.jit
def _dscores(
    q,
    k,
    v,
    do,
    offs_m,
    offs_n,
    seq_start,
    seq_len,
    pos_ptr,
    num_pos,
    time_ptr,
    num_buckets,
    qt_ptr,
    kt_ptr,
    inv_n,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    PREC: tl.constexpr,
):
    """Recomputed attention a [M, N] and the gradient of the pre-activation scores ds [M, N]."""
    s, mask = _scores(
        q,
        k,
        offs_m,
        offs_n,
        seq_start,
        seq_len,
        pos_ptr,
        num_pos,
        time_ptr,
        num_buckets,
        qt_ptr,
        kt_ptr,
        HAS_POS,
        HAS_TIME,
        PREC,
    )
    sig = tl.sigmoid(s)
    a = tl.where(mask, s * sig * inv_n, 0.0)
    da = tl.dot(do, tl.trans(v), out_dtype=tl.float32, input_precision=PREC)  # [M, N]
    ds = tl.where(mask, da * sig * (1.0 + s * (1.0 - sig)) * inv_n, 0.0)
    return a, ds, mask


@triton.jit
def _position_bias_grad(
    ds, start_m, start_n, dpos_ptr, num_pos, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SKEW: tl.constexpr
):
    """Add the tile's diagonal sums of ds to the position table's gradient: one atomic add per diagonal.
    Column t of the skewed tile holds diagonal i - j = t - (BLOCK_N - 1), i.e. relative position
    start_m - start_n + t - (BLOCK_N - 1)."""
    rows = tl.arange(0, BLOCK_M)
    diag = tl.arange(0, SKEW)
    cols = rows[:, None] - diag[None, :] + (BLOCK_N - 1)  # [M, SKEW]: key column on that diagonal
    inside = (cols >= 0) & (cols < BLOCK_N)
    skewed = tl.gather(ds, tl.minimum(tl.maximum(cols, 0), BLOCK_N - 1), 1)
    sums = tl.sum(tl.where(inside, skewed, 0.0), axis=0)  # [SKEW]
    rel = start_m - start_n + diag - (BLOCK_N - 1)
    keep = (diag < BLOCK_M + BLOCK_N - 1) & (rel >= 0)
    tl.atomic_add(dpos_ptr + tl.minimum(tl.maximum(rel, 0), num_pos - 1), sums, mask=keep)


@triton.jit
def _time_bias_grad(ds, mask, offs_m, offs_n, seq_start, seq_len, dtime_ptr, num_buckets, qt_ptr, kt_ptr):
    """Add the tile's per-bucket sums of ds to the time table's gradient: one atomic add per bucket
    present in the tile (nearby tokens span few log buckets)."""
    bucket = _time_bucket(offs_m, offs_n, seq_start, seq_len, qt_ptr, kt_ptr, num_buckets)
    first = tl.min(tl.where(mask, bucket, num_buckets))
    last = tl.max(tl.where(mask, bucket, -1))
    for b in range(first, last + 1):
        tl.atomic_add(dtime_ptr + b, tl.sum(tl.where(mask & (bucket == b), ds, 0.0)))


@triton.autotune(
    configs=_configs(extra=[(64, 128, 8, 2), (64, 64, 8, 2)]),
    key=["D", "DV", "N_BLOCKS_HINT", "HAS_POS", "HAS_TIME"],
    reset_to_zero=["DPOS", "DTIME"],
    prune_configs_by={"early_config_prune": _dkdv_prune},
)
@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV_,
    DPOS,
    DTIME,
    offsets_ptr,
    pos_ptr,
    time_ptr,
    qt_ptr,
    kt_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    num_pos,
    num_buckets,
    inv_n,
    H,
    N_BLOCKS_HINT,
    D: tl.constexpr,
    DV: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SKEW: tl.constexpr,
):
    # natural order: the first key blocks have the most query blocks below them and start first
    block, h, seq_start, seq_len = _program(offsets_ptr, H, False)
    start_n = block * BLOCK_N
    if start_n >= seq_len:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    k = _tile(K, seq_start, offs_n, seq_len, stride_kt, h, stride_kh, offs_d, D)
    v = _tile(V, seq_start, offs_n, seq_len, stride_vt, h, stride_vh, offs_dv, DV)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], dtype=tl.float32)
    first_m = (start_n // BLOCK_M) * BLOCK_M  # query blocks on or below the diagonal
    for start_m in range(first_m, seq_len, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _tile(Q, seq_start, offs_m, seq_len, stride_qt, h, stride_qh, offs_d, D)
        do = _tile(DO, seq_start, offs_m, seq_len, stride_dot, h, stride_doh, offs_dv, DV)
        a, ds, mask = _dscores(
            q,
            k,
            v,
            do,
            offs_m,
            offs_n,
            seq_start,
            seq_len,
            pos_ptr,
            num_pos,
            time_ptr,
            num_buckets,
            qt_ptr,
            kt_ptr,
            inv_n,
            HAS_POS,
            HAS_TIME,
            PREC,
        )
        dv += tl.dot(tl.trans(a).to(do.dtype), do, out_dtype=tl.float32, input_precision=PREC)
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, out_dtype=tl.float32, input_precision=PREC)
        if HAS_POS:
            _position_bias_grad(ds, start_m, start_n, DPOS, num_pos, BLOCK_M, BLOCK_N, SKEW)
        if HAS_TIME:
            _time_bias_grad(ds, mask, offs_m, offs_n, seq_start, seq_len, DTIME, num_buckets, qt_ptr, kt_ptr)
    tl.store(
        DK + (seq_start + offs_n)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=(offs_n[:, None] < seq_len) & (offs_d[None, :] < D),
    )
    tl.store(
        DV_ + (seq_start + offs_n)[:, None] * stride_vt + h * stride_vh + offs_dv[None, :],
        dv.to(DV_.dtype.element_ty),
        mask=(offs_n[:, None] < seq_len) & (offs_dv[None, :] < DV),
    )


@triton.autotune(configs=_configs(), key=["D", "DV", "N_BLOCKS_HINT", "HAS_POS", "HAS_TIME"])
@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    offsets_ptr,
    pos_ptr,
    time_ptr,
    qt_ptr,
    kt_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    num_pos,
    num_buckets,
    inv_n,
    H,
    N_BLOCKS_HINT,
    D: tl.constexpr,
    DV: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SKEW: tl.constexpr,
):
    block, h, seq_start, seq_len = _program(offsets_ptr, H, True)
    start_m = block * BLOCK_M
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    q = _tile(Q, seq_start, offs_m, seq_len, stride_qt, h, stride_qh, offs_d, D)
    do = _tile(DO, seq_start, offs_m, seq_len, stride_dot, h, stride_doh, offs_dv, DV)
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    end_n = tl.minimum(seq_len, start_m + BLOCK_M)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K, seq_start, offs_n, seq_len, stride_kt, h, stride_kh, offs_d, D)
        v = _tile(V, seq_start, offs_n, seq_len, stride_vt, h, stride_vh, offs_dv, DV)
        _, ds, _ = _dscores(
            q,
            k,
            v,
            do,
            offs_m,
            offs_n,
            seq_start,
            seq_len,
            pos_ptr,
            num_pos,
            time_ptr,
            num_buckets,
            qt_ptr,
            kt_ptr,
            inv_n,
            HAS_POS,
            HAS_TIME,
            PREC,
        )
        dq += tl.dot(ds.to(k.dtype), k, out_dtype=tl.float32, input_precision=PREC)
    tl.store(
        DQ + (seq_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=(offs_m[:, None] < seq_len) & (offs_d[None, :] < D),
    )


def _pad(dim: int) -> int:
    """Block width of a head dimension: a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(dim))


def _precision(x: torch.Tensor) -> str:
    """Dot-product precision: full fp32 for fp32 inputs (no silent TF32), tensor-core native otherwise."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


class HSTUAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, seq_offsets, max_seq_len, position_bias, time_bias, key_times, query_times, max_len):
        T, H, D = q.shape
        DV = v.shape[-1]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty(T, H, DV, device=q.device, dtype=q.dtype)
        B = seq_offsets.numel() - 1
        has_pos, has_time = position_bias is not None, time_bias is not None
        dummy = torch.zeros(1, device=q.device, dtype=torch.float32)
        dummy_t = torch.zeros(1, device=q.device, dtype=torch.int64)
        pos = position_bias.contiguous() if has_pos else dummy
        tb = time_bias.contiguous() if has_time else dummy
        qt = query_times.contiguous() if has_time else dummy_t
        kt = key_times.contiguous() if has_time else dummy_t
        offsets = seq_offsets.to(torch.int64).contiguous()
        hint = triton.next_power_of_2(max(max_len, 1))
        if T and B:
            grid = lambda meta: (triton.cdiv(max_len, meta["BLOCK_M"]), B * H)  # noqa: E731
            _fwd_kernel[grid](
                q,
                k,
                v,
                out,
                offsets,
                pos,
                tb,
                qt,
                kt,
                q.stride(0),
                q.stride(1),
                k.stride(0),
                k.stride(1),
                v.stride(0),
                v.stride(1),
                out.stride(0),
                out.stride(1),
                pos.numel(),
                tb.numel(),
                1.0 / max_seq_len,
                H,
                hint,
                D=D,
                DV=DV,
                D_PAD=_pad(D),
                DV_PAD=_pad(DV),
                HAS_POS=has_pos,
                HAS_TIME=has_time,
                PREC=_precision(q),
            )
        ctx.save_for_backward(q, k, v, offsets, pos, tb, qt, kt)
        ctx.meta = (max_seq_len, max_len, has_pos, has_time)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, offsets, pos, tb, qt, kt = ctx.saved_tensors
        max_seq_len, max_len, has_pos, has_time = ctx.meta
        T, H, D = q.shape
        DV = v.shape[-1]
        B = offsets.numel() - 1
        dout = dout.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dpos = torch.zeros(pos.numel(), device=q.device, dtype=torch.float32)
        dtime = torch.zeros(tb.numel(), device=q.device, dtype=torch.float32)
        hint = triton.next_power_of_2(max(max_len, 1))
        if T and B:
            common = (
                offsets,
                pos,
                tb,
                qt,
                kt,
                q.stride(0),
                q.stride(1),
                k.stride(0),
                k.stride(1),
                v.stride(0),
                v.stride(1),
                dout.stride(0),
                dout.stride(1),
                pos.numel(),
                tb.numel(),
                1.0 / max_seq_len,
                H,
                hint,
            )
            grid_n = lambda meta: (triton.cdiv(max_len, meta["BLOCK_N"]), B * H)  # noqa: E731
            _bwd_dkdv_kernel[grid_n](
                q,
                k,
                v,
                dout,
                dk,
                dv,
                dpos,
                dtime,
                *common,
                D=D,
                DV=DV,
                D_PAD=_pad(D),
                DV_PAD=_pad(DV),
                HAS_POS=has_pos,
                HAS_TIME=has_time,
                PREC=_precision(q),
            )
            grid_m = lambda meta: (triton.cdiv(max_len, meta["BLOCK_M"]), B * H)  # noqa: E731
            _bwd_dq_kernel[grid_m](
                q,
                k,
                v,
                dout,
                dq,
                *common,
                D=D,
                DV=DV,
                D_PAD=_pad(D),
                DV_PAD=_pad(DV),
                HAS_POS=has_pos,
                HAS_TIME=has_time,
                PREC=_precision(q),
            )
        return (
            dq,
            dk,
            dv,
            None,
            None,
            dpos.to(pos.dtype) if has_pos else None,
            dtime.to(tb.dtype) if has_time else None,
            None,
            None,
            None,
        )


def hstu_attention_triton(
    q: torch.Tensor,  # [T, H, Dqk]
    k: torch.Tensor,  # [T, H, Dqk]
    v: torch.Tensor,  # [T, H, Dv]
    seq_offsets: torch.Tensor,  # [B + 1]
    max_seq_len: int,
    position_bias: torch.Tensor | None = None,  # [max_seq_len]
    time_bias: torch.Tensor | None = None,  # [num_buckets]
    key_times: torch.Tensor | None = None,  # [T]
    query_times: torch.Tensor | None = None,  # [T]
    causal: bool = True,
    max_len: int | None = None,
    **_unused: object,
) -> torch.Tensor:  # [T, H, Dv]
    """The fused kernel; same arguments as the reference (``causal`` must be True). ``max_len`` (the
    longest sequence in the batch) sizes the grid; computed from ``seq_offsets`` when not given."""
    if not causal:
        raise ValueError("the Triton HSTU kernel is causal only")
    if max_len is None:
        max_len = int((seq_offsets[1:] - seq_offsets[:-1]).max()) if seq_offsets.numel() > 1 else 0
    return HSTUAttentionTriton.apply(
        q, k, v, seq_offsets, max_seq_len, position_bias, time_bias, key_times, query_times, max_len
    )
