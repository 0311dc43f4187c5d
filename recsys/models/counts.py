"""What the fitted baselines (popularity, item co-occurrence) count: the training events of a split."""

from __future__ import annotations

import numpy as np


def training_events(split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, position in the user's sequence) of every training event (each user's first
    ``train_lengths[u]`` events), in sequence order."""
    data = split.data
    lengths = np.diff(data.seq_offsets)
    users = np.repeat(np.arange(data.num_users), lengths)
    position = np.arange(data.num_interactions) - np.repeat(data.seq_offsets[:-1], lengths)
    keep = position < split.train_lengths[users]
    return users[keep], np.asarray(data.item_ids)[keep], position[keep]
