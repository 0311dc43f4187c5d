"""Ingest a large synthetic log into jagged sequences: time and peak memory.

    python benchmarks/ingest.py --events 20000000 [--items 1000000] [--log-results]

Generates (once, into $RECSYS_CACHE/synthetic/) a Parquet log with Zipf items, log-normal sequence
lengths and timestamps (recsys.data.synthetic), then, in a fresh process so its peak memory is its
own, reads it through the generic table reader and prepares sequences (stable chronological sort, id
remap, jagged arrays), and saves them as memory-mappable arrays. Prints seconds and peak RSS per step.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from recsys.data.cards import cache_dir


def child(path: str, out: str) -> None:
    from recsys.data.prepare import prepare_sequences
    from recsys.data.readers import read_table

    t0 = time.perf_counter()
    inter = read_table(path, {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"})
    t1 = time.perf_counter()
    seq = prepare_sequences(inter, verbose=False)
    del inter
    t2 = time.perf_counter()
    seq.save(out)
    t3 = time.perf_counter()
    print(json.dumps({"read_seconds": t1 - t0, "prepare_seconds": t2 - t1, "save_seconds": t3 - t2,
                      "users": seq.num_users, "items": seq.num_items - 1, "events": seq.num_interactions,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", nargs=2, metavar=("PARQUET", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--log-results", nargs="?", const="benchmarks/results.jsonl", default=None)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    from recsys.data.synthetic import generate_log
    from recsys.results import append_record, benchmark_command, git_commit, make_record

    folder = cache_dir() / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"log-{args.events}-{args.items}-{args.seed}.parquet"
    if not log.exists():
        t = time.perf_counter()
        info = generate_log(log, args.events, num_items=args.items, seed=args.seed)
        print(f"generated {info['events']:,} events of {info['users']:,} users in {time.perf_counter() - t:.1f} s: {log}")
    out = folder / f"prepared-{args.events}"
    t = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(log), str(out)], capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-3000:])
        return done.returncode
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    stats["total_seconds"] = time.perf_counter() - t
    stats["file_mb"] = log.stat().st_size / 2**20
    print(f"{stats['events']:,} events, {stats['users']:,} users, {stats['items']:,} items "
          f"(Parquet {stats['file_mb']:.0f} MB)")
    for k in ("read_seconds", "prepare_seconds", "save_seconds", "total_seconds"):
        print(f"  {k:16s} {stats[k]:8.1f}")
    print(f"  peak memory      {stats['peak_rss_mb']:8.0f} MB")
    if args.log_results:
        append_record(make_record("ingest", commit=git_commit(),
                                  command=benchmark_command("ingest", argv),
                                  **stats), args.log_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
