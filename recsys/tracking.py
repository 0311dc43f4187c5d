"""Experiment tracking: a run's configuration, each epoch's record and its final metrics sent to
TensorBoard and / or MLflow (``train.loggers = ["tensorboard", "mlflow"]``).

- ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``); needs
  the ``tensorboard`` package.
- ``mlflow``: one MLflow run per recsys run, in ``train.mlflow_uri`` (default: a SQLite store in the run
  folder, ``sqlite:///RUN/mlflow.db``; ``mlflow ui --backend-store-uri`` that URI shows it), under the
  experiment ``train.mlflow_experiment``; needs the ``mlflow`` package.

Only the main process logs. A logger whose package is missing is a clear error before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import RecsysError

LOGGERS = ("tensorboard", "mlflow")


def _flat(prefix: str, values: dict, params: bool = False, sep: str = "/") -> dict:
    """A nested record as flat ``prefix/key`` names: numeric entries as floats (metrics), or with
    ``params`` every entry as text (MLflow parameters); '@' becomes '_at_' (not allowed in names)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flat(name, value, params, sep))
        elif params:
            out[name.replace("@", "_at_")] = str(value)[:500]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name.replace("@", "_at_")] = float(value)
    return out


class TensorBoardLogger:
    def __init__(self, run_dir: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise RecsysError(f"train.loggers: tensorboard needs the tensorboard package ({err})") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + _pretty(config) + "\n```")

    def log_epoch(self, record: dict) -> None:
        for name, value in _flat("", {k: v for k, v in record.items() if k != "epoch"}).items():
            self.writer.add_scalar(name, value, record["epoch"])
        self.writer.flush()

    def log_final(self, metrics: dict) -> None:
        for name, value in _flat("final", metrics).items():
            self.writer.add_scalar(name, value, 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    def __init__(self, run_dir: Path, config: dict, uri: str | None, experiment: str):
        try:
            import mlflow
        except ImportError as err:
            raise RecsysError(f"train.loggers: mlflow needs the mlflow package ({err})") from None
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_dir.name)
        params = _flat("", config, params=True, sep=".")
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            mlflow.log_params(dict(list(params.items())[start : start + 100]))

    def log_epoch(self, record: dict) -> None:
        self.mlflow.log_metrics(_flat("", {k: v for k, v in record.items() if k != "epoch"}), step=record["epoch"])

    def log_final(self, metrics: dict) -> None:
        self.mlflow.log_metrics(_flat("final", metrics))

    def close(self) -> None:
        self.mlflow.end_run()


def _pretty(config: dict) -> str:
    import json

    return json.dumps(config, indent=2)


def open_loggers(
    names: Sequence[str], run_dir: Path, config: dict, mlflow_uri: str | None = None, experiment: str = "recsys"
) -> list:
    """The loggers ``names`` asks for, opened (each an object with log_epoch, log_final and close)."""
    out = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardLogger(run_dir, config))
        elif name == "mlflow":
            out.append(MLflowLogger(run_dir, config, mlflow_uri, experiment))
        else:
            raise RecsysError(f"train.loggers: unknown logger {name!r}; allowed: {list(LOGGERS)}")
    return out
