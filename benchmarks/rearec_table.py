"""ReaRec's reasoning steps K against the plain model (K = 0), on shipped recipes, several seeds each:

    python benchmarks/rearec_table.py --recipes s3rec-lastfm/sasrec s3rec-lastfm/hstu --steps 0 1 2 3 \
        [--methods erl prl] [--seeds 3] [--jobs 2] [--device cuda] [--log-results]

Each (recipe, method, K) is one ``recsys train RECIPE --seeds N --set model.reasoning_steps=K
--set model.reasoning_method=M`` in ``runs/rearec/...`` (K = 0 once per recipe: the method does not
apply); ``--jobs`` of them run at once, with cores / jobs threads each. At the end the table of test
NDCG@10 (mean ± standard deviation over the seeds) by recipe, method and K. With ``--log-results`` every
seed's run is appended to benchmarks/results/, from which render_results.py draws the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def jobs_for(recipes: list[str], methods: list[str], steps: list[int]) -> list[tuple[str, str, int]]:
    out = []
    for recipe in recipes:
        for k in steps:
            for method in methods if k else methods[:1]:
                out.append((recipe, method, k))
    return out


def train_command(job: tuple[str, str, int], args, threads: int) -> tuple[list[str], Path]:
    """The ``recsys train`` command of one (recipe, method, K) and its run folder (relative to ROOT)."""
    recipe, method, k = job
    run_dir = Path("runs") / "rearec" / f"{recipe.replace('/', '-')}-{method}-k{k}"  # under ROOT, the cwd below
    command = [
        sys.executable,
        "-c",
        "import sys; from recsys.cli import main; sys.exit(main())",
        "train",
        recipe,
        "--seeds",
        str(args.seeds),
        "--set",
        f"model.reasoning_steps={k}",
        "--set",
        f"model.reasoning_method={method}",
        "--set",
        f"train.num_threads={threads}",
        *(["--set", f"train.device={args.device}"] if args.device else []),
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]
    if args.resume:
        command.append("--resume")
    if args.log_results:
        command += ["--log-results", args.log_results]
    return command, run_dir


def run_one(job: tuple[str, str, int], args, threads: int) -> dict:
    recipe, method, k = job
    command, run_dir = train_command(job, args, threads)
    print(f"start: {recipe} {method} K={k}", flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{recipe} {method} K={k} failed ({done.returncode})")
    tests = []
    for seed_dir in sorted((ROOT / run_dir).glob("seed-*")):
        tests.append(json.loads((seed_dir / "final_metrics.json").read_text())["test"]["ndcg@10"])
    print(f"done: {recipe} {method} K={k}: " + " ".join(f"{t:.4f}" for t in tests), flush=True)
    return {"recipe": recipe, "method": method, "k": k, "ndcg@10": tests}


def table(rows: list[dict], steps: list[int]) -> str:
    lines = ["| recipe | method | " + " | ".join(f"K = {k}" for k in steps) + " |", "|---|---|" + "---|" * len(steps)]
    by_recipe: dict[str, dict] = {}
    for r in rows:
        by_recipe.setdefault(r["recipe"], {})[(r["method"], r["k"])] = r["ndcg@10"]
    for recipe, cells in by_recipe.items():
        plain = next((v for (m, k), v in cells.items() if k == 0), None)
        for method in sorted({m for m, k in cells if k}):
            row = []
            for k in steps:
                values = plain if k == 0 else cells.get((method, k))
                row.append(_cell(values))
            lines.append(f"| `{recipe}` | {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cell(values) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", required=True)
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=["erl", "prl"], choices=["erl", "prl"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="continue runs a killed table left")
    # e.g. cuda: several small runs share one GPU (--jobs); the device does not split a result's group
    parser.add_argument("--device", default=None, help="train.device of every run (default: the recipe's)")
    # a path relative to the repository (the runs' working directory), as recorded in each run's command
    parser.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = jobs_for(args.recipes, args.methods, args.steps)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(job, args, threads), jobs))
    print("\ntest NDCG@10, mean ± standard deviation over", args.seeds, "seeds\n")
    print(table(rows, args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
