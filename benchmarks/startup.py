"""How long the command line takes to answer before any work: ``recsys --help``, ``recsys data list`` and
``recsys recipes``, each run as a fresh process (the installed ``recsys`` script), the median of
``--repeats`` runs, and whether torch was imported.

    python benchmarks/startup.py [--repeats 7] [--log-results]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from recsys.results import DEFAULT_RESULTS, append_record, benchmark_command, git_commit, make_record

COMMANDS = (["--help"], ["data", "list"], ["recipes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--log-results", nargs="?", const=str(DEFAULT_RESULTS), default=None)
    args = parser.parse_args()
    script = shutil.which("recsys") or str(Path(sys.executable).with_name("recsys"))
    rows = []
    for command in COMMANDS:
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([script, *command], capture_output=True, check=True)
            seconds.append(time.perf_counter() - start)
        probe = (
            "import sys, contextlib, io\nfrom recsys.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main({command!r})\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)"
        )
        torch_imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        rows.append(
            {
                "command": "recsys " + " ".join(command),
                "median_seconds": statistics.median(seconds),
                "seconds": seconds,
                "imports_torch": torch_imported == "True",
            }
        )
        print(
            f"recsys {' '.join(command):12s} median {statistics.median(seconds):.3f} s  (torch imported: {torch_imported})"
        )
    if args.log_results:
        append_record(make_record("startup", benchmark_command("startup"), git_commit(), rows=rows), args.log_results)


if __name__ == "__main__":
    main()
