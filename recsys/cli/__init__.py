"""Command line: ``recsys train | evaluate | data | export | index | retrieve``.

recsys train recipes/ml-100k/sasrec.toml [--set model.num_blocks=4 ...] [--run-dir DIR] [--resume]
recsys evaluate RUN_DIR [--split test|valid] [--set eval.exclude_seen=false]
recsys data info DATASET        users, items, interactions, sequence-length percentiles
recsys data list                the dataset cards, and which are present here
recsys recipes                  the packaged recipes; recsys config show RECIPE: every key, its meaning
recsys config new LOG --model sasrec --columns user_id=u,item_id=i --out r.toml   a recipe for one's own log
recsys report RUN_DIR... --out report.html   one HTML page: metrics, curves, coverage, examples
recsys tune RECIPE [--trials N] [--workers W] [--resume]   Optuna search on validation, then the best tested
recsys export RUN_DIR --out DIR         item / user embeddings, raw ids, the encoder program, manifest
recsys index build DIR --type hnsw      a FAISS index over an export
recsys retrieve INDEX_DIR --history "i1,i2" -k 10 | --users FILE
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import RecsysError


def _command(module: str, name: str):
    """A subcommand's function, imported when it runs: ``recsys --help`` and ``recsys data list`` do not
    import torch."""

    def run(args):
        return getattr(importlib.import_module(f".{module}", __name__), name)(args)

    return run


cmd_train, cmd_evaluate = _command("train", "cmd_train"), _command("train", "cmd_evaluate")
cmd_data_info, cmd_data_list = _command("data", "cmd_data_info"), _command("data", "cmd_data_list")
cmd_config_new = _command("data", "cmd_config_new")
cmd_export, cmd_index_build = _command("serve", "cmd_export"), _command("serve", "cmd_index_build")
cmd_retrieve = _command("serve", "cmd_retrieve")
cmd_recipes, cmd_config_show = _command("recipes", "cmd_recipes"), _command("recipes", "cmd_config_show")
cmd_report = _command("recipes", "cmd_report")
cmd_tune = _command("train", "cmd_tune")


def table_flags(parser: argparse.ArgumentParser) -> None:
    """The table reader's options (recsys.data.tables.read_table) as flags."""
    parser.add_argument(
        "--columns",
        help="reader table: canonical=file column pairs, e.g. user_id=visitor,item_id=product,timestamp=ts "
        "(with --no-header, column numbers: user_id=1,item_id=2)",
    )
    parser.add_argument("--separator", help="reader table: the CSV's field separator (default: tab for .tsv, else ,)")
    parser.add_argument("--no-header", action="store_true", help="reader table: the CSV has no header line")
    parser.add_argument("--encoding", default="utf-8", help="reader table: the text's encoding (e.g. latin-1)")
    parser.add_argument(
        "--timestamp-unit",
        choices=["auto", "s", "ms", "us", "ns"],
        default="auto",
        help="reader table: numeric timestamps' unit (auto: 1e11 and more are milliseconds, 1e14 us, 1e17 ns)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description="Sequential recommendation: train, evaluate, inspect data.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe")
    t.add_argument("recipe", help="a packaged recipe's name (recsys recipes) or a TOML file")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    t.add_argument("--run-dir")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    t.add_argument("--data-dir", help="folder holding the dataset folders (default: $RECSYS_DATA)")
    t.add_argument(
        "--log-results",
        nargs="?",
        const="benchmarks/results",
        default=None,
        metavar="JSONL",
        help="append a result record (default: the monthly files in benchmarks/results/)",
    )
    t.add_argument("--precision", choices=["fp32", "bf16"], help="same as --set train.precision=...")
    t.add_argument("--compile", action="store_true", help="same as --set train.compile=true")
    t.add_argument(
        "--seeds",
        type=int,
        help="train this many seeds (train.seed, +1, ...; sequential recipes: "
        "one run each in RUN_DIR/seed-S) and report mean and spread",
    )
    t.add_argument("--note", help="a remark stored with the result record (shown in RESULTS.md)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    tu = sub.add_parser("tune", help="hyperparameter search on the validation split (Optuna)")
    tu.add_argument("recipe", help="a packaged recipe's name or a TOML file; its [tune] section, if any")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    tu.add_argument("--trials", type=int, help="trials in the study (default: [tune] trials, else 20)")
    tu.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tu.add_argument("--workers", type=int, default=1, help="processes sharing the study")
    tu.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: cores / workers)")
    tu.add_argument("--storage", help="a database URL for the study (default: a journal file in --out)")
    tu.add_argument("--out", help="the study's folder (default: runs/tune-DATASET-RECIPE)")
    tu.add_argument("--resume", action="store_true", help="go on with the study in --out")
    tu.add_argument("--seeds", type=int, help="train the best settings this many seeds at the end")
    tu.add_argument("--no-final", action="store_true", help="no final training and test of the best settings")
    tu.add_argument(
        "--log-results", action="store_true", help="record the study and its final run in benchmarks/results/"
    )
    tu.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    tu.set_defaults(func=cmd_tune)

    rp = sub.add_parser("report", help="one self-contained HTML page about finished runs")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument("--out", default="report.html")
    rp.add_argument("--examples", type=int, default=3, help="test users shown with their recommendations")
    rp.set_defaults(func=cmd_report)

    r = sub.add_parser("recipes", help="list the packaged recipes")
    r.set_defaults(func=cmd_recipes)

    c = sub.add_parser("config", help="show a recipe's resolved configuration, or write one for a log")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="every key of a recipe with its value, meaning and default")
    cs.add_argument("recipe", help="a packaged recipe's name (recsys recipes) or a TOML file")
    cs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    cs.set_defaults(func=cmd_config_show)
    cn = csub.add_parser("new", help="a start-here recipe for a log of one's own (CSV, TSV, Parquet, JSON lines)")
    cn.add_argument("data", help="the log file")
    cn.add_argument(
        "--model", default="sasrec", help="the model (default sasrec; any next-item model but the text ones)"
    )
    cn.add_argument("--out", help="write the recipe to this new file (default: print it)")
    table_flags(cn)
    cn.set_defaults(func=cmd_config_new)

    e = sub.add_parser("evaluate", help="evaluate a run's best checkpoint")
    e.add_argument("run_dir")
    e.add_argument(
        "--split",
        choices=["test", "valid", "test_cold", "test_warm"],
        default="test",
        help="test_cold / test_warm: the test users whose target was held out of training, or not (data.cold_item_fraction)",
    )
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--data-dir")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("data", help="inspect datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    di = dsub.add_parser("info", help="users, items, interactions, length percentiles")
    di.add_argument("dataset", help="a dataset card's name, a recipe (.toml: its [data]), or a file (with --reader)")
    di.add_argument("--data-dir")
    di.add_argument(
        "--reader", help="reader for a file of one's own (e.g. user_item_lines, table; table where --columns is given)"
    )
    table_flags(di)
    di.set_defaults(func=cmd_data_info)
    dl = dsub.add_parser("list", help="the dataset cards, and which are here")
    dl.add_argument("--data-dir")
    dl.set_defaults(func=cmd_data_list)

    x = sub.add_parser("export", help="export item / user embeddings and the encoder of a run")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True)
    x.add_argument(
        "--users",
        choices=["test", "valid", "none"],
        default="test",
        help="export the user vectors of this split's users (their history up to the target)",
    )
    x.add_argument("--histories", help="or of these histories: lines 'user<TAB>item,item,...' (raw ids)")
    x.add_argument("--no-encoder", action="store_true")
    x.add_argument(
        "--onnx", action="store_true", help="also the encoder as ONNX (encoder.onnx), checked in onnxruntime"
    )
    x.add_argument("--data-dir")
    x.set_defaults(func=cmd_export)

    ix = sub.add_parser("index", help="FAISS indexes over an export")
    ixsub = ix.add_subparsers(dest="index_command", required=True)
    ib = ixsub.add_parser("build")
    ib.add_argument("export_dir")
    ib.add_argument("--type", default="flat", choices=["flat", "hnsw", "ivf_flat", "ivf_pq"])
    ib.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="e.g. M=32, nprobe=16")
    ib.add_argument("--out")
    ib.set_defaults(func=cmd_index_build)

    rt = sub.add_parser("retrieve", help="top-k items from an index")
    rt.add_argument("index_dir")
    group = rt.add_mutually_exclusive_group(required=True)
    group.add_argument("--history", help="raw item ids, oldest first, comma-separated")
    group.add_argument("--users", help="a file of user ids (one per line) present in the export")
    rt.add_argument("-k", type=int, default=10)
    rt.add_argument("--times", help="with --history, for models that read time: each item's timestamp (seconds)")
    rt.add_argument("--at", type=int, help="with --times: the time of the request (default: the last timestamp)")
    rt.add_argument("--include-seen", action="store_true", help="do not filter the items of the history")
    rt.add_argument("--export-dir", help="default: the export the index was built from")
    rt.add_argument(
        "--format", choices=["text", "json", "csv"], default="text", help="json: one object per line; csv: a table"
    )
    rt.set_defaults(func=cmd_retrieve)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv

    try:
        code = args.func(args)
        # under torchrun every rank reaches this point before any tears the process group down (a rank
        # that destroyed its gloo group while another was still in it could abort at exit); a command
        # that never imported torch has no process group
        if "torch" in sys.modules:
            from .. import distributed

            distributed.barrier()
        return code
    except BrokenPipeError:  # the reader went away (e.g. `recsys data list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RecsysError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that is missing, taken, not a folder, not writable; a full disk
        print(f"error: {err.strerror or err}" + (f": {err.filename}" if err.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:
            from .. import distributed

            distributed.shutdown()
