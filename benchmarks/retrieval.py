"""FAISS index types against exact search: build time, queries/s, recall@10 (and NDCG@10 of a model).

    python benchmarks/retrieval.py --synthetic 100000 1000000 [--dim 64] [--queries 2000]
    python benchmarks/retrieval.py --export runs/x/export --run runs/x      # a trained model's items
    ... [--log-results]

Synthetic catalogues are clustered (a mixture of 1,000 Gaussians, like trained item embeddings; uniform
random vectors are the worst case for every ANN index), normalised to unit length; queries are noisy
copies of random items. For an export, recall is measured with the export's user vectors as queries,
and, given the run, the model's test NDCG@10 / HR@10 through each index next to the exact evaluator's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from recsys.results import append_record, benchmark_command, git_commit, make_record
from recsys.retrieval import build_index, index_params, search, set_search_params

SEARCH_PARAMS = ("ef_search", "nprobe")

CONFIGS = [
    ("flat", {}),
    ("hnsw", {"M": 32, "ef_construction": 100, "ef_search": 64}),
    ("hnsw", {"M": 32, "ef_construction": 100, "ef_search": 128}),
    ("ivf_flat", {"nprobe": 16}),
    ("ivf_flat", {"nprobe": 24}),
    ("ivf_flat", {"nprobe": 32}),
    ("ivf_flat", {"nprobe": 64}),
    ("ivf_pq", {"m": 16, "nprobe": 32}),
]


def synthetic(n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    items = centres[rng.integers(0, 1000, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[rng.integers(0, n, n_queries)] + 0.3 * rng.normal(size=(n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return items, queries


def measure(items: np.ndarray, queries: np.ndarray, k: int = 10) -> list[dict]:
    rows = []
    exact_rows = None
    exact_qps = None
    built: dict = {}  # an index is built once per (type, build parameters); search parameters vary
    for kind, params in CONFIGS:
        full = index_params(kind, params)
        build_key = (kind, tuple(sorted((k, v) for k, v in full.items() if k not in SEARCH_PARAMS)))
        if build_key not in built:
            start = time.perf_counter()
            built[build_key] = (build_index(items, kind, params), time.perf_counter() - start)
        index, build = built[build_key]
        set_search_params(index, kind, full)
        search(index, queries[:50], k)  # warm-up
        start = time.perf_counter()
        _, found = search(index, queries, k)
        seconds = time.perf_counter() - start
        if kind == "flat":
            exact_rows, exact_qps = found, len(queries) / seconds
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(found, exact_rows)]))
        qps = len(queries) / seconds
        rows.append(
            {
                "index": kind,
                "params": params,
                "build_seconds": build,
                "queries_per_second": qps,
                "speedup_vs_exact": qps / exact_qps,
                "recall@10": recall,
            }
        )
        print(
            f"  {kind:9s} {str(params):55s} build {build:7.2f} s  {qps:10,.0f} q/s  "
            f"x{qps / exact_qps:6.1f}  recall@10 {recall:.3f}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synthetic", type=int, nargs="*", default=[])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--export")
    p.add_argument("--run")
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    commit = git_commit()
    command = benchmark_command("retrieval", argv)
    for n in args.synthetic:
        print(f"synthetic catalogue: {n:,} items x {args.dim}, {args.queries:,} queries")
        items, queries = synthetic(n, args.dim, args.queries)
        rows = measure(items, queries)
        if args.log_results:
            append_record(
                make_record(
                    "retrieval", command=command, commit=commit, catalogue=f"synthetic {n:,} x {args.dim}", rows=rows
                ),
                args.log_results,
            )
    if args.export:
        items = np.load(Path(args.export) / "item_embeddings.npy")
        queries = np.load(Path(args.export) / "user_embeddings.npy")
        print(f"export {args.export}: {len(items):,} items, {len(queries):,} user queries")
        rows = measure(items, queries)
        if args.run:
            from recsys.retrieval import evaluate_through_index
            from recsys.train import load_run

            trainer = load_run(args.run)
            exact = trainer.evaluate("test")
            print(f"  exact evaluator: NDCG@10 {exact['ndcg@10']:.4f}  HR@10 {exact['hr@10']:.4f}")
            for row in rows:
                through = evaluate_through_index(trainer, build_index(items, row["index"], row["params"]), ks=(10,))
                row.update({"ndcg@10": through["ndcg@10"], "hr@10": through["hr@10"]})
                print(
                    f"  {row['index']:9s} {str(row['params']):55s} NDCG@10 {through['ndcg@10']:.4f}  HR@10 {through['hr@10']:.4f}"
                )
        if args.log_results:
            append_record(
                make_record("retrieval", command=command, commit=commit, catalogue=f"export {args.export}", rows=rows),
                args.log_results,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
