"""``recsys tune RECIPE``: hyperparameter search on the validation split with Optuna.

The search space is the recipe's ``[tune.space]`` (or, where it has none, the model's built-in space,
:data:`SPACES`)::

    [tune]
    trials = 20            # default of --trials
    epochs = 30            # at most this many epochs per trial (the recipe's own for the final run)
    pruner = "median"      # "median", "hyperband" or "none": poor trials stop early on validation NDCG@10
    warmup_epochs = 5      # the median pruner stops no trial before this epoch (raise it for heavily
                           # regularised models, whose curves rise late)
    [tune.space]
    "train.lr" = { low = 1e-4, high = 1e-2, log = true }
    "model.dropout" = { low = 0.1, high = 0.6 }
    "model.num_blocks" = { low = 1, high = 3 }                         # integers: an integer range
    "model.hidden_dim" = { choices = [32, 64, 128] }
    "loss.num_negatives" = { choices = [64, 256], when = { "loss.name" = "sampled_softmax" } }

TPE samples each trial; each trial is a run in ``OUT/trial-N`` whose validation metric after every epoch
is reported to the pruner; its value is its best validation metric. The test split is never read while
searching: only the best trial's settings are trained again (``--seeds`` times) and tested, once, at the
end. The study lives in a journal file in ``OUT`` (``study.journal``; ``--storage`` takes a database URL
instead, so workers on several machines can share one study); a killed search resumes with ``--resume``
(trials the dead process left running are marked failed), and ``--workers N`` runs N processes on one
study (it stops starting trials once it holds ``--trials`` finished ones; the other workers' last trials
may finish too). At the end: the trials' table, the parameters' importances, the best recipe as ``OUT/best.toml``
and its test metrics.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

from .config import ConfigError, apply_overrides, apply_settings, config_from_dict, read_recipe_file
from .errors import RecsysError
from .files import atomic_write_bytes, atomic_write_json, make_folder, read_json

# built-in spaces by model, used when a recipe has no [tune.space]: the usual levers of these models
# (learning rate, regularisation, width, depth) and the history length and batch size, which depend on
# how long the file's histories are
_COMMON = {
    "train.lr": {"low": 2e-4, "high": 5e-3, "log": True},
    "model.dropout": {"low": 0.1, "high": 0.6},
    "model.hidden_dim": {"choices": [32, 64, 128]},
    "model.num_blocks": {"low": 1, "high": 3},
    "model.max_seq_len": {"choices": [50, 100, 200]},
    "train.batch_size": {"choices": [64, 128, 256]},
    "train.weight_decay": {"choices": [0.0, 0.01, 0.1]},
}
SPACES = {
    "sasrec": _COMMON,
    "bert4rec": {**_COMMON, "model.mask_prob": {"low": 0.1, "high": 0.6}},
    "hstu": {**_COMMON, "loss.temperature": {"low": 0.03, "high": 0.3, "log": True}},
    "recformer": {**_COMMON, "loss.temperature": {"low": 0.02, "high": 0.2, "log": True}},
    "item_cooc": {"model.window": {"low": 1, "high": 5}, "model.decay": {"low": 0.3, "high": 1.0}},
}


def _optuna():
    try:
        import optuna
    except ImportError as err:
        raise RecsysError(f"recsys tune needs Optuna: pip install optuna ({err})") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def tune_settings(raw: dict) -> tuple[dict, dict]:
    """(the recipe's [tune] options, its search space), the space checked key by key."""
    options = dict(raw.get("tune", {}))
    space = options.pop("space", None) or SPACES.get(raw.get("model", {}).get("name", "sasrec"))
    if not space:
        raise ConfigError("[tune.space] is empty and this model has no built-in space; declare one in the recipe")
    base = {k: v for k, v in raw.items() if k != "tune"}
    for key, spec in space.items():
        _check_range(key, spec)
        when = spec.get("when", {})
        if when:  # the condition's keys and values are settings of this recipe
            try:
                config_from_dict(apply_settings(base, when))
            except ConfigError as err:
                named = next((k for k in when if str(err).startswith(k) or repr(k) in str(err)), None)
                if named is not None:
                    raise ConfigError(f"[tune.space] {key}: when {named} = {when[named]!r}: {err}") from None
        # every value the search may try must be a valid setting on this recipe (under its condition);
        # a check that another key decides (one of two settings that must agree) is left to the trial
        for value in spec["choices"] if "choices" in spec else (spec["low"], spec["high"]):
            try:
                config_from_dict(apply_settings(base, {**when, key: value}))
            except ConfigError as err:
                if str(err).startswith(key) or repr(key) in str(err):
                    raise ConfigError(f"[tune.space] {key} = {value!r}: {err}") from None
    for key in options:
        if key not in ("trials", "epochs", "pruner", "warmup_epochs", "metric"):
            raise ConfigError(
                f"[tune] unknown key {key!r}; allowed: trials, epochs, pruner, warmup_epochs, metric, space"
            )
    warmup = options.setdefault("warmup_epochs", 5)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"[tune] warmup_epochs: a whole number of epochs >= 0, got {warmup!r}")
    return options, space


def _check_range(key: str, spec) -> None:
    """One [tune.space] entry's form: low / high (log, step) or a non-empty list of choices, and when."""
    if "." not in key:
        raise ConfigError(f"[tune.space] {key}: keys look like section.key")
    if not isinstance(spec, dict) or not ({"low", "high"} <= set(spec) or "choices" in spec):
        raise ConfigError(f"[tune.space] {key}: give low and high (and log / step), or choices")
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices", "when"})
    if unknown:
        raise ConfigError(
            f"[tune.space] {key}: unknown field(s) {unknown}; allowed: low, high, log, step, choices, when"
        )
    when = spec.get("when", {})
    if not isinstance(when, dict) or not all(isinstance(k, str) and "." in k for k in when):
        raise ConfigError(f'[tune.space] {key}: when = {{ "section.key" = value, ... }}, got {when!r}')
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"[tune.space] {key}: choices must be a non-empty list, got {spec['choices']!r}")
        return
    low, high = spec["low"], spec["high"]
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in (low, high)):
        raise ConfigError(f"[tune.space] {key}: low and high must be numbers, got {low!r} and {high!r}")
    if not low < high:
        raise ConfigError(f"[tune.space] {key}: low must be below high")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"[tune.space] {key}: a log scale needs low > 0, got {low!r}")
    step = spec.get("step")
    if step is not None and not (isinstance(step, (int, float)) and 0 < step <= high - low):
        raise ConfigError(f"[tune.space] {key}: step must be in (0, high - low], got {step!r}")
    if step is not None and all(isinstance(b, int) for b in (low, high)) and not isinstance(step, int):
        raise ConfigError(f"[tune.space] {key}: an integer range takes an integer step, got {step!r}")
    if step is not None and spec.get("log"):
        raise ConfigError(f"[tune.space] {key}: step and log cannot be combined")


def sample(trial, space: dict, raw: dict) -> dict:
    """One trial's settings: each key of ``space`` whose ``when`` holds for the recipe and the keys sampled
    before it."""

    def current(key):
        section, name = key.split(".", 1)
        return chosen.get(key, raw.get(section, {}).get(name))

    chosen: dict = {}
    for key, spec in space.items():
        if any(current(k) != v for k, v in spec.get("when", {}).items()):
            continue
        if "choices" in spec:
            chosen[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif all(isinstance(spec[b], int) and not isinstance(spec[b], bool) for b in ("low", "high")):
            chosen[key] = trial.suggest_int(key, spec["low"], spec["high"], step=int(spec.get("step", 1)))
        else:
            step = float(spec["step"]) if spec.get("step") is not None else None
            chosen[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")), step=step
            )
    return chosen


def _storage(optuna, out: Path, url: str | None):
    if url:
        return url
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # Optuna 3
        from optuna.storages import JournalFileStorage as JournalFileBackend
    return JournalStorage(JournalFileBackend(str(out / "study.journal")))


def _pruner(optuna, name: str, warmup_epochs: int):
    if name == "median":  # not before 3 trials have finished, nor in a trial's first epochs (slow starters)
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"[tune] pruner: 'median', 'hyperband' or 'none', got {name!r}")


def _fail_stale_trials(optuna, study) -> int:
    """Trials left RUNNING by a process of this host that is gone (a killed search): marked failed."""
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if host == socket.gethostname() and pid and not _alive(pid):
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            failed += 1
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_study(
    recipe: Path,
    out: Path,
    overrides: list[str],
    trials: int | None,
    timeout: float | None,
    storage: str | None,
    threads: int,
    progress: bool,
) -> object:
    """Optimise the study in ``out`` in this process until it holds ``trials`` finished trials."""
    optuna = _optuna()
    from .train import make_trainer, prepare_data

    raw = apply_overrides(read_recipe_file(recipe), overrides)
    options, space = tune_settings(raw)
    trials = trials or int(options.get("trials", 20))
    metric = options.get("metric", raw.get("eval", {}).get("early_stopping_metric", "ndcg@10"))
    base = {k: v for k, v in raw.items() if k != "tune"}
    base_cfg = config_from_dict(base)
    if base_cfg.data.split == "hstu":
        raise ConfigError("recsys tune selects on the validation split; the hstu split has none")
    data = prepare_data(base_cfg.data, verbose=False)
    study = optuna.create_study(
        study_name="recsys",
        storage=_storage(optuna, out, storage),
        sampler=optuna.samplers.TPESampler(seed=None),
        pruner=_pruner(optuna, options.get("pruner", "median"), options["warmup_epochs"]),
        direction="maximize",
        load_if_exists=True,
    )
    _fail_stale_trials(optuna, study)

    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        chosen = sample(trial, space, base)
        settings = {**chosen, "train.num_threads": threads, "eval.early_stopping_metric": metric}
        if "epochs" in options:
            settings["train.epochs"] = min(int(options["epochs"]), base_cfg.train.epochs)
        cfg = config_from_dict(apply_settings(base, settings))
        trainer = make_trainer(cfg, out / f"trial-{trial.number:03d}", data=data, progress=False, verbose=False)
        trainer.test_at_end = False  # selection on validation only

        def report(epoch: int, valid: dict) -> None:
            trial.report(valid[metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {metric} {valid[metric]:.4f} at epoch {epoch}")

        trainer.on_validation = report
        result = trainer.fit()
        value = result["valid"][metric]
        if not math.isfinite(value):
            raise RecsysError(f"trial {trial.number}: validation {metric} is {value}")
        if progress:
            print(f"trial {trial.number}: valid {metric} {value:.4f}  {json.dumps(chosen)}", flush=True)
        return value

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    callback = optuna.study.MaxTrialsCallback(trials, states=finished)
    if len(study.get_trials(deepcopy=False, states=finished)) < trials:
        study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[callback], catch=(RecsysError,))
    return study


def tune(args) -> int:
    """The ``recsys tune`` command (workers, the study, the summary, the best recipe and its test run)."""
    from .recipe_index import resolve_recipe

    for flag, value, ok in (
        ("--trials", args.trials, args.trials is None or args.trials >= 1),
        ("--timeout", args.timeout, args.timeout is None or (math.isfinite(args.timeout) and args.timeout > 0)),
        ("--workers", args.workers, args.workers >= 1),
        ("--threads", args.threads, not args.threads or args.threads >= 1),
        ("--seeds", args.seeds, args.seeds is None or args.seeds >= 1),
    ):
        if not ok:  # said before anything is written
            raise ConfigError(f"{flag} must be {'> 0' if flag == '--timeout' else '>= 1'}, got {value}")
    recipe = resolve_recipe(args.recipe)
    out = Path(args.out or Path("runs") / f"tune-{recipe.parent.name}-{recipe.stem}")
    if out.exists() and any(out.iterdir()) and not (args.resume or args.worker):
        raise FileExistsError(f"{out} already holds a study; use --resume or another --out")
    make_folder(out)
    workers = args.workers
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    if args.worker:  # a process started by the main one: optimise and leave the summary to it
        run_study(recipe, out, args.set, args.trials, args.timeout, args.storage, threads, progress=False)
        return 0
    others = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recsys.cli",
                "tune",
                str(recipe),
                "--out",
                str(out),
                "--worker",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
            ]
            + [x for s in args.set for x in ("--set", s)]
            + (["--trials", str(args.trials)] if args.trials else [])
            + (["--timeout", str(args.timeout)] if args.timeout else [])
            + (["--storage", args.storage] if args.storage else [])
        )
        for _ in range(workers - 1)
    ]
    try:
        study = run_study(recipe, out, args.set, args.trials, args.timeout, args.storage, threads, progress=True)
    finally:
        for process in others:
            process.wait()
    return summarize(study, recipe, out, args)


def summarize(study, recipe: Path, out: Path, args) -> int:
    optuna = _optuna()
    trials = study.get_trials(deepcopy=False)
    print(f"\n{len(trials)} trials in {out}:")
    print(f"  {'trial':>5}  {'state':9s}  {'valid':>7}  settings")
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        print(f"  {t.number:5d}  {t.state.name:9s}  {value:>7}  {json.dumps(t.params)}")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RecsysError(f"{out}: no trial finished; nothing to report")
    best = study.best_trial
    importances = {}
    if len(complete) >= 2 and len(best.params) > 1:
        importances = optuna.importance.get_param_importances(study)
        print("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    raw = apply_overrides(read_recipe_file(recipe), args.set)
    raw.pop("tune", None)
    best_raw = apply_settings(raw, best.params)
    from .start_here import toml_text

    best_path = out / "best.toml"
    header = f"# The best of {len(complete)} completed trials of `recsys tune` on {recipe.name} (validation {best.value:.4f})\n"
    atomic_write_bytes(best_path, (header + toml_text(best_raw)).encode())
    print(f"best trial {best.number}: valid {best.value:.4f}; recipe written to {best_path}")
    atomic_write_json(
        out / "summary.json",
        {
            "best_trial": best.number,
            "best_valid": best.value,
            "best_params": best.params,
            "importances": importances,
            "trials": [
                {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params} for t in trials
            ],
        },
    )
    status = 0
    if not args.no_final:
        from .cli.train import cmd_train  # the best recipe trained again and tested, once

        final = ["--run-dir", str(out / "best"), "--quiet"] + (["--seeds", str(args.seeds)] if args.seeds else [])
        status = cmd_train(_train_args(best_path, final, args))
    if args.log_results and status == 0:
        log_study(args, recipe, out, trials, best, importances)
    return status


RESULTS_FOLDER = "benchmarks/results"  # where --log-results appends, as recsys train --log-results does


def study_times(trials: list) -> dict:
    """The study's wall time (first trial's start to the last end) and the sum of its trials' times, from
    the trials that ran to their end: a failed trial's end is when a later ``--resume`` found its process
    dead, which may be hours after it stopped."""
    ran = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_start and t.datetime_complete]
    started = [t.datetime_start for t in trials if t.datetime_start]
    return {
        "study_wall_seconds": (max(t.datetime_complete for t in ran) - min(started)).total_seconds() if ran else None,
        "trial_seconds": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in ran),
    }


def log_study(args, recipe: Path, out: Path, trials: list, best, importances: dict) -> None:
    """A ``tune`` record in benchmarks/results/: the study's trials and time, the best trial's
    settings and validation metric, and the test metrics of the final runs of its settings in
    ``OUT/best`` (each seed's), when there are any."""
    import shlex

    from .recipe_index import recipe_label
    from .results import append_record, git_commit, make_record

    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    finals = sorted((out / "best").glob("seed-*/final_metrics.json")) or sorted(
        (out / "best").glob("final_metrics.json")
    )
    tests = [read_json(path, "final metrics")["test"] for path in finals]
    record = make_record(
        "tune",
        command="recsys " + shlex.join(args.argv),
        commit=git_commit(),
        recipe=recipe_label(recipe),
        trials=states,
        **study_times(trials),
        best_trial=best.number,
        best_valid=best.value,
        best_params=best.params,
        importances=importances,
        final_test=[{k: t[k] for k in ("ndcg@10", "hr@10") if k in t} for t in tests],
    )
    append_record(record, RESULTS_FOLDER)
    print(f"study appended to {RESULTS_FOLDER}/")


def _train_args(recipe: Path, extra: list[str], args):
    from .cli import build_parser

    argv = ["train", str(recipe), *extra] + (["--log-results"] if args.log_results else [])
    parsed = build_parser().parse_args(argv)
    parsed.argv = argv
    return parsed
