"""Ingest a large synthetic log into jagged sequences: time and peak memory.

    python benchmarks/ingest.py --events 20000000 [--items 1000000] [--log-results]

Generates (once, into $RECSYS_CACHE/synthetic/) a Parquet log with Zipf items, log-normal sequence
lengths and timestamps (recsys.data.synthetic), then, in a fresh process so its peak memory is its
own, reads it through the generic table reader and prepares sequences (stable chronological sort, id
remap, jagged arrays), and saves them as memory-mappable arrays. Prints seconds and peak RSS per step.
Then, as a run would, reads the same log as a custom dataset (``recsys.train.prepare_data``) twice in
fresh processes with an empty cache: the first run parses and caches it, the next maps the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
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
    print(
        json.dumps(
            {
                "read_seconds": t1 - t0,
                "prepare_seconds": t2 - t1,
                "save_seconds": t3 - t2,
                "users": seq.num_users,
                "items": seq.num_items - 1,
                "events": seq.num_interactions,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def child_prepare(path: str, cache: str) -> None:
    """``recsys.train.prepare_data`` of the log as a custom table, with RECSYS_CACHE=cache: the first
    call parses, prepares and caches; a later one maps the cached arrays (keyed by the file's sha256)."""
    os.environ["RECSYS_CACHE"] = cache
    from recsys.config import DataConfig
    from recsys.train import prepare_data

    cfg = DataConfig(
        dataset="custom",
        path=path,
        reader="table",
        columns={"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"},
    )
    t0 = time.perf_counter()
    data = prepare_data(cfg, verbose=False)
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - t0,
                "events": data.info["interactions"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", nargs=2, metavar=("PARQUET", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--child-prepare", nargs=2, metavar=("PARQUET", "CACHE"), help=argparse.SUPPRESS)
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.child_prepare:
        child_prepare(*args.child_prepare)
        return 0
    from recsys.data.synthetic import generate_log
    from recsys.results import append_record, benchmark_command, git_commit, make_record

    folder = cache_dir() / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"log-{args.events}-{args.items}-{args.seed}.parquet"
    if not log.exists():
        t = time.perf_counter()
        info = generate_log(log, args.events, num_items=args.items, seed=args.seed)
        print(
            f"generated {info['events']:,} events of {info['users']:,} users in {time.perf_counter() - t:.1f} s: {log}"
        )
    out = folder / f"prepared-{args.events}"
    t = time.perf_counter()
    stats = run_child("--child", str(log), str(out))
    stats["total_seconds"] = time.perf_counter() - t
    # the same log as a custom dataset of a run: parsed and cached by the first run, mapped by the next
    with tempfile.TemporaryDirectory() as cache:
        first, cached = (run_child("--child-prepare", str(log), cache) for _ in range(2))
    stats.update(
        custom_first_seconds=first["seconds"],
        custom_first_peak_rss_mb=first["peak_rss_mb"],
        custom_cached_seconds=cached["seconds"],
        custom_cached_peak_rss_mb=cached["peak_rss_mb"],
    )
    stats["file_mb"] = log.stat().st_size / 2**20
    print(
        f"{stats['events']:,} events, {stats['users']:,} users, {stats['items']:,} items "
        f"(Parquet {stats['file_mb']:.0f} MB)"
    )
    for k in ("read_seconds", "prepare_seconds", "save_seconds", "total_seconds"):
        print(f"  {k:16s} {stats[k]:8.1f}")
    print(f"  peak memory      {stats['peak_rss_mb']:8.0f} MB")
    print(
        f"as a run's custom dataset (prepare_data, split included): first run {first['seconds']:.1f} s, "
        f"peak {first['peak_rss_mb']:,.0f} MB; next run, from the cache: {cached['seconds']:.2f} s, "
        f"peak {cached['peak_rss_mb']:,.0f} MB"
    )
    if args.log_results:
        append_record(
            make_record("ingest", commit=git_commit(), command=benchmark_command("ingest", argv), **stats),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
