"""Data layer: readers -> canonical interactions -> jagged sequences -> splits -> batches.

The names below are loaded on first use, so that importing one module of the package (the dataset
cards, say) does not import torch or polars."""

import importlib

_WHERE = {
    "EvalBatch": "batching",
    "TrainBatch": "batching",
    "iter_eval_batches": "batching",
    "iter_train_batches": "batching",
    "padded_windows": "batching",
    "list_cards": "cards",
    "load_card": "cards",
    "load_dataset": "cards",
    "SequenceData": "prepare",
    "prepare_sequences": "prepare",
    "DataError": "readers",
    "Interactions": "readers",
    "frame_to_interactions": "readers",
    "read_table": "readers",
    "EvalSet": "splits",
    "Split": "splits",
    "make_split": "splits",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
