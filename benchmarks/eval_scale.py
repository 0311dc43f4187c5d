"""Full-ranking evaluation at catalogue scale: 10^5 users x 10^6 items, d 64, in bounded memory.

    python benchmarks/eval_scale.py [--users 100000] [--items 1000000] [--dim 64] [--max-block-mb 512]
                                    [--threads 2] [--log-results]

Builds (in memory, vectorised) a skewed log: Zipf item popularity over ``items`` ids, log-normal
history lengths (median 30, at least 3), then a leave-one-out split and a SASRec encoder (d 64,
random weights: the cost of ranking does not depend on what the model learned) whose item table has
``items`` rows. Runs the shared evaluator (recsys.evaluation.evaluate: every user against every item,
seen items excluded, strict ranks) on the test targets and prints seconds, users/s, the evaluator's
user block and the process's peak RSS next to what one [items x users] score matrix would take.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch


def skewed_sequences(num_users: int, num_items: int, seed: int = 0):
    from recsys.data.prepare import SequenceData
    from recsys.data.synthetic import zipf_cdf

    rng = np.random.default_rng(seed)
    lengths = np.maximum(3, rng.lognormal(np.log(30.0), 1.0, num_users).astype(np.int64))  # [U]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ranks = np.searchsorted(zipf_cdf(num_items, 1.05), rng.random(int(offsets[-1])))  # popularity rank
    item_ids = rng.permutation(num_items)[np.minimum(ranks, num_items - 1)] + 1  # ids 1..num_items
    times = np.arange(int(offsets[-1]), dtype=np.int64)
    return SequenceData(
        item_ids=item_ids,
        timestamps=times,
        seq_offsets=offsets,
        user_raw_ids=np.arange(num_users),
        item_raw_ids=np.arange(num_items + 1).astype(object),
        has_timestamps=False,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--max-block-mb", type=int, default=512)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from recsys.data.splits import make_split
    from recsys.evaluation import EvalConfig, evaluate, ranks_in_kernel
    from recsys.evaluation import block_users as eval_block_users
    from recsys.models.base import build_model

    t0 = time.perf_counter()
    data = skewed_sequences(args.users, args.items)
    split = make_split(data, "leave_one_out", verbose=False)
    torch.manual_seed(0)
    model = build_model(
        "sasrec", {"max_seq_len": args.max_len, "hidden_dim": args.dim, "num_blocks": 2, "num_heads": 1}, data.num_items
    )
    print(
        f"{args.users:,} users, {data.num_items - 1:,} items, {data.num_interactions:,} events "
        f"(built in {time.perf_counter() - t0:.1f} s); torch threads {torch.get_num_threads()}"
    )
    cfg = EvalConfig(ks=(1, 5, 10, 20), exclude_seen=True, max_block_mb=args.max_block_mb)
    result = evaluate(model, split, split.test, args.max_len, cfg, progress=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dense_gb = args.users * data.num_items * 4 / 2**30
    block_users = eval_block_users(cfg, data.num_items + (-data.num_items) % 255, ranks_in_kernel(model.item_vectors()))
    print("\n| users | items | d | seconds | users/s | user block | peak RSS | one dense score matrix |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.users:,} | {data.num_items - 1:,} | {args.dim} | {result['seconds']:.1f} "
        f"| {args.users / result['seconds']:,.0f} | {block_users} | {peak_mb:,.0f} MB | {dense_gb:,.0f} GB |"
    )
    print(f"(NDCG@10 of the untrained model: {result['ndcg@10']:.5f}; it only shows the ranks were computed)")
    if args.log_results:
        from recsys.results import append_record, benchmark_command, make_record

        append_record(
            make_record(
                "eval_scale",
                command=benchmark_command("eval_scale", argv),
                users=args.users,
                items=data.num_items - 1,
                dim=args.dim,
                seconds=result["seconds"],
                users_per_second=args.users / result["seconds"],
                block_users=block_users,
                peak_rss_mb=peak_mb,
                dense_scores_gb=dense_gb,
                max_block_mb=args.max_block_mb,
                threads=torch.get_num_threads(),
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
