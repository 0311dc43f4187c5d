"""Render ``benchmarks/RESULTS.md`` (and its learning-curve and ReaRec plots) from the results log ``benchmarks/results/``:

    python benchmarks/render_results.py [benchmarks/results] [--out benchmarks/RESULTS.md]

(``make results``). Every figure comes from a record a run appended; published numbers from
``recipes/published.toml``, labelled as such. Needs matplotlib for the plots.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tomllib
from pathlib import Path

from recsys.files import atomic_write_bytes, read_json_lines
from recsys.results import record_files


def read_records(path: str | Path) -> list[dict]:
    """Every record of a results JSONL file, or of a folder's monthly files (recsys.results)."""
    return [record for file in record_files(path) for record in read_json_lines(file, "results record")]


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _threads(n) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _machine_short(m: dict) -> str:
    isa = f" ({m['cpu_isa']})" if m.get("cpu_isa") else ""  # records before 2026-12 did not say
    return f"{m.get('cpu', '?')}{isa}, {_threads(m.get('torch_threads', '?'))}" + (
        f", {m['gpu']}" if m.get("gpu") else ""
    )


def plot_learning_curves(records: list[dict], folder: Path) -> list[tuple[str, str]]:
    """One PNG per dataset: validation NDCG@10 by epoch of the latest run of each recipe as it ships (no
    overrides but threads, seed and device) that has a history. Returns (dataset, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: r.get("date", "")):
        if r["kind"] == "train" and _as_recipe_says(r) and any("ndcg@10" in h for h in r.get("history", [])):
            latest[r.get("recipe", "?")] = r
    by_dataset: dict[str, list[dict]] = {}
    for r in latest.values():
        by_dataset.setdefault(r["dataset"]["dataset"], []).append(r)
    made = []
    for dataset, runs in sorted(by_dataset.items()):
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for r in runs:
            points = [(h["epoch"], h["ndcg@10"]) for h in r["history"] if "ndcg@10" in h]
            ax.plot(*zip(*points), marker=".", label=f"{r['model']} / {r['loss']} ({Path(r.get('recipe', '?')).name})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation NDCG@10")
        ax.set_title(f"{dataset}: learning curves")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"learning_curves_{dataset}.png"
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        made.append((dataset, name))
    return made


def _command(record: dict) -> str:
    """The record's command as code, followed by its note when it has one."""
    return f"`{record['command']}`" + (f" — {record['note']}" if record.get("note") else "")


# overrides that leave a recipe's result its own: threads, seeds, the device (anything else is a variant)
NEUTRAL_OVERRIDES = ("train.num_threads", "train.seed", "train.device")


def _overrides(record: dict) -> list[str]:
    if "overrides" in record:
        return list(record["overrides"])
    words = shlex.split(record.get("command", ""))
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set"]


REPO = Path(__file__).resolve().parents[1]
# recipe keys a run resolves or places on its own machine: "auto" dtypes, paths
_RESOLVED = {"ce_matmul_dtype", "path", "data_dir", "device"}
_recipe_files: dict[str, dict | None] = {}


def _recipe_file(recipe: str) -> dict | None:
    """The settings a packaged recipe file holds today (None: not a file of this repository)."""
    if recipe not in _recipe_files:
        path = REPO / recipe
        _recipe_files[recipe] = (
            tomllib.loads(path.read_text()) if recipe.startswith("recipes/") and path.is_file() else None
        )
    return _recipe_files[recipe]


def _same_as_recipe_file(record: dict) -> bool:
    """Whether a training record ran the settings its recipe file holds now: every key the file sets has
    the recorded value (threads, seed and device aside). A recipe changed since its run no longer owns
    that run's result."""
    raw = _recipe_file(record.get("recipe", ""))
    config = record.get("config")
    if raw is None or not isinstance(config, dict):
        return True  # nothing to compare with: a study's best.toml, a record without its config
    for section, values in raw.items():
        if not isinstance(values, dict) or section not in config:
            continue
        for key, value in values.items():
            if _compared(section, key) and config[section].get(key) != value:
                return False
    return True


def _compared(section: str, key: str) -> bool:
    """Whether a setting tells runs of a recipe apart (not resolved by the run, not threads / seed / device)."""
    return key not in _RESOLVED and not (section == "train" and f"train.{key}" in NEUTRAL_OVERRIDES)


def _as_recipe_says(record: dict) -> bool:
    """No overrides but threads, seed and device, and (training) the recipe file still holds its settings."""
    if not all(o.split("=", 1)[0] in NEUTRAL_OVERRIDES for o in _overrides(record)):
        return False
    return record.get("kind") != "train" or _same_as_recipe_file(record)


TARGET_GAIN = 1.05  # the bar a file's best recipe is held to: 5% above the strongest published NDCG@10


def targets_table(records: list[dict], references: dict) -> list[str]:
    """Per data file with a published number: the strongest published test NDCG@10 of the recipes on that
    file, and our best recipe there (the highest mean over seeds of a several-seed run as it ships; a
    single run is shown, as such, only where no recipe on the file has several seeds), with its command."""
    records = sorted(records, key=lambda r: r.get("date", ""))
    files: dict[tuple[str, str], set[str]] = {}
    single: dict[str, dict] = {}
    for r in records:
        if r["kind"] != "train" or "protocol" in r["metrics"]["test"]:
            continue
        files.setdefault((r["dataset"]["dataset"], r["dataset"].get("file", "?")), set()).add(r.get("recipe", "?"))
        if _as_recipe_says(r):
            single[r.get("recipe", "?")] = r
    shipped = _shipped_seed_runs(records)
    rows = []
    for (dataset, file), recipes in sorted(files.items()):
        published = [
            (references[rc]["ndcg@10"], references[rc]["source"])
            for rc in recipes
            if "ndcg@10" in references.get(rc, {})
        ]
        if not published:
            continue
        best_published, source = max(published)
        # only recipes the project ships (not a study's best.toml in a run folder)
        recipes = {rc for rc in recipes if rc.startswith("recipes/")} or recipes
        several = [
            (statistics.fmean([x["metrics"]["test"]["ndcg@10"] for x in shipped[rc]]), rc)
            for rc in recipes
            if rc in shipped
        ]
        if several:
            mean, recipe = max(several)
            runs = shipped[recipe]
        else:
            mean, recipe = max((single[rc]["metrics"]["test"]["ndcg@10"], rc) for rc in recipes if rc in single)
            runs = [single[recipe]]
        # a file's reference may set a stricter bar of its own ("target")
        target = max(
            [TARGET_GAIN * best_published]
            + [references[rc]["target"] for rc in recipes if "target" in references.get(rc, {})]
        )
        met = "yes" if mean >= target else "no"
        if len(runs) < 2:
            met += " (one seed)"
        rows.append(
            f"| {dataset} ({file}) | {best_published:.4f} ({source}) | {target:.4f} | `{recipe}` | {len(runs)} "
            f"| {_mean_std([x['metrics']['test']['ndcg@10'] for x in runs])} | {100 * (mean / best_published - 1):+.1f}% "
            f"| {met} | `{runs[-1]['command']}` |"
        )
    if not rows:
        return []
    return [
        f"Best recipe per file against the strongest published test NDCG@10 on that file (target: {TARGET_GAIN:.2f}x "
        "published, or the file's own stricter bar from recipes/published.toml; mean ± sample std over seeds of the recipe as it ships):",
        "",
        "| dataset (file) | strongest published NDCG@10 | target | our best recipe | seeds | NDCG@10 | vs published "
        "| target met | command |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def headline(records: list[dict], references: dict, rearec_plot: str | None = None) -> list[str]:
    """The tables a reader wants first: the latest run of each recipe as it ships (against the published
    number where there is one), click prediction, and the latest comparison with RecBole per setting."""
    out = ["## Headline", "", *targets_table(records, references)]
    records = sorted(records, key=lambda r: r.get("date", ""))  # the latest by date wins below (stable for ties)
    latest: dict[str, dict] = {}
    for r in records:
        shipped = r.get("recipe", "").startswith("recipes/")  # not a study's best.toml under runs/
        if r["kind"] == "train" and shipped and _as_recipe_says(r) and "protocol" not in r["metrics"]["test"]:
            latest[r["recipe"]] = r  # records are in time order: the last one wins
    if latest:
        out += [
            "Each shipped recipe's latest run, as it ships (test split, full ranking; seeds, threads and device aside):",
            "",
            "| recipe | dataset (file) | model / loss | HR@10 | NDCG@10 | published HR@10 / NDCG@10 | date | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for recipe, r in sorted(latest.items()):
            ref = references.get(recipe, {})
            published = f"{_fmt(ref.get('hr@10'))} / {_fmt(ref.get('ndcg@10'))} ({ref['source']})" if ref else "–"
            t = r["metrics"]["test"]
            out.append(
                f"| `{recipe}` | {r['dataset']['dataset']} ({r['dataset'].get('file', '?')}) | {r['model']} / {r['loss']} "
                f"| {_fmt(t['hr@10'])} | {_fmt(t['ndcg@10'])} | {published} | {r['date'][:10]} "
                f"| {_machine_short(r['machine'])} | {r['commit']} |"
            )
        out.append("")
    clicks: dict[str, dict] = {}
    for r in records:
        if r["kind"] == "click" and _as_recipe_says(r):
            clicks[r.get("recipe", "?")] = r
    if clicks:
        out += [
            "Click prediction, each recipe's latest run (test AUC / GAUC / log loss at the best validation epoch, "
            "mean ± std over seeds):",
            "",
            "| recipe | seeds | AUC | GAUC | log loss | date | machine | commit |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for recipe, r in sorted(clicks.items()):
            s = r["summary"]
            cells = [f"{s[f'test_{m}_mean']:.4f} ± {s[f'test_{m}_std']:.4f}" for m in ("auc", "gauc", "logloss")]
            out.append(
                f"| `{recipe}` | {len(r['per_seed'])} | {' | '.join(cells)} | {r['date'][:10]} "
                f"| {_machine_short(r['machine'])} | {r['commit']} |"
            )
        out.append("")
    peers: dict[tuple, dict] = {}
    for r in records:
        if r["kind"] == "peer_recbole":
            key = (
                r.get("model", "sasrec"),
                r["dataset"],
                bool(r.get("equal_targets")),
                r["machine"].get("cpu_family_model"),
            )
            peers[key] = r
    if peers:
        out += [
            "Speed against RecBole 1.2.1 on the same data, split, model and CPU threads (ours / RecBole; the latest "
            "run per setting and machine, details in the Peer sections below):",
            "",
            "| model | dataset | training targets/s | evaluation users/s (every exact rank) | peak RSS | test NDCG@10 "
            "| date | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]

        def ratio(r, row):
            v = r["rows"].get(row)
            return f"{v['ours'] / v['recbole']:.2f}x" if v and v["recbole"] else "–"

        for (model, dataset, equal, _), r in sorted(peers.items(), key=lambda kv: kv[1]["date"], reverse=True):
            partial = r.get("recbole_batches") and not equal
            evaluation = ratio(r, "evaluation users / s")
            if "evaluation users / s, every exact rank" in r["rows"]:
                evaluation += f" ({ratio(r, 'evaluation users / s, every exact rank')})"
            out.append(
                f"| {model} | {dataset}{' (equal targets)' if equal else ''} | {ratio(r, 'training targets / s')} "
                f"| {evaluation} | {ratio(r, 'peak RSS (MB)')} | {'–' if partial else ratio(r, 'test NDCG@10')} "
                f"| {r['date'][:10]} | {_machine_short(r['machine'])} | {r['commit']} |"
            )
        out.append("")
    out += seed_tables(records, references, rearec_plot)
    return out + ["## Full log", ""]


def _seed_groups(records: list[dict]) -> dict[tuple[str, str, tuple, str], list[dict]]:
    """Training records of ``--seeds N`` invocations: (recipe, command, the non-seed overrides, the
    settings) -> one record per seed, in time order."""
    groups: dict[tuple[str, str, tuple, str], list[dict]] = {}
    for r in sorted(records, key=lambda r: r.get("date", "")):
        if r["kind"] != "train" or "--seeds" not in r.get("command", "") or "protocol" in r["metrics"]["test"]:
            continue
        variant = tuple(o for o in _overrides(r) if o.split("=", 1)[0] not in NEUTRAL_OVERRIDES)
        # runs of one command with other settings (a recipe file changed in between) are groups of their own
        settings = json.dumps(_settings(r), sort_keys=True)
        groups.setdefault((r.get("recipe", "?"), r["command"], variant, settings), []).append(r)
    # the same command run again starts over at its first seed: only its latest invocation counts (a
    # resumed one goes on with higher seeds), so seeds of two versions of the code never mix
    return {key: _latest_invocation(runs) for key, runs in groups.items()}


def _latest_invocation(runs: list[dict]) -> list[dict]:
    """The runs (in time order) from the last point where the seed did not increase."""
    start = 0
    for i in range(1, len(runs)):
        if _seed_number(runs[i]) <= _seed_number(runs[i - 1]):
            start = i
    return runs[start:]


def _seed_number(record: dict) -> int:
    seed = _seed(record)
    return int(seed) if seed.lstrip("-").isdigit() else 0


def _seed(record: dict) -> str:
    """A training record's seed (its ``train.seed`` override, else its config's)."""
    for o in _overrides(record):
        if o.startswith("train.seed="):
            return o.split("=", 1)[1]
    return str(record.get("config", {}).get("train", {}).get("seed"))


def _shipped_seed_runs(records: list[dict]) -> dict[str, list[dict]]:
    """Each recipe's latest ``--seeds N`` run as it ships (no variant overrides, the recipe file's current
    settings): recipe -> its seeds' records."""
    return {
        recipe: runs
        for (recipe, _, variant, _), runs in _seed_groups(records).items()
        if not variant and _same_as_recipe_file(runs[-1])
    }


def _settings(record: dict) -> dict:
    """A training record's settings without what a run resolves or varies on its own (threads, seed, device)."""
    return {
        section: {k: v for k, v in values.items() if _compared(section, k)}
        for section, values in record.get("config", {}).items()
        if isinstance(values, dict)
    }


def _untuned_run(groups: dict, recipe: str, date: str) -> list[dict]:
    """What a study of ``recipe`` started from: the recipe's several-seed runs without variant overrides,
    the latest with the settings of the last one before the study (or, with none before it, of the recipe
    file today)."""
    groups = [g for (name, _, variant, _), g in groups.items() if name == recipe and not variant]
    before = [g for g in groups if g[0].get("date", "") < date]
    if before:
        start = _settings(max(before, key=lambda g: g[0].get("date", ""))[-1])
        same = [g for g in groups if _settings(g[-1]) == start]
    else:
        same = [g for g in groups if _same_as_recipe_file(g[-1])]
    return max(same, key=lambda g: g[0].get("date", ""), default=[])


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return _fmt(values[0]) if values else "–"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.4f} ± {std:.4f}"


def _settings_but_reasoning(record: dict) -> str:
    """A key for the K = 0 .. 3 runs of one recipe and settings: the recorded values of the keys the
    recipe file sets (threads, seed and device aside; all settings when the file is not there), without
    ReaRec's steps and method. Defaults of keys the file leaves out do not split runs apart."""
    raw, config = _recipe_file(record.get("recipe", "")), record.get("config", {})
    if raw is None:
        settings = _settings(record)
    else:
        settings = {
            section: {k: config.get(section, {}).get(k) for k in values if _compared(section, k)}
            for section, values in raw.items()
            if isinstance(values, dict) and section != "tune"
        }
    model = {k: v for k, v in settings.get("model", {}).items() if k not in ("reasoning_steps", "reasoning_method")}
    return json.dumps({**settings, "model": model}, sort_keys=True)


def _steps(variant: tuple) -> tuple[int, str] | None:
    """(K, method) of a ReaRec variant (its overrides), None for any other."""
    settings = dict(o.split("=", 1) for o in variant)
    if "model.reasoning_steps" not in settings or set(settings) - {"model.reasoning_steps", "model.reasoning_method"}:
        return None
    return int(settings["model.reasoning_steps"]), settings.get("model.reasoning_method", "erl")


def rearec_cells(records: list[dict]) -> dict[tuple[str, str, str, int], list[dict]]:
    """ReaRec's runs: (recipe, its settings but the reasoning keys, method, K) -> the runs of the latest
    several-seed group of that cell."""
    rearec: dict[tuple[str, str, str, int], list[dict]] = {}  # later groups overwrite earlier ones
    plain_runs: dict[tuple[str, str], list[dict]] = {}  # (recipe, settings) -> its runs as it ships
    for (recipe, _, variant, _), runs in _seed_groups(records).items():
        if (steps := _steps(variant)) is not None:
            rearec[(recipe, _settings_but_reasoning(runs[-1]), steps[1], steps[0])] = runs
        elif not variant:
            plain_runs[(recipe, _settings_but_reasoning(runs[-1]))] = runs
    # K = 0 is the plain model (a test holds them equal): a row without its own K = 0 runs takes the
    # recipe's plain several-seed run of the same settings
    for recipe, settings in {(rc, st) for rc, st, _, _ in rearec}:
        if (recipe, settings, "erl", 0) not in rearec and (recipe, settings) in plain_runs:
            rearec[(recipe, settings, "erl", 0)] = plain_runs[(recipe, settings)]
    return rearec


REAREC_PLOT = "rearec_steps.png"


def plot_rearec(records: list[dict], folder: Path) -> str | None:
    """One PNG: each recipe's test NDCG@10 against ReaRec's K (ERL, the recipe's current settings), as a
    change from its K = 0 in percent, with the seeds' standard deviation as error bars. Returns the file
    name, or None where no recipe has K = 0 and another K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = rearec_cells(records)
    curves = {}
    for recipe, settings in sorted({(rc, st) for rc, st, m, _ in cells if m == "erl"}):
        by_k = {k: runs for (rc, st, m, k), runs in cells.items() if (rc, st, m) == (recipe, settings, "erl")}
        if 0 not in by_k or len(by_k) < 2 or not _same_as_recipe_file(by_k[0][-1]):
            continue
        base = statistics.mean(r["metrics"]["test"]["ndcg@10"] for r in by_k[0])
        points = []
        for k in sorted(by_k):
            values = [100 * (r["metrics"]["test"]["ndcg@10"] / base - 1) for r in by_k[k]]
            points.append((k, statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0))
        curves[recipe] = points
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for recipe, points in curves.items():
        ks, means, stds = zip(*points)
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=recipe.removeprefix("recipes/"))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(sorted({k for points in curves.values() for k, _, _ in points}))
    ax.set_xlabel("reasoning steps K (ERL)")
    ax.set_ylabel("test NDCG@10 vs K = 0 (%)")
    ax.set_title("ReaRec: what reasoning steps buy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / REAREC_PLOT, dpi=100)
    plt.close(fig)
    return REAREC_PLOT


def seed_tables(records: list[dict], references: dict, rearec_plot: str | None = None) -> list[str]:
    """Recipes run with several seeds (the latest run per recipe as it ships: mean ± sample std), and
    ReaRec's reasoning steps K by recipe and training method (K = 0: the plain model)."""
    out: list[str] = []
    shipped = _shipped_seed_runs(records)
    groups = _seed_groups(records)
    rearec = rearec_cells(records)
    if shipped:
        out += [
            "Recipes run with several seeds (test split, full ranking; mean ± sample standard deviation):",
            "",
            "| recipe | dataset (file) | model / loss | seeds | HR@10 | NDCG@10 | published NDCG@10 | date | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for recipe, runs in sorted(shipped.items()):
            r, ref = runs[-1], references.get(recipe, {})
            tests = [x["metrics"]["test"] for x in runs]
            out.append(
                f"| `{recipe}` | {r['dataset']['dataset']} ({r['dataset'].get('file', '?')}) | {r['model']} / {r['loss']} "
                f"| {len(runs)} | {_mean_std([t['hr@10'] for t in tests])} | {_mean_std([t['ndcg@10'] for t in tests])} "
                f"| {_fmt(ref.get('ndcg@10'))}{' (' + ref['source'] + ')' if ref else ''} | {r['date'][:10]} "
                f"| {_machine_short(r['machine'])} | {r['commit']} |"
            )
        out.append("")
    studies = [r for r in sorted(records, key=lambda r: r.get("date", "")) if r["kind"] == "tune"]
    if studies:
        out += [
            "`recsys tune` studies (selection on validation NDCG@10; the best settings then trained with several "
            "seeds and tested once) against the recipe they started from, untuned (its latest several-seed run "
            "with the settings it had when the study began):",
            "",
            "| recipe | trials (completed / pruned) | study wall time / sum of trial times | best trial: validation "
            "| its test NDCG@10 | untuned: validation | untuned: test NDCG@10 | date | commit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in studies:
            untuned = _untuned_run(groups, r["recipe"], r["date"])
            valid = [x["metrics"]["valid"]["ndcg@10"] for x in untuned if "valid" in x["metrics"]]
            trials = r["trials"]
            hours = f"{(r['study_wall_seconds'] or 0) / 3600:.2f} h / {r['trial_seconds'] / 3600:.2f} h"
            out.append(
                f"| `{r['recipe']}` | {sum(trials.values())} ({trials.get('COMPLETE', 0)} / {trials.get('PRUNED', 0)}) "
                f"| {hours} | {r['best_valid']:.4f} | {_mean_std([t['ndcg@10'] for t in r['final_test']])} "
                f"(seeds: {len(r['final_test'])}) | {_mean_std(valid)} | "
                f"{_mean_std([x['metrics']['test']['ndcg@10'] for x in untuned])} | {r['date'][:10]} | {r['commit']} |"
            )
        out += [
            "",
            "Best settings found: " + "; ".join(f"`{r['recipe']}`: `{json.dumps(r['best_params'])}`" for r in studies),
            "",
        ]
    if rearec:
        ks = sorted({k for *_, k in rearec})
        out += [
            "ReaRec reasoning steps K (`benchmarks/rearec_table.py`; test NDCG@10, mean ± sample std over seeds; "
            "K = 0 is the plain model, the same for both methods (the recipe's own several-seed run where the "
            "table has no K = 0 of its own); each row's runs share the recipe's settings, "
            "a row of settings the recipe file no longer holds says so):",
            "",
            "| recipe | method | " + " | ".join(f"K = {k}" for k in ks) + " | seeds | date | commit |",
            "|---|---|" + "---|" * len(ks) + "---|---|---|",
        ]
        for recipe, settings in sorted({(rc, st) for rc, st, _, _ in rearec}):
            cells_of = {(m, k): runs for (rc, st, m, k), runs in rearec.items() if (rc, st) == (recipe, settings)}
            plain = next((runs for (_, k), runs in cells_of.items() if k == 0), [])
            name = f"`{recipe}`" + (
                "" if _same_as_recipe_file(next(iter(cells_of.values()))[-1]) else " (earlier settings)"
            )
            for method in sorted({m for m, k in cells_of if k}) or ["erl"]:
                runs_of = [plain if k == 0 else cells_of.get((method, k), []) for k in ks]
                cells = [_mean_std([x["metrics"]["test"]["ndcg@10"] for x in runs]) for runs in runs_of]
                last = max((x for runs in runs_of for x in runs), key=lambda x: x["date"])
                seeds = sorted({len(runs) for runs in runs_of if runs})
                out.append(
                    f"| {name} | {method} | " + " | ".join(cells) + f" | {'/'.join(map(str, seeds))} "
                    f"| {last['date'][:10]} | {last['commit']} |"
                )
        out.append("")
        if rearec_plot:
            out += [f"![ReaRec: test NDCG@10 against K]({rearec_plot})", ""]
    return out


def render_markdown(
    records: list[dict],
    references: dict | None = None,
    plots: list[tuple[str, str]] = (),
    rearec_plot: str | None = None,
) -> str:
    references = references or {}
    out = [
        "# Results",
        "",
        "Generated by `python benchmarks/render_results.py` (`make results`) from the JSON lines",
        "that each run appended; nothing here is typed by hand. Published numbers come from",
        "`recipes/published.toml` and are marked as such. Protocol columns: split, whether seen items",
        "were excluded from the ranking, and the tie policy (optimistic = strict ranks).",
        "",
    ]
    out += headline(records, references, rearec_plot)
    train = [r for r in records if r["kind"] == "train"]
    if train:
        out += [
            "## Training runs (test split, full ranking over all items)",
            "",
            "| date | dataset (file) | recipe | model / loss | split | excl. seen | HR@10 | NDCG@10 | published HR@10 / NDCG@10 | best epoch / run | train time | peak mem | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in train:
            ref = references.get(r.get("recipe", ""), {})
            published = f"{_fmt(ref.get('hr@10'))} / {_fmt(ref.get('ndcg@10'))} ({ref['source']})" if ref else "–"
            t = r["metrics"]["test"]
            ds = r["dataset"]
            out.append(
                f"| {r['date']} | {ds['dataset']} ({ds.get('file', '?')}) | `{r.get('recipe', '?')}` "
                f"| {r['model']} / {r['loss']} | {r['protocol']['split']} | {r['protocol']['exclude_seen']} "
                f"| {_fmt(t['hr@10'])} | {_fmt(t['ndcg@10'])}{' (sampled, legacy)' if 'protocol' in t else ''} | {published} "
                f"| {r['metrics'].get('best_epoch')} / {r['metrics'].get('epochs_run')} "
                f"| {r['timings']['train_seconds'] / 60:.1f} min | {r['peak_memory_mb']:.0f} MB "
                f"| {_machine_short(r['machine'])} | {r['commit']} |"
            )
        out += ["", "Commands:", ""]
        out += ["- " + _command(r) for r in train]
        out.append("")
        for dataset, name in plots:
            out += [f"![{dataset} learning curves]({name})", ""]
    timing = [r for r in records if r["kind"] == "timing"]
    if timing:
        out += [
            "## Speed: one training epoch and one full-ranking evaluation",
            "",
            "| date | dataset (file) | recipe: model / loss | max len | train epoch | sequences/s | targets/s "
            "| evaluation (users x items) | users/s | ranks cut at max(ks) | peak mem | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in timing:
            ds = r["dataset"]
            after = f" (after epoch {r['from_epoch']})" if r.get("from_epoch") else ""  # from a trained model
            variant = [o for o in _overrides(r) if o.split("=", 1)[0] not in NEUTRAL_OVERRIDES]
            recipe = (Path(r.get("recipe", "")).stem or "?") + (f" ({', '.join(variant)})" if variant else "")
            out.append(
                f"| {r['date']} | {ds['dataset']} ({ds.get('file', '?')}) | {recipe}: {r['model']} / "
                f"{r['loss']} | {r['max_seq_len']} | {r['train_epoch_seconds']:.1f} s{after} "
                f"| {'–' if r.get('sequences_per_second') is None else format(r['sequences_per_second'], ',.0f')} | {r['targets_per_second']:,.0f} "
                f"| {r['eval_seconds']:.2f} s ({r['eval_users']:,} x {ds['items']:,}) | {r['eval_users_per_second']:,.0f} "
                f"| {'–' if r.get('cutoff_eval_seconds') is None else format(r['cutoff_eval_seconds'], '.2f') + ' s'} "
                f"| {r['peak_memory_mb']:.0f} MB | {_machine_short(r['machine'])} | {r['commit']} |"
            )
        out += ["", "Commands:", ""]
        out += ["- " + _command(r) for r in timing]
        out.append("")
    retrieval = [r for r in records if r["kind"] == "retrieval"]
    if retrieval:
        out += ["## Retrieval: FAISS indexes against exact search", ""]
        for r in retrieval:
            out += [
                f"{r['catalogue']} — {r['date']}, {_machine_short(r['machine'])}, commit {r['commit']}",
                "",
                "| index | parameters | build | queries/s | speed-up vs exact | recall@10 | NDCG@10 |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in r["rows"]:
                out.append(
                    f"| {row['index']} | {row['params']} | {row['build_seconds']:.2f} s "
                    f"| {row['queries_per_second']:,.0f} | {row['speedup_vs_exact']:.1f}x "
                    f"| {row['recall@10']:.3f} | {_fmt(row.get('ndcg@10'))} |"
                )
            out += ["", _command(r), ""]
    click = [r for r in records if r["kind"] == "click"]
    if click:
        out += [
            "## Click prediction (test split at the best validation epoch; mean ± std over seeds)",
            "",
            "| date | dataset | recipe | model | seeds | AUC | GAUC | log loss | samples (train / test) | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in click:
            s_ = r["summary"]
            cell = lambda m: f"{s_[f'test_{m}_mean']:.4f} ± {s_[f'test_{m}_std']:.4f}"  # noqa: E731
            out.append(
                f"| {r['date']} | {r['dataset']} | `{r['recipe']}` | {r['model']} | {len(r['per_seed'])} "
                f"| {cell('auc')} | {cell('gauc')} | {cell('logloss')} "
                f"| {r['samples']['train']:,} / {r['samples']['test']:,} | {_machine_short(r['machine'])} | {r['commit']} |"
            )
        out += ["", "Commands:", ""] + ["- " + _command(r) for r in click] + [""]
    for r in (r for r in records if r["kind"] == "dare_sweep"):
        out += [
            f"### DARE attention-dimension sweep — `{r['recipe']}`, {r['seeds']} seeds, {r['date']}, commit {r['commit']}",
            "",
            f"Stage-1 search: 256 histories of {r['history']:,} behaviours, median ms on {_machine_short(r['machine'])}.",
            "",
            "| attention dim | test AUC | test GAUC | stage-1 search |",
            "|---|---|---|---|",
        ]
        for row in r["rows"]:
            out.append(
                f"| {row['attention_dim']} | {row['test_auc_mean']:.4f} ± {row['test_auc_std']:.4f} "
                f"| {row['test_gauc_mean']:.4f} ± {row['test_gauc_std']:.4f} | {row['stage1_ms']:.2f} ms |"
            )
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "full_ce"):
        out += [
            f"## Full-softmax CE, one forward + backward — {r['date']}, {_machine_short(r['machine'])}, commit {r['commit']}",
            "",
            "| items | positions x dim | implementation | seconds | GFLOP/s (3 GEMMs) | peak RSS | plain logits + grad would need |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            gflops = 6 * row["positions"] * row["items"] * row["dim"] / row["seconds"] / 1e9
            out.append(
                f"| {row['items']:,} | {row['positions']:,} x {row['dim']} | {row['impl']} | {row['seconds']:.2f} "
                f"| {gflops:,.1f} | {row['peak_rss_mb']:,.0f} MB | {row['plain_logits_gb']:,.1f} GB |"
            )
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "cpu_gemm"):
        out += [
            f"## fp32 products on CPU: torch vs oneDNN — {r['date']}, {r['machine'].get('cpu', '?')}, "
            f"{_threads(r['threads'])}, commit {r['commit']}",
            "",
            "| product | torch GFLOP/s | oneDNN GFLOP/s | oneDNN / torch | max rel. difference |",
            "|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            out.append(
                f"| {row['product']} | {row['torch_gflops']:.0f} | {row['onednn_gflops']:.0f} "
                f"| {row['onednn_gflops'] / row['torch_gflops']:.2f}x | {row['max_rel_diff']:.1e} |"
            )
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "attention_cpu"):
        out += [
            f"## Causal attention on CPU — {r['date']}, {r['machine'].get('cpu', '?')}, {_threads(r['threads'])}, "
            f"commit {r['commit']}",
            "",
            "| batch x heads x length x dim | implementation | ms | vs SDPA | max abs. difference |",
            "|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            out.append(
                f"| {row['shape']} | {row['impl']} | {row['ms']:.1f} | {row['speedup']:.2f}x | {row['max_abs_diff']:.1e} |"
            )
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "eval_breakdown"):
        out += [
            f"## Evaluation time by part: {r['dataset']} {r['model']}, length {r['max_seq_len']}, "
            f"{r['num_users']:,} test users — {r['date']}, {_machine_short(r['machine'])}, commit {r['commit']}",
            "",
            f'eval.ranks = {r["ranks"]}, median of {r["repeats"]} interleaved runs; "attention skipped" replaces '
            "every all-position attention by a copy of its queries (wrong vectors, timing only).",
            "",
            "| variant | evaluation s (range) | encoder s | batches s | scores + ranks s | users/s |",
            "|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            low, high = row["total_seconds_range"]
            out.append(
                f"| {row['variant']} | {row['total_seconds']:.3f} ({low:.3f}-{high:.3f}) | {row['encoder_seconds']:.3f} "
                f"| {row['batches_seconds']:.3f} | {row['rest_seconds']:.3f} | {row['users_per_second']:,.0f} |"
            )
        flops = (
            f" One evaluation executed {r['eval_flops'] / 1e9:.2f} GFLOP of products and attention (counted), "
            f"{r['eval_flops'] / 1e9 / r['rows'][0]['total_seconds']:.1f} GFLOP/s at the median time as is."
            if r.get("eval_flops")
            else ""
        )
        if len(r["rows"]) == 3:  # as is (fused CPU encoder), its PyTorch path, that path without attention
            summary = (
                f"The fused CPU encoder made this evaluation {r['rows'][1]['total_seconds'] / r['rows'][0]['total_seconds']:.2f}x "
                f"faster than the PyTorch path, on which an attention costing nothing would have made it at most "
                f"{r['attention_free_bound']:.2f}x faster."
            )
        else:
            summary = f"An attention costing nothing would make this evaluation at most {r['attention_free_bound']:.2f}x faster."
        out += ["", summary + flops, "", _command(r), ""]
    for r in (r for r in records if r["kind"] == "cold_start"):
        out += [
            f"## Cold start: {r['dataset']}, {r['cold_items']:,} items held out of training ({r['fraction']:.0%}, "
            f"seed {r['seed']}) — {r['date']}, commit {r['commit']}",
            "",
            f"{r['cold_targets']:,} of {r['test_targets']:,} test targets are held-out items. Leave-one-out, all items "
            "ranked, seen items excluded; the ID model's held-out items keep their untrained embeddings.",
            "",
            "| model | held-out targets NDCG@10 | HR@10 | seen-item targets NDCG@10 | HR@10 | epochs (best) | s / epoch |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            ep = f"{row['epochs_run']} ({row['best_epoch']})" if "epochs_run" in row else ""
            spe = f"{row['seconds_per_epoch']:.1f}" if "seconds_per_epoch" in row else ""
            out.append(
                f"| {row['model']} | {row['cold']['ndcg@10']:.4f} | {row['cold']['hr@10']:.4f} "
                f"| {row['warm']['ndcg@10']:.4f} | {row['warm']['hr@10']:.4f} | {ep} | {spe} |"
            )
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "zero_shot"):
        out += [
            f"## Zero-shot: {r['model']} trained on {r['source']}, evaluated on {r['target']} — {r['date']}, "
            f"commit {r['commit']}",
            "",
            f"No training on {r['target']}: its {r['items']:,} items are scored from their own text "
            f"({r['test_users']:,} test users, leave-one-out, all items ranked, seen items excluded). "
            f"On its own test split the model had NDCG@10 {r['source_run']['ndcg@10']:.4f}.",
            "",
            "| scorer | NDCG@10 | HR@10 |",
            "|---|---|---|",
        ]
        out += [f"| {k} | {v['ndcg@10']:.4f} | {v['hr@10']:.4f} |" for k, v in r["rows"].items()]
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "recformer_tokens"):
        out += [
            f"## Token-level Recformer on CPU: {r['dataset']} — {r['date']}, {_machine_short(r['machine'])}, "
            f"commit {r['commit']}",
            "",
            f"Histories of up to {r['max_items']} items x {r['tokens_per_item']} tokens (MiniLM, 6 layers); "
            f"batches of {r['batch_size']} histories (mean {r['mean_history_tokens']:.0f} tokens).",
            "",
            "| what | measured | per epoch |",
            "|---|---|---|",
            f"| training step | {r['step_seconds']:.2f} s | {r['steps_per_epoch']:,} steps = "
            f"{r['steps_per_epoch'] * r['step_seconds'] / 60:.1f} min |",
            f"| re-encode the catalogue | {r['encode_catalogue_seconds']:.1f} s | once per stage-1 epoch |",
            f"| encode one user (evaluation) | {r['user_encode_ms']:.0f} ms | |",
            f"| stage-1 epoch | | {r['epoch_seconds'] / 60:.1f} min |",
            "",
            _command(r),
            "",
        ]
    for r in (r for r in records if r["kind"] == "peer_recbole"):
        partial = r.get("recbole_batches")
        model = {"sasrec": "SASRec", "bert4rec": "BERT4Rec"}[r.get("model", "sasrec")]
        details = (f"; ours with {r['ce_dtype']} logit GEMMs" if r.get("ce_dtype", "float32") != "float32" else "") + (
            f"; mask probability {r['mask_prob']} on both sides" if r.get("mask_prob") is not None else ""
        )
        out += [
            f"## Peer: RecBole 1.2.1 {model} vs ours — {r['dataset']}, max length {r['max_len']}, {r['date']}, "
            f"{_machine_short(r['machine'])}, commit {r['commit']}",
            "",
            (
                "Same data order, leave-one-out split, full-CE loss, model size and max length; batch "
                f"{r['our_batch_size']} sequences ours (about RecBole's targets per update), 128 prefix samples "
                "(128 targets) RecBole; "
                if r.get("our_batch_size", 128) != 128
                else "Same data order, leave-one-out split, full-CE loss, model size, max length and batch size; "
            )
            + (f"learning rate {r['lr']} ours, {r['recbole_lr']} RecBole" if "lr" in r else "learning rate 0.001")
            + "; each side in its own process, one after the other, "
            + f"{_threads(r['threads'])}{details}. "
            + (
                "Our evaluation ranks exactly up to rank 20 (`eval.ranks=cutoff`, the same @k metrics); the "
                "'every exact rank' row evaluates the same test set again with `eval.ranks=all`. "
                if "evaluation users / s, every exact rank" in r["rows"]
                else ""
            )
            + (
                f"Evaluation times are the median of {r['eval_repeats']} evaluations on each side. "
                if r.get("eval_repeats", 1) > 1
                else ""
            )
            + (
                f"Ours trained {r['epochs']} epoch(s) first, RecBole stopped once it had trained as many targets "
                "(to the batch): quality compared at equal targets."
                if r.get("equal_targets")
                else f"RecBole trained {partial} batches (an epoch would take too long), ours {r['epochs']} epoch(s): "
                "throughput only, quality not comparable."
                if partial
                else f"Both trained {r['epochs']} epoch(s)."
            ),
            "",
            "| | ours | RecBole | ours / RecBole |",
            "|---|---|---|---|",
        ]
        for name, v in r["rows"].items():
            ratio = "—" if (partial and name.startswith("test")) else f"{v['ours'] / v['recbole']:.2f}x"
            out.append(f"| {name} | {v['ours']:,.4g} | {v['recbole']:,.4g} | {ratio} |")
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "startup"):
        out += [
            f"## Command-line start-up — {r['date']}, {_machine_short(r['machine'])}, commit {r['commit']}",
            "",
            "Each command a fresh process (the installed `recsys` script), median of "
            f"{len(r['rows'][0]['seconds'])} runs.",
            "",
            "| command | median seconds | imports torch |",
            "|---|---|---|",
        ]
        out += [f"| `{row['command']}` | {row['median_seconds']:.3f} | {row['imports_torch']} |" for row in r["rows"]]
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "library_ab"):
        out += [
            f"## Hand-written parts vs their library — `{r['recipe']}`, {r['date']}, {_machine_short(r['machine'])}, "
            f"commit {r['commit']}",
            "",
            f"One training epoch and one test evaluation per process, {r['rounds']} processes each, alternating; "
            "medians. Gain = library / ours - 1, of seconds and of peak resident memory (a part stays hand-written "
            "only at >= 10%).",
            "",
            "| part | epoch ours | epoch library | gain | evaluation ours | evaluation library | gain "
            "| peak RSS ours | peak RSS library | gain |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            rss = (
                f"{row['ours_peak_rss_mb']:,.0f} MB | {row['library_peak_rss_mb']:,.0f} MB | {row['rss_gain']:+.1%}"
                if "rss_gain" in row
                else "– | – | –"
            )
            out.append(
                f"| {row['part']} | {row['ours_train_seconds']:.2f} s | {row['library_train_seconds']:.2f} s | "
                f"{row['train_gain']:+.1%} | {row['ours_eval_seconds']:.3f} s | {row['library_eval_seconds']:.3f} s | "
                f"{row['eval_gain']:+.1%} | {rss} |"
            )
        out += ["", _command(r), ""]
    policies = [r for r in records if r["kind"] == "tie_policy"]
    if policies:
        out += [
            "## Tie and repeat-target policies on trained models (one checkpoint, test split)",
            "",
            "The same best checkpoint evaluated under each `eval.tie_policy` and `eval.repeat_targets`; "
            'the defaults are expected / exclude. "users with ties": test users with at least one item '
            "scored exactly like their target.",
            "",
            "| date | dataset | model | ties | repeat targets | HR@10 | NDCG@10 | MRR | users with ties (in top 10) "
            "| repeat targets | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in policies:
            for row in r["rows"]:
                ties = (
                    f"{row['users_with_ties']:,} ({row['users_with_ties_in_top10']:,})"
                    if "users_with_ties" in row
                    else ""
                )
                out.append(
                    f"| {r['date']} | {r['dataset']['dataset']} | {r['model']} | {row['tie_policy']} | "
                    f"{row['repeat_targets']} | {row['hr@10']:.6f} | {row['ndcg@10']:.6f} | {row['mrr']:.6f} | "
                    f"{ties} | {r['repeat_targets']:,} of {r['num_users']:,} | {_machine_short(r['machine'])} | "
                    f"{r['commit']} |"
                )
        out += [""] + [_command(r) for r in policies] + [""]
    scale = [r for r in records if r["kind"] == "eval_scale"]
    if scale:
        out += [
            "## Full-ranking evaluation at catalogue scale",
            "",
            "Every user against every item (seen items excluded, strict ranks) through the shared evaluator, "
            "in blocks of users whose [items x users] scores stay under `eval.max_block_mb`.",
            "",
            "| date | users | items | d | threads | seconds | users/s | user block | peak RSS | one dense score matrix | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scale:
            out.append(
                f"| {r['date']} | {r['users']:,} | {r['items']:,} | {r['dim']} | {r['threads']} | {r['seconds']:.1f} "
                f"| {r['users_per_second']:,.0f} | {r['block_users']} | {r['peak_rss_mb']:,.0f} MB "
                f"| {r['dense_scores_gb']:,.0f} GB | {r['commit']} |"
            )
        out += ["", "Commands:", ""] + ["- " + _command(r) for r in scale] + [""]
    ingest = [r for r in records if r["kind"] == "ingest"]
    if ingest:
        out += [
            "## Ingest: a synthetic log to jagged, memory-mappable sequences",
            "",
            "| date | events | users | items | Parquet | read | prepare | save | total | peak memory | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ingest:
            out.append(
                f"| {r['date']} | {r['events']:,} | {r['users']:,} | {r['items']:,} | {r['file_mb']:.0f} MB "
                f"| {r['read_seconds']:.1f} s | {r['prepare_seconds']:.1f} s | {r['save_seconds']:.1f} s "
                f"| {r['total_seconds']:.1f} s | {r['peak_rss_mb']:,.0f} MB | {_machine_short(r['machine'])} "
                f"| {r['commit']} |"
            )
        cached = [r for r in ingest if "custom_cached_seconds" in r]
        if cached:
            out += [
                "",
                "The same log as a run's custom dataset (`prepare_data`, split included), first run and next run:",
                "",
                "| date | events | first run | its peak memory | next run (cache) | its peak memory | commit |",
                "|---|---|---|---|---|---|---|",
            ]
            out += [
                f"| {r['date']} | {r['events']:,} | {r['custom_first_seconds']:.1f} s | {r['custom_first_peak_rss_mb']:,.0f} MB "
                f"| {r['custom_cached_seconds']:.2f} s | {r['custom_cached_peak_rss_mb']:,.0f} MB | {r['commit']} |"
                for r in cached
            ]
        out += ["", "Commands:", ""] + ["- " + _command(r) for r in ingest] + [""]
    kernels = [r for r in records if r["kind"] == "kernels"]
    for r in kernels:
        out += [
            f"## HSTU attention kernels — {r['machine'].get('gpu', '?')}, {r['date']}, commit {r['commit']}",
            "",
            f"{r['dtype']}, heads {r['heads']}, head dim {r['dim']}, ~{r['tokens']:,} tokens per batch; "
            "TFLOP/s count causal pairs only, backward = 2.5x forward.",
            "",
            "| N | batch | implementation | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | peak MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in sorted(r["rows"], key=lambda row: row["N"]):
            err = row.get("max_rel_error_vs_reference")
            parity = f" (max rel. error vs fp32 reference {err:.1e})" if err is not None else ""
            if "error" in row:
                out.append(f"| {row['N']} | {row['batch']} | {row['impl']} | {row['error']} | | | | |")
            else:
                out.append(
                    f"| {row['N']} | {row['batch']} | {row['impl']}{parity} | {row['fwd_ms']:.2f} "
                    f"| {row['fwd_tflops']:.1f} | {row['fwdbwd_ms']:.2f} | {row['fwdbwd_tflops']:.1f} "
                    f"| {row['fwdbwd_peak_mb']:.0f} |"
                )
        out += ["", _command(r), ""]
    for r in (r for r in records if r["kind"] == "gpu_check"):
        out += [
            f"## GPU check — {r['machine'].get('gpu', '?')}, {r['date']}, commit {r['commit']}",
            "",
            f"- Kernel parity tests on the GPU (`{r['parity_command']}`): {r['parity_result']}",
            *[f"- SDPA backends: {line}" for line in r["sdpa"]],
            f"- {r['training_title']}:",
            "",
            "| backend | train loss per epoch | seconds per epoch | test HR@10 | test NDCG@10 |",
            "|---|---|---|---|---|",
        ]
        for backend, run in r["training"].items():
            out.append(
                f"| {backend} | {', '.join(f'{x:.5f}' for x in run['train_loss'])} "
                f"| {', '.join(f'{x:.1f}' for x in run['train_seconds'])} | {run['hr@10']:.4f} "
                f"| {run['ndcg@10']:.4f} |"
            )
        out += ["", _command(r), ""]
    return "\n".join(out)


def write_markdown(jsonl: str | Path, out: str | Path, references: str | Path | None = None) -> None:
    refs = {}
    ref_path = Path(references) if references else Path(__file__).resolve().parents[1] / "recipes" / "published.toml"
    if ref_path.exists():
        with open(ref_path, "rb") as f:
            refs = tomllib.load(f)
    records = read_records(jsonl)
    plots = plot_learning_curves(records, Path(out).parent)
    rearec_plot = plot_rearec(records, Path(out).parent)
    atomic_write_bytes(Path(out), render_markdown(records, refs, plots, rearec_plot).encode())


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="render RESULTS.md from a results JSONL")
    parser.add_argument("jsonl", nargs="?", default=str(here / "results"), help="a JSONL file or a folder of them")
    parser.add_argument("--out", default=str(here / "RESULTS.md"))
    args = parser.parse_args()
    write_markdown(args.jsonl, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
