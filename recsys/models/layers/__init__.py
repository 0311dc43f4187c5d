"""Parts shared by the sequence encoders: the packing of real positions (:mod:`.packing`), attention
(:mod:`.attention`) and transformer blocks with their fused CPU inference (:mod:`.blocks`). A model file
imports from here (and from :mod:`recsys.models.base`), never from another model file."""

from .attention import CausalSelfAttention
from .blocks import Block, FusedCPUInference, fused_last_hidden, run_blocks
from .packing import GridRows, Packing, exporting, grid_inputs

__all__ = [
    "Block",
    "CausalSelfAttention",
    "FusedCPUInference",
    "GridRows",
    "Packing",
    "exporting",
    "fused_last_hidden",
    "grid_inputs",
    "run_blocks",
]
