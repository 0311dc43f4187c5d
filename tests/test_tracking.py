"""TensorBoard and MLflow logging of a real run, read back with the libraries themselves."""

from __future__ import annotations

import pytest

from recsys.config import ConfigError, load_recipe
from tests.conftest import REPO, needs_data

SMALL = [
    "model.hidden_dim=16",
    "model.num_blocks=1",
    "model.max_seq_len=20",
    "train.epochs=2",
    "train.patience=0",
    "train.num_threads=1",
    "eval.ks=[10]",
]


@needs_data("ml-100k")
def test_tensorboard_and_mlflow_get_every_epoch_and_the_final_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from recsys.train import make_trainer

    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", [*SMALL, 'train.loggers=["tensorboard", "mlflow"]'])
    out = make_trainer(cfg, tmp_path / "run", progress=False).fit()

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train_loss" in tags and "valid/ndcg_at_10" in tags and "final/test/ndcg_at_10" in tags
    assert [e.step for e in events.Scalars("valid/ndcg_at_10")] == [1, 2]
    assert events.Scalars("final/test/ndcg_at_10")[0].value == pytest.approx(out["test"]["ndcg@10"], rel=1e-6)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["recsys"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(runs[0].info.run_id, "valid/ndcg_at_10")
    assert [m.step for m in history] == [1, 2]
    assert runs[0].data.params["model.hidden_dim"] == "16"
    assert runs[0].data.metrics["final/test/ndcg_at_10"] == pytest.approx(out["test"]["ndcg@10"], rel=1e-6)


def test_an_unknown_logger_is_refused():
    with pytest.raises(ConfigError, match="train.loggers must be a list of 'tensorboard', 'mlflow'"):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ['train.loggers=["wandb"]'])
