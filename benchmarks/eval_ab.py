"""Time one run's test evaluation with the recsys of a given source folder (e.g. a `git worktree` of another
commit), so that two versions can be compared on the same model, machine and data:

    git worktree add /tmp/base BASE_COMMIT
    python benchmarks/eval_ab.py RUN_DIR --code /tmp/base --repeats 5 --set eval.tie_policy=optimistic
    python benchmarks/eval_ab.py RUN_DIR --code . --repeats 5

Prints the median seconds, every time, and the test metrics. ``--set`` overrides eval settings (an
older version may not know newer keys: the run's config.json is read with keys it does not know
dropped, ``--drop eval.repeat_targets``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--code", required=True, help="the folder holding the recsys package to time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="eval.KEY=VALUE")
    parser.add_argument("--drop", action="append", default=[], help="SECTION.KEY to drop from config.json")
    args = parser.parse_args()

    # the given source tree, not the installed (editable) recsys
    sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    sys.path.insert(0, str(Path(args.code).resolve()))
    import torch

    import recsys
    from recsys.train import load_run

    torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    config = json.loads((run / "config.json").read_text())
    for key in args.drop:
        section, name = key.split(".", 1)
        config.get(section, {}).pop(name, None)
    with tempfile.TemporaryDirectory() as tmp:  # the run with the edited config, its best.pt linked
        copy = Path(tmp) / "run"
        copy.mkdir()
        (copy / "config.json").write_text(json.dumps(config))
        (copy / "best.pt").symlink_to((run / "best.pt").resolve())
        trainer = load_run(copy, overrides=args.set)
        trainer.evaluate("test")  # warm-up: kernels built, pages touched
        times, metrics = [], None
        for _ in range(args.repeats):
            metrics = trainer.evaluate("test")
            times.append(metrics["seconds"])
    print(
        json.dumps(
            {
                "code": str(Path(recsys.__file__).parent),
                "median_seconds": statistics.median(times),
                "seconds": [round(t, 4) for t in times],
                "metrics": {k: v for k, v in metrics.items() if "@" in k or k in ("mrr", "num_users")},
                "tie_policy": trainer.cfg.eval.tie_policy,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
