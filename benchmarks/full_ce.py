"""Full-softmax cross-entropy over a large catalogue: chunked (ours) vs the plain logits matrix.

    python benchmarks/full_ce.py [--items 1000000] [--positions 25600] [--dim 64] [--plain-items 20000]
                                 [--impls plain chunked chunked-bf16 item-chunked kernel gemms gemms-bf16]
                                 [--item-chunk 65536]

One forward + backward of the mean CE of ``positions`` hidden states (128 sequences x 200 positions by
default) against ``items`` item vectors. The plain version materialises [positions, items] logits (and
their gradient): at 10^6 items that is ~100 GB, so it is timed at ``--plain-items`` (where it fits) next to
the chunked version at the same size, and the chunked version alone at the full size. Prints seconds and
peak RSS, each implementation in its own process; their losses agree (gradients: tests/test_losses.py).
"chunked" blocks 128 positions x the whole catalogue; "item-chunked" blocks 128 positions x
``--item-chunk`` items with an online log-sum-exp, so its block does not grow with the catalogue (both
the loss's PyTorch path). "kernel" is what fp32 training on CPU runs where the C kernels build: the
fused loss and gradients of ``recsys.kernels.cpu_softmax_ce.softmax_ce`` (48 x 96 tiles of logits in cache,
four products: its GFLOP/s below still counts three).
"gemms" / "gemms-bf16" time only the three GEMMs a forward + backward of full CE needs (logits, then the
gradients of hidden states and items; same blocks, same product routines as the loss, no softmax): the
floor for any exact full CE built on these products. GFLOP/s counts those GEMMs' 6 x positions x items x
dim floating-point operations for every implementation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from recsys import losses
from recsys.kernels import cpu_softmax_ce, onednn
from recsys.losses import LossConfig, full_softmax_ce
from recsys.results import append_record, benchmark_command, git_commit, make_record
from recsys.train import retain_freed_memory

CHUNK = LossConfig().ce_chunk_size  # positions per block, as in training


def child(impl: str, V: int, positions: int, dim: int, item_chunk: int) -> dict:
    retain_freed_memory()  # as the Trainer does on CPU: freed blocks up to 32 MB are reused, not re-faulted
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(positions, dim, generator=g) * 0.1).requires_grad_(True)
    items = (torch.randn(V + 1, dim, generator=g) * 0.1).requires_grad_(True)
    targets = torch.randint(1, V + 1, (positions,), generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if impl.startswith("gemms"):
        with torch.no_grad():
            dtype = torch.bfloat16 if impl == "gemms-bf16" else torch.float32
            w, h = items[1:].to(dtype), hidden.to(dtype)
            w_t = w.T.contiguous()  # [D, V]: the faster layout for the hidden-state gradient (as the CE uses)
            grad_hidden, grad_items = torch.empty_like(h), torch.zeros_like(w)
            block = torch.empty(V * CHUNK, dtype=dtype)  # reused; a smaller last block is a view of its front
            for first in range(0, positions, CHUNK):
                hc = h[first : first + CHUNK]
                if onednn.usable(w):  # fp32 on CPU: the products the CE computes, through oneDNN
                    g = onednn.mm(w, hc.T)  # [V, c] logits
                    grad_hidden[first : first + CHUNK] = onednn.mm(w_t, g).T
                    grad_items += onednn.mm(g, hc)
                    continue
                g = block[: V * hc.shape[0]].view(V, hc.shape[0])
                torch.mm(w, hc.T, out=g)  # [V, c] logits
                grad_hidden[first : first + CHUNK] = (w_t @ g).T
                grad_items.addmm_(g, hc)
            loss = torch.zeros(())  # no loss value: only the time of the GEMMs counts
    elif impl == "plain":
        loss = F.cross_entropy(hidden @ items[1:].T, targets - 1)
    else:
        if impl == "kernel" and not cpu_softmax_ce.available():
            raise RuntimeError("the fused CPU kernels are not available here (no C compiler?)")
        if impl != "kernel":  # the loss's PyTorch path
            losses.full_ce._cpu_kernel_usable = lambda hidden, table: False
        loss = full_softmax_ce(
            hidden,
            items,
            targets,
            CHUNK,
            torch.bfloat16 if impl == "chunked-bf16" else None,
            item_chunk if impl == "item-chunked" else 0,
        )
    if loss.requires_grad:
        loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "items": V,
        "positions": positions,
        "dim": dim,
        "impl": impl,
        "seconds": seconds,
        "loss": loss.item(),
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - base,
        "gflops": 6 * positions * V * dim / seconds / 1e9,
        "plain_logits_gb": positions * V * 4 * 2 / 2**30,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--positions", type=int, default=25_600)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--plain-items", type=int, default=20_000)
    p.add_argument(
        "--impls",
        nargs="+",
        default=["plain", "chunked", "chunked-bf16", "item-chunked", "kernel"],
        help="plain chunked chunked-bf16 item-chunked kernel gemms gemms-bf16",
    )
    p.add_argument("--item-chunk", type=int, default=65_536)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.positions, args.dim, args.item_chunk)))
        return 0
    rows = []
    impls = ["chunked", "chunked-bf16", "item-chunked", "kernel", "gemms", "gemms-bf16"]
    plan = [(args.plain_items, "plain")] + [(args.plain_items, i) for i in impls] + [(args.items, i) for i in impls]
    plan = [(V, impl) for V, impl in plan if impl in args.impls and V > 0]
    for V, impl in plan:  # each in a fresh process, so its peak memory is its own
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                impl,
                str(V),
                "--positions",
                str(args.positions),
                "--dim",
                str(args.dim),
                "--item-chunk",
                str(args.item_chunk),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            print(done.stderr[-2000:])
            return done.returncode
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        extra = (
            f"  (the plain logits + gradient would need {row['plain_logits_gb']:,.1f} GB)" if V == args.items else ""
        )
        print(
            f"items {V:>9,}  {impl:13s} {row['seconds']:8.2f} s  {row['gflops']:6.1f} GFLOP/s  peak RSS {row['peak_rss_mb']:8.0f} MB "
            f"(+{row['rss_growth_mb']:.0f})  loss {row['loss']:.5f}{extra}",
            flush=True,
        )
    if args.log_results:
        append_record(
            make_record(
                "full_ce",
                commit=git_commit(),
                rows=rows,
                item_chunk=args.item_chunk,
                command=benchmark_command("full_ce", argv),
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
