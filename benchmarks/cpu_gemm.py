"""fp32 products on CPU: torch's own (``torch.mm`` / ``F.linear``, i.e. the BLAS torch was built with)
against oneDNN (``recsys.kernels.onednn``), at the shapes our models compute.

    python benchmarks/cpu_gemm.py [--threads 2] [--log-results]

Shapes: the encoders' linear layers on 8,192 packed positions (hidden 64: the attention's q/k/v and
output projections, a 4x feed-forward layer) forward and input gradient; the full CE's three products
for one block of 128 positions against Beauty's 54,542 items (logits [V, c], hidden-state gradient
[D, V] @ [V, c], item gradient [V, c] @ [c, D]); a 2,048^3 product. Prints GFLOP/s of both, their ratio
and the largest difference between the two results relative to the largest entry (fp32 rounding).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from recsys.kernels import onednn
from recsys.results import append_record, benchmark_command, make_record

V, C, D, T = 54_542, 128, 64, 8192


def median_seconds(fn, repeats: int = 9) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]


def cases() -> list[tuple[str, float, callable, callable]]:
    """(name, GFLOP, torch's product, oneDNN's product): each pair computes the same matrix."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    out = []
    for name, n_in, n_out in [
        ("q/k/v projection", D, 3 * D),
        ("output projection", D, D),
        ("feed-forward in (4x)", D, 4 * D),
        ("feed-forward out (4x)", 4 * D, D),
    ]:
        x, w, b, grad = rand(T, n_in), rand(n_out, n_in), rand(n_out), rand(T, n_out)
        flops = 2 * T * n_in * n_out / 1e9
        out.append(
            (
                f"linear {name}, {T} x {n_in} -> {n_out}",
                flops,
                lambda x=x, w=w, b=b: F.linear(x, w, b),
                lambda x=x, w=w, b=b: onednn.linear(x, w, b),
            )
        )
        out.append(
            ("  its input gradient", flops, lambda g_=grad, w=w: torch.mm(g_, w), lambda g_=grad, w=w: onednn.mm(g_, w))
        )
    w, h, e = rand(V, D), rand(C, D), rand(V, C)
    w_t = w.T.contiguous()
    flops = 2 * V * C * D / 1e9
    out.append((f"CE logits [{V}, {D}] @ [{D}, {C}]", flops, lambda: torch.mm(w, h.T), lambda: onednn.mm(w, h.T)))
    out.append(
        (f"CE hidden gradient [{D}, {V}] @ [{V}, {C}]", flops, lambda: torch.mm(w_t, e), lambda: onednn.mm(w_t, e))
    )
    out.append((f"CE item gradient [{V}, {C}] @ [{C}, {D}]", flops, lambda: torch.mm(e, h), lambda: onednn.mm(e, h)))
    a, b2 = rand(2048, 2048), rand(2048, 2048)
    out.append(("square 2048^3", 2 * 2048**3 / 1e9, lambda: torch.mm(a, b2), lambda: onednn.mm(a, b2)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not onednn.usable(torch.ones(1)):
        print("oneDNN's product is not usable in this torch build (or RECSYS_CPU_GEMM=torch): nothing to compare")
        return 1
    rows = []
    print(
        f"| product ({args.threads} threads) | torch GFLOP/s | oneDNN GFLOP/s | oneDNN / torch | max rel. difference |"
    )
    print("|---|---|---|---|---|")
    for name, flops, ours_torch, ours_dnn in cases():
        t_torch, t_dnn = median_seconds(ours_torch), median_seconds(ours_dnn)
        ref, got = ours_torch(), ours_dnn()
        diff = float((ref - got).abs().max() / ref.abs().max())
        rows.append(
            {
                "product": name.strip(),
                "torch_gflops": flops / t_torch,
                "onednn_gflops": flops / t_dnn,
                "max_rel_diff": diff,
            }
        )
        print(
            f"| {name} | {flops / t_torch:.0f} | {flops / t_dnn:.0f} | {t_torch / t_dnn:.2f}x | {diff:.1e} |",
            flush=True,
        )
    if args.log_results:
        append_record(
            make_record("cpu_gemm", command=benchmark_command("cpu_gemm", argv), threads=args.threads, rows=rows),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
