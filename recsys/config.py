"""Run configuration: plain dataclasses, read from a TOML recipe plus ``--set key=value`` overrides.

A recipe has the sections ``[data]``, ``[model]`` (``name`` picks the encoder, the other keys are that
encoder's config fields), ``[loss]``, ``[train]`` and ``[eval]``. Every key and value is checked against
the dataclass field it sets: an unknown key or a bad value is a :class:`ConfigError` that names the key
and what is allowed. Nothing is evaluated as code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import RecsysError


class ConfigError(RecsysError, ValueError):
    """A recipe or override that does not fit the configuration schema."""


@dataclass
class DataConfig:
    dataset: str = "ml-100k"  # a card in datasets/, or "custom" with path + reader (+ columns)
    data_dir: str | None = None  # default: $RECSYS_DATA
    path: str | None = None  # custom file
    reader: str | None = None  # custom file's reader (see recsys.data.readers.READERS)
    # custom CSV / Parquet / JSON lines: canonical name -> the file's column, by name or 1-based position
    columns: dict[str, str | int] | None = None
    separator: str | None = None  # custom CSV: field separator (default: tab for .tsv / .tab files, else ",")
    header: bool = True  # custom CSV: the first line names the columns (false: name them by position)
    encoding: str = "utf-8"  # custom CSV / JSON lines: the text's encoding (a Python codec name, e.g. "latin-1")
    timestamp_format: str | None = None  # custom CSV/Parquet: strftime format of text timestamps (default: inferred)
    # custom logs: numeric timestamps' unit; auto: epoch times of 1e11 and more are milliseconds (1e14
    # microseconds, 1e17 nanoseconds), smaller ones seconds (every time is kept in seconds)
    timestamp_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    min_rating: float | None = None  # keep only interactions rated at least this (explicit-feedback logs)
    events: tuple[str, ...] | None = None  # keep only these event types (the log's 'event' column), e.g. ["view"]
    dedupe: Literal["none", "first", "last"] = "none"  # repeated (user, item) pairs: keep all, the first or the last
    k_core: int = 0  # > 0: drop users and items with fewer interactions, repeatedly, until none is left
    # leave_one_out: each user's last item is the test target, the one before it validation; hstu: the last
    # item of held-out users (no validation); temporal: by global time cuts (valid_cut, test_cut)
    split: Literal["leave_one_out", "hstu", "temporal"] = "leave_one_out"
    valid_cut: float | None = None  # temporal: a timestamp, or a quantile in (0, 1)
    test_cut: float | None = None  # temporal: a timestamp, or a quantile in (0, 1)
    cold_item_fraction: float = 0.0  # > 0: hold this share of items out of training (cold-start test targets)
    cold_item_seed: int = 0  # which items are held out (cold_item_fraction > 0)


@dataclass
class LossConfig:
    name: Literal["ce", "sampled_softmax", "bce", "gbce"] = "ce"  # the loss (recsys.losses)
    num_negatives: int = 128  # sampled_softmax / gbce (bce always uses one)
    negatives_shared: Literal["batch", "sequence", "position"] = "sequence"
    temperature: float = 1.0  # logits divided by this (with l2_normalize: cosine / temperature)
    l2_normalize: bool = False  # score by cosine: user and item vectors scaled to unit length
    gbce_t: float = 0.75  # gbce: calibration t in [0, 1] (gSASRec)
    ce_chunk_size: int = 128  # ce: positions per logits block (bounds memory, keeps blocks in cache)
    # ce: dtype of the logit GEMMs; "auto" = bfloat16 where bf16 products run on bf16 units (CUDA, CPUs
    # with AVX512-BF16 / AMX), float32 elsewhere (emulated bf16 is many times slower than fp32 there)
    ce_matmul_dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    ce_item_chunk_size: int = 0  # ce: items per logits block (online log-sum-exp); 0 = whole catalogue
    # sampled_softmax: this many of the batch's own targets as extra negatives, shared by every position
    # (drawn uniformly among the batch's targets, i.e. by item popularity: "mixed negative sampling")
    in_batch_negatives: int = 0
    # sampled_softmax: subtract log(expected draws of the item) from every logit (Yi et al. 2019), so
    # popular items that turn up often as in-batch negatives are not over-penalised
    logq_correction: bool = False


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (1, 5, 10, 20)  # cut-offs of HR@k, NDCG@k, MRR@k
    exclude_seen: bool = True  # the items of a user's history are not candidates
    block_size: int = 512  # users per GEMM block (fewer when the catalogue is large, see max_block_mb)
    max_block_mb: int = 512  # bound on one block of scores [items, users]: memory does not grow with the catalogue
    # how items scored exactly like the target count (recsys.metrics): "expected" averages over a random
    # order of them; "optimistic" / "pessimistic" put the target first / last among them
    tie_policy: Literal["expected", "optimistic", "pessimistic"] = "expected"
    # with exclude_seen, a target that repeats an item of the user's history (docstring):
    # "exclude": it is excluded like every seen item, so the user counts as a miss (RecBole's protocol);
    # "keep": it stays a candidate while the rest of the history is removed (tells the model the answer);
    # "apart": such users are ranked against every item, history included, and reported on their own
    repeat_targets: Literal["exclude", "keep", "apart"] = "exclude"
    early_stopping_metric: str = "ndcg@10"
    # "all": every user's exact rank, every metric; "cutoff": exact ranks up to max(ks) only, found from
    # the most frequent items first: the same @k metrics, no uncut MRR, several times faster (docstring)
    ranks: Literal["all", "cutoff"] = "all"
    popular_items: int = 2040  # items every user is scored against first under ranks="cutoff"
    # history positions per encoder call (a block's users go through the encoder in slices of at most
    # this many [users x length] positions): the encoder's intermediates stay small and are reused from
    # the heap (one call per block of 512 users at length 200 was slower); the best value depends on the
    # CPU (a larger one suited a CPU without AVX-512); the metrics do not depend on it
    encoder_tokens: int = 8192
    # legacy sampled metrics (as in BERT4Rec's paper), off by default: > 0 ranks each target against this
    # many sampled items instead of the whole catalogue; results are labelled (``protocol``)
    sampled_negatives: int = 0
    negative_sampling: Literal["uniform", "popularity"] = "uniform"  # popularity: by the item's count in the log
    negative_seed: int = 0  # sampled metrics: seed of the sampled items


@dataclass
class TrainConfig:
    epochs: int = 200  # at most this many epochs (early stopping may end sooner)
    batch_size: int = 128  # users (sequences) per step
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    max_grad_norm: float = 0.0  # 0 = no clipping
    # > 0: validation, the best checkpoint and the test read an exponential moving average of the weights
    # (torch.optim.swa_utils, updated after every step with this decay) instead of the last step's
    # weights; 0 = the trained weights themselves
    ema_decay: float = 0.0
    seed: int = 42  # seeds initialisation, data order, dropout and negatives
    patience: int = 10  # epochs without validation improvement before stopping; 0 = never stop early
    eval_every: int = 1  # validate every this many epochs
    num_threads: int = 0  # 0 = torch's default
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of the encoder (GPU: flash / mem-efficient SDPA)
    compile: bool = False  # torch.compile the encoder for training (CUDA; on CPU it warns: slower there)
    # a NaN or infinite loss or gradient: "stop" the run with an error naming the epoch and step, or
    # "skip" the step (no update; counted in the epoch's record and log)
    nonfinite: Literal["stop", "skip"] = "stop"
    # experiment tracking (recsys.tracking): "tensorboard" and / or "mlflow"
    loggers: tuple[str, ...] = ()
    mlflow_uri: str | None = None  # MLflow's tracking URI; default: a SQLite store in the run folder
    mlflow_experiment: str = "recsys"  # the MLflow experiment runs are logged under


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model_name: str = "sasrec"
    model: Any = None  # the encoder's config dataclass
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        out = {
            "data": dataclasses.asdict(self.data),
            "model": {"name": self.model_name, **dataclasses.asdict(self.model)},
            "loss": dataclasses.asdict(self.loss),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
        }
        return json.loads(json.dumps(out))  # tuples -> lists: a plain, JSON-able dict

    @property
    def max_seq_len(self) -> int:
        return self.model.max_seq_len


SECTIONS = {"data": DataConfig, "loss": LossConfig, "train": TrainConfig, "eval": EvalConfig}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def check_value(tp: Any, value: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(arg, value, key)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:  # an optional value: the one type's own message
            raise errors[0]
        kinds = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ConfigError(f"{key}: expected {kinds}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(check_value(a, v, key) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of {args}, got {value!r}")
        return {check_value(args[0], k, key): check_value(args[1], v, key) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # TOML has nan and inf; no setting means either
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def build_section(cls: type, values: dict, section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown key '{section}.{key}'; allowed keys in [{section}]: {names}")
    return cls(**{k: check_value(hints[k], v, f"{section}.{k}") for k, v in values.items()})


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.num_blocks=4"`` -> (["model", "num_blocks"], 4). Values are TOML; bare words are strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        if len(path) != 2:
            raise ConfigError(f"--set {text!r}: keys look like section.key, e.g. model.num_blocks=4")
        section, key = path
        if section not in (*SECTIONS, "model"):
            raise ConfigError(f"--set {text!r}: unknown section {section!r}; allowed: {[*SECTIONS, 'model']}")
        raw.setdefault(section, {})[key] = value
    return raw


def apply_settings(raw: dict, settings: dict) -> dict:
    """``raw`` with Python values set by dotted keys, e.g. ``{"model.hidden_dim": 64, "train.epochs": 3}`` (the
    Python API's form of ``--set``; values are checked like a recipe's)."""
    raw = json.loads(json.dumps(raw))
    for key, value in settings.items():
        parts = str(key).split(".")
        if len(parts) != 2:
            raise ConfigError(f"setting {key!r}: keys look like section.key, e.g. model.num_blocks")
        section, name = parts
        if section not in (*SECTIONS, "model"):
            raise ConfigError(f"setting {key!r}: unknown section {section!r}; allowed: {[*SECTIONS, 'model']}")
        raw.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
    return raw


def config_from_dict(raw: dict) -> RunConfig:
    for section in raw:
        if section not in (*SECTIONS, "model"):
            raise ConfigError(f"unknown section [{section}]; allowed: {[*SECTIONS, 'model']}")
    model_raw = dict(raw.get("model", {}))
    name = model_raw.pop("name", "sasrec")
    from .models.base import model_config_class  # the registry imports torch: only when a config is built

    try:
        model_cls = model_config_class(name)
    except KeyError as err:
        raise ConfigError(f"model.name: {err.args[0]}") from None
    cfg = RunConfig(
        data=build_section(DataConfig, raw.get("data", {}), "data"),
        model_name=name,
        model=build_section(model_cls, model_raw, "model"),
        loss=build_section(LossConfig, raw.get("loss", {}), "loss"),
        train=build_section(TrainConfig, raw.get("train", {}), "train"),
        eval=build_section(EvalConfig, raw.get("eval", {}), "eval"),
    )
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    checks = [
        ("train.epochs", cfg.train.epochs >= 1, ">= 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, ">= 1"),
        ("train.lr", cfg.train.lr > 0, "> 0"),
        ("train.patience", cfg.train.patience >= 0, ">= 0"),
        ("train.eval_every", cfg.train.eval_every >= 1, ">= 1"),
        ("loss.num_negatives", cfg.loss.num_negatives >= 1, ">= 1"),
        ("loss.temperature", cfg.loss.temperature > 0, "> 0"),
        ("loss.ce_chunk_size", cfg.loss.ce_chunk_size >= 1, ">= 1"),
        ("loss.in_batch_negatives", cfg.loss.in_batch_negatives >= 0, ">= 0"),
        (
            "loss.in_batch_negatives",
            cfg.loss.in_batch_negatives == 0 or cfg.loss.name == "sampled_softmax",
            "0 unless loss.name = 'sampled_softmax'",
        ),
        (
            "loss.logq_correction",
            not cfg.loss.logq_correction or cfg.loss.name == "sampled_softmax",
            "false unless loss.name = 'sampled_softmax'",
        ),
        ("loss.ce_item_chunk_size", cfg.loss.ce_item_chunk_size >= 0, ">= 0 (0: the whole catalogue)"),
        ("loss.gbce_t", 0 <= cfg.loss.gbce_t <= 1, "in [0, 1]"),
        ("train.seed", 0 <= cfg.train.seed < 2**32, "in [0, 2**32)"),
        ("train.weight_decay", cfg.train.weight_decay >= 0, ">= 0"),
        ("train.max_grad_norm", cfg.train.max_grad_norm >= 0, ">= 0 (0: no clipping)"),
        ("train.ema_decay", 0 <= cfg.train.ema_decay < 1, "in [0, 1) (0: no averaging)"),
        ("train.betas", all(0 <= b < 1 for b in cfg.train.betas), "two numbers in [0, 1)"),
        ("model.init_std", getattr(cfg.model, "init_std", 0.0) >= 0, ">= 0"),
        ("eval.ks", all(k >= 1 for k in cfg.eval.ks) and len(cfg.eval.ks) > 0, "positive integers"),
        ("eval.block_size", cfg.eval.block_size >= 1, ">= 1"),
        ("eval.ranks", cfg.eval.ranks in ("all", "cutoff"), "'all' or 'cutoff'"),
        ("eval.popular_items", cfg.eval.popular_items >= 1, ">= 1"),
        ("eval.encoder_tokens", cfg.eval.encoder_tokens >= 1, ">= 1"),
        ("eval.sampled_negatives", cfg.eval.sampled_negatives >= 0, ">= 0 (0: full ranking)"),
        (
            "eval.ranks",
            cfg.eval.sampled_negatives == 0 or cfg.eval.ranks == "all",
            "'all' with eval.sampled_negatives (sampled metrics rank a few items, nothing to cut)",
        ),
        ("model.max_seq_len", getattr(cfg.model, "max_seq_len", 1) >= 1, ">= 1"),
        ("model.hidden_dim", getattr(cfg.model, "hidden_dim", 1) >= 1, ">= 1"),
        ("model.num_heads", getattr(cfg.model, "num_heads", 1) >= 1, ">= 1"),
        ("model.num_blocks", getattr(cfg.model, "num_blocks", 1) >= 1, ">= 1"),
        ("model.ffn_dim", getattr(cfg.model, "ffn_dim", None) is None or cfg.model.ffn_dim >= 1, ">= 1 (or unset)"),
        ("model.dropout", 0 <= getattr(cfg.model, "dropout", 0.0) < 1, "in [0, 1)"),
        ("model.mask_prob", 0 < getattr(cfg.model, "mask_prob", 0.5) <= 1, "in (0, 1]"),
        ("model.reasoning_steps", getattr(cfg.model, "reasoning_steps", 0) >= 0, ">= 0 (0: no reasoning)"),
        *(
            (f"model.{k}", getattr(cfg.model, k, 0.0) >= 0, ">= 0")
            for k in ("reasoning_kl_weight", "reasoning_noise", "reasoning_contrastive_weight")
        ),
        ("model.reasoning_temperature_scale", getattr(cfg.model, "reasoning_temperature_scale", 1.0) > 0, "> 0"),
        (
            "model.reasoning_steps",
            not getattr(cfg.model, "reasoning_steps", 0) or not getattr(cfg.model, "attention_table_dim", None),
            "0 with model.attention_table_dim (ReaRec runs the plain blocks)",
        ),
        *(
            (f"model.{k}", getattr(cfg.model, k, None) is None or getattr(cfg.model, k) >= 1, ">= 1 (or unset)")
            for k in ("qk_dim", "v_dim", "attention_table_dim")
        ),
        ("train.num_threads", cfg.train.num_threads >= 0, ">= 0 (0: torch's default)"),
        ("train.loggers", set(cfg.train.loggers) <= {"tensorboard", "mlflow"}, "a list of 'tensorboard', 'mlflow'"),
        ("data.k_core", cfg.data.k_core >= 0, ">= 0"),
        ("data.cold_item_fraction", 0 <= cfg.data.cold_item_fraction < 1, "in [0, 1)"),
    ]
    # a model config may check its own settings: check() -> [(key under model., holds, what is allowed)]
    checks += [(f"model.{key}", ok, what) for key, ok, what in getattr(cfg.model, "check", lambda: [])()]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"{key} must be {what}")
    allowed_metrics = [f"{m}@{k}" for k in cfg.eval.ks for m in ("hr", "recall", "ndcg", "mrr")]
    if cfg.eval.ranks == "all":
        allowed_metrics.append("mrr")  # the uncut MRR needs every exact rank (recsys.evaluation)
    if cfg.eval.early_stopping_metric not in allowed_metrics:
        raise ConfigError(
            f"eval.early_stopping_metric: {cfg.eval.early_stopping_metric!r} is not computed; allowed: {allowed_metrics}"
        )


def read_recipe_file(path: str | Path) -> dict:
    """A recipe's TOML as a dict; a missing file or bad TOML is a ConfigError naming the file (and line)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe {path} not found")
    if not path.is_file():
        raise ConfigError(f"recipe {path} is not a file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None


def load_recipe(path: str | Path, overrides: list[str] = (), settings: dict | None = None) -> RunConfig:
    """A recipe with overrides applied. A relative ``data.path`` is taken from the working directory, or
    from the recipe's folder where only that holds the file, and made absolute: the run's config.json
    then finds the file from anywhere (evaluate, export)."""
    path = Path(path)
    raw = read_recipe_file(path)
    raw.pop("tune", None)  # the search space of `recsys tune` (recsys.tune), not a run setting
    try:
        cfg = config_from_dict(apply_settings(apply_overrides(raw, list(overrides)), settings or {}))
        if cfg.data.path and not Path(cfg.data.path).is_absolute():
            here, beside = Path(cfg.data.path), path.parent / cfg.data.path
            cfg.data.path = str((beside if beside.exists() and not here.exists() else here).resolve())
        return cfg
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
