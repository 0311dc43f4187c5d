"""Causal softmax attention on CPU: SDPA (its flash kernel, ``is_causal``) against full masked attention
and ``recsys.models.layers.attention.chunked_causal_attention`` (what SASRec uses on CPU), forward, no gradient.

    python benchmarks/attention_cpu.py [--threads 2] [--log-results]

Shapes: SASRec's evaluation blocks on ML-1M (1 head of 64, histories of 200 and of 92 positions, 8,192
positions per call as the evaluator slices them) and a training batch of Beauty (128 x 50, 1 head).
Prints milliseconds (median of 9), the speed-up over SDPA and the largest difference from SDPA's output.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from cpu_gemm import median_seconds  # benchmarks/ is the script's folder: on sys.path

from recsys.models.layers.attention import chunked_causal_attention
from recsys.results import append_record, benchmark_command, make_record


def masked(q, k, v):
    L = q.shape[-2]
    weights = (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    weights.masked_fill_(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return weights.softmax(-1) @ v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    print(
        f"| batch x heads x length x dim ({args.threads} threads) | implementation | ms | vs SDPA | max abs. difference |"
    )
    print("|---|---|---|---|---|")
    for B, H, L, d in [(40, 1, 200, 64), (89, 1, 92, 64), (128, 1, 50, 64)]:
        q, k, v = (torch.randn(B, H, L, d, generator=g) for _ in range(3))
        reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        impls = {
            "SDPA is_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "full masked": lambda: masked(q, k, v),
            "chunked (32 queries)": lambda: chunked_causal_attention(q, k, v),
        }
        sdpa_ms = None
        for name, fn in impls.items():
            ms = median_seconds(fn) * 1e3
            sdpa_ms = sdpa_ms or ms
            diff = float((fn() - reference).abs().max())
            rows.append(
                {
                    "shape": f"{B} x {H} x {L} x {d}",
                    "impl": name,
                    "ms": ms,
                    "speedup": sdpa_ms / ms,
                    "max_abs_diff": diff,
                }
            )
            print(f"| {B} x {H} x {L} x {d} | {name} | {ms:.2f} | {sdpa_ms / ms:.2f}x | {diff:.1e} |", flush=True)
    if args.log_results:
        append_record(
            make_record(
                "attention_cpu", command=benchmark_command("attention_cpu", argv), threads=args.threads, rows=rows
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
