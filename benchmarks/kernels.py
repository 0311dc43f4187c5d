"""HSTU attention: fused Triton kernel vs PyTorch reference vs torch.compile(reference) vs SDPA softmax.

    python benchmarks/kernels.py [--lengths 4096 1024 8192 256] [--tokens 131072] [--heads 4] [--dim 128]
                                 [--dtype bf16] [--budget-s 360] [--log-results]

For each maximum length N: B = tokens / N sequences with jagged lengths uniform in [N/2, N], heads 4,
head dim 128, bf16; forward and forward+backward milliseconds, TFLOP/s (causal pairs only; backward
counted as 2.5x the forward, the FlashAttention convention) and peak memory. Rows: the Triton kernel
with the position and time bias fused in and without bias, the PyTorch reference (with bias),
torch.compile of the reference (dynamic shapes; skipped once the time budget is spent, since its
compilation dominates a short GPU rental) and SDPA running ordinary causal softmax attention on the
same batch padded to N (the speed a user gets for ordinary attention; its TFLOP/s count the padded
pairs it computes). Parity of the kernel with the reference is checked first on the same batch.
Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recsys.kernels.hstu_attention import attention_flops, hstu_attention_reference
from recsys.results import append_record, git_commit, make_record


def bench(fn, warmup: int = 3, reps: int = 10) -> tuple[float, float]:
    """(milliseconds per call, peak MB) with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps, torch.cuda.max_memory_allocated() / 2**20


def make_batch(N: int, tokens: int, H: int, D: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = max(1, tokens // N)
    lengths = torch.randint(N // 2, N + 1, (B,), generator=g)
    offsets = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).cuda()
    T = int(lengths.sum())
    q, k, v = (torch.randn(T, H, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    times = torch.cumsum(torch.randint(0, 3600, (T,), generator=g), 0).cuda()
    bias = dict(
        position_bias=(0.1 * torch.randn(N, generator=g)).cuda().requires_grad_(True),
        time_bias=(0.1 * torch.randn(129, generator=g)).cuda().requires_grad_(True),
        key_times=times,
        query_times=times + 60,
    )
    return lengths, offsets, q, k, v, bias


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 1024, 8192, 256])
    p.add_argument("--tokens", type=int, default=131072)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument(
        "--budget-s",
        type=float,
        default=360.0,
        help="skip torch.compile of the reference once this many seconds have passed",
    )
    p.add_argument(
        "--snapshot",
        default=None,
        help="rewrite this file with the record so far after each N (a short GPU rental may end mid-run)",
    )
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure (the kernel's parity tests run on CPU in tests/kernels)")
        return 1
    from recsys.kernels.hstu_attention_triton import hstu_attention_triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    compiled_ref = torch.compile(hstu_attention_reference, dynamic=True)
    rows = []
    started = time.perf_counter()
    command = "python benchmarks/kernels.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--snapshot")
    )

    def record() -> dict:
        return make_record(
            "kernels",
            commit=git_commit(),
            command=command,
            dtype=args.dtype,
            heads=args.heads,
            dim=args.dim,
            tokens=args.tokens,
            rows=rows,
        )

    print(
        f"GPU: {torch.cuda.get_device_name(0)}; heads {args.heads}, dim {args.dim}, {args.dtype}, "
        f"~{args.tokens:,} tokens per batch"
    )
    print(f"{'N':>6} {'impl':>14} {'fwd ms':>9} {'fwd TF/s':>9} {'f+b ms':>9} {'f+b TF/s':>9} {'peak MB':>9}")
    for N in args.lengths:
        lengths, offsets, q, k, v, bias = make_batch(N, args.tokens, args.heads, args.dim, dtype)
        fwd_flops = attention_flops(lengths, args.heads, args.dim, args.dim, causal=True)
        errors = {}
        for name, kw in (("triton", bias), ("triton no bias", {})):
            out = hstu_attention_triton(q, k, v, offsets, N, max_len=N, **kw)
            ref = hstu_attention_reference(q.float(), k.float(), v.float(), offsets, N, **kw)
            errors[name] = (out.float() - ref).abs().max().item() / ref.abs().max().clamp(min=1e-6).item()
            del out, ref
        grad = torch.randn_like(q)
        B = len(lengths)
        dense = [
            torch.randn(B, args.heads, N, args.dim, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)
        ]
        impls = {
            "triton": lambda: hstu_attention_triton(q, k, v, offsets, N, max_len=N, **bias),
            "triton no bias": lambda: hstu_attention_triton(q, k, v, offsets, N, max_len=N),
            "sdpa softmax": lambda: F.scaled_dot_product_attention(*dense, is_causal=True),
            "reference": lambda: hstu_attention_reference(q, k, v, offsets, N, **bias),
            "compiled ref": lambda: compiled_ref(q, k, v, offsets, N, **bias),
        }
        for name, fn in impls.items():
            row = {"N": N, "batch": B, "impl": name, "max_rel_error_vs_reference": errors.get(name)}
            if name == "compiled ref" and time.perf_counter() - started > args.budget_s:
                row["error"] = "skipped: time budget spent"
                print(f"{N:>6} {name:>14}   skipped (time budget spent)", flush=True)
                rows.append(row)
                continue
            try:
                with torch.no_grad():
                    row["fwd_ms"], row["fwd_peak_mb"] = bench(fn)
                g = grad if name != "sdpa softmax" else torch.randn_like(dense[0])
                row["fwdbwd_ms"], row["fwdbwd_peak_mb"] = bench(lambda: fn().backward(g))
                flops = (
                    fwd_flops
                    if name != "sdpa softmax"
                    else attention_flops(torch.full((B,), N), args.heads, args.dim, args.dim, causal=True)
                )
                row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                row["fwdbwd_tflops"] = 3.5 * flops / row["fwdbwd_ms"] / 1e9
                print(
                    f"{N:>6} {name:>14} {row['fwd_ms']:9.2f} {row['fwd_tflops']:9.1f} {row['fwdbwd_ms']:9.2f} "
                    f"{row['fwdbwd_tflops']:9.1f} {row['fwdbwd_peak_mb']:9.0f}",
                    flush=True,
                )
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                print(f"{N:>6} {name:>14}   out of memory", flush=True)
            except Exception as err:  # a failed impl must not hide the others' numbers
                row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                print(f"{N:>6} {name:>14}   failed: {row['error']}", flush=True)
            torch.cuda.empty_cache()
            rows.append(row)
        print(
            f"{N:>6} triton vs fp32 reference, max relative error: "
            + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()),
            flush=True,
        )
        if args.snapshot:
            tmp = Path(args.snapshot + ".tmp")  # write then rename: a killed run leaves the last whole record
            tmp.write_text(json.dumps(record()) + "\n")
            os.replace(tmp, args.snapshot)
        torch.cuda.empty_cache()
    print(f"\nsummary ({time.perf_counter() - started:.0f} s)")
    print(f"{'N':>6} {'impl':>14} {'fwd ms':>9} {'fwd TF/s':>9} {'f+b ms':>9} {'f+b TF/s':>9} {'peak MB':>9}")
    for row in sorted(rows, key=lambda r: r["N"]):
        if "fwdbwd_ms" in row:
            print(
                f"{row['N']:>6} {row['impl']:>14} {row['fwd_ms']:9.2f} {row['fwd_tflops']:9.1f} "
                f"{row['fwdbwd_ms']:9.2f} {row['fwdbwd_tflops']:9.1f} {row['fwdbwd_peak_mb']:9.0f}"
            )
        else:
            print(f"{row['N']:>6} {row['impl']:>14}   {row.get('error', '')}")
    if args.log_results:
        append_record(record(), args.log_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
