"""Item attributes in the item vectors: an item is its ID embedding plus the mean of its attributes'.

Side-information fusion at the embedding ("SASRecF" in Xie et al., "Decoupled Side Information Fusion
for Sequential Recommendation", SIGIR 2022; FDSA, Zhang et al. 2019, reads the attributes in a branch of
its own). The attributes (brand and category ids, as in S3-Rec's ``*_item2attributes.json``) come from
the dataset card (``item_attributes``); items that share them share part of their vector, which is what
a rarely-bought item has to go on. The same vectors feed the encoder and score the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AttributeConfig:
    """The attribute setting of an encoder that offers it (SASRec's config inherits it)."""

    # each item vector = its ID embedding + the mean of its attributes' embeddings (the card's item_attributes)
    attribute_embeddings: bool = False


class ItemAttributes(nn.Module):
    """[V, D]: each item's mean attribute embedding (zero for an item without attributes, padding included)."""

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor, num_attributes: int, dim: int, init_std: float):
        """ids [nnz], offsets [V + 1]: item i's attributes are ``ids[offsets[i] : offsets[i + 1]]``."""
        super().__init__()
        if offsets.ndim != 1 or int(offsets[-1]) != ids.numel() or (ids.numel() and int(ids.max()) >= num_attributes):
            raise ValueError("attribute ids and offsets do not describe one list per item")
        self.table = nn.EmbeddingBag(max(num_attributes, 1), dim, mode="mean", include_last_offset=True)
        nn.init.normal_(self.table.weight, std=init_std)
        self.register_buffer("ids", ids.long(), persistent=False)  # from the data, rebuilt with the model
        self.register_buffer("offsets", offsets.long(), persistent=False)

    def forward(self) -> torch.Tensor:  # [V, D]
        return self.table(self.ids, self.offsets)
