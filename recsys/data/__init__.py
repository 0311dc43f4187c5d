"""Data layer: readers -> canonical interactions -> jagged sequences -> splits -> batches."""

from .batching import EvalBatch, TrainBatch, iter_eval_batches, iter_train_batches, padded_windows
from .cards import list_cards, load_card, load_dataset
from .prepare import SequenceData, prepare_sequences
from .readers import DataError, Interactions, frame_to_interactions, read_table
from .splits import EvalSet, Split, make_split

__all__ = [
    "DataError",
    "EvalBatch",
    "EvalSet",
    "Interactions",
    "SequenceData",
    "Split",
    "TrainBatch",
    "frame_to_interactions",
    "iter_eval_batches",
    "iter_train_batches",
    "list_cards",
    "load_card",
    "load_dataset",
    "make_split",
    "padded_windows",
    "prepare_sequences",
    "read_table",
]
