"""Transformer blocks (pre-LayerNorm) on packed rows, running them in order, and their inference on CPU
through the fused C kernel (:mod:`recsys.kernels.cpu_encoder`), whose reference is the PyTorch path here."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...kernels import cpu_encoder
from ...kernels.onednn import Linear, feed_forward
from ..dropout import Dropout
from .attention import CausalSelfAttention
from .packing import GridRows, Packing, exporting


class Block(nn.Module):
    """A pre-LayerNorm transformer block on packed rows: x + attention(LN(x)), then x + FFN(LN(x)) with a
    GELU feed-forward network of width ``ffn_dim`` (default ``dim``). ``attention_dim``: queries and keys
    come from a separate attention stream of that width (DARE-style decoupling); ``inner_dropout``:
    dropout between the FFN's two layers (SASRec's code has it, BERT's does not)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float,
        ffn_dim: int | None = None,
        attention_dim: int | None = None,
        inner_dropout: bool = True,
    ):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, dropout, attention_dim)
        self.ln_ffn = nn.LayerNorm(dim)
        ffn = ffn_dim or dim
        self.ffn = nn.Sequential(
            Linear(dim, ffn), nn.GELU(), Dropout(dropout) if inner_dropout else nn.Identity(), Linear(ffn, dim)
        )
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        packing: Packing,
        attention_input: torch.Tensor | None = None,
        last_only: bool = False,
        causal: bool = True,
    ) -> torch.Tensor:
        """Packed [T, D] -> [T, D]; ``last_only``: [B, D], each row's last position alone (the last
        block of an evaluation, which reads no other position: a 1 / L share of its attention and FFN)."""
        residual = packing.last_rows(x) if last_only else x
        x = residual + self.drop(self.attn(self.ln_attn(x), packing, attention_input, last_only, causal))
        h = self.ln_ffn(x)
        if not self.training and isinstance(self.ffn[1], nn.GELU) and self.ffn[1].approximate == "none":
            y = feed_forward(h, self.ffn[0], self.ffn[3], x)  # GELU and residual fused into the products
            if y is not None:
                return y
        return x + self.drop(self.ffn(h))

    def attention_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of a [B, L, D] grid (no decoupled attention stream), [B, H, L, d] each:
        the block's own projections of LN(x), for attention computed outside (reasoning steps)."""
        B, L, D = x.shape
        H = self.attn.num_heads
        q, k, v = self.attn.qkv(self.ln_attn(x)).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
        return q, k, v

    def packed_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values of packed rows [T, D] -> [T, 3 D] (no decoupled attention stream):
        the block's own projections of LN(x), for attention computed outside (reasoning steps)."""
        return self.attn.qkv(self.ln_attn(x))

    def after_attention(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of the block for x [..., D] whose attention [..., D] (heads side by side) was computed
        outside: output projection, residual, feed-forward network."""
        x = x + self.drop(self.attn.out(attended))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    not_pad: torch.Tensor,
    causal: bool,
    attention_input: torch.Tensor | None = None,
    last_only: bool = False,
    grid: bool = False,
) -> torch.Tensor:
    """The blocks in order on the real positions only (:class:`Packing`): left-padded [B, L, D] ->
    [B, L, D] with zeros at padding, or [B, 1, D] with ``last_only`` (the last block computes the last
    position only). ``grid``: x, not_pad (and attention_input) are in the grid layout instead, each
    row's items first, and every position is computed (:class:`GridRows`)."""
    packing = GridRows(not_pad) if grid else Packing(not_pad)
    x = packing.pack(x)  # [T, D]
    if attention_input is not None:
        attention_input = packing.pack(attention_input)  # [T, A]
    for i, block in enumerate(blocks):
        x = block(x, packing, attention_input, last_only and i == len(blocks) - 1, causal)
    return x[:, None] if last_only else packing.unpack(x)


def _fused_block_weights(block: Block) -> tuple[torch.Tensor, ...]:
    """One block's weights as :mod:`recsys.kernels.cpu_encoder` reads them (matrices [in, out]); a
    one-head attention gives its :meth:`CausalSelfAttention.folded` weights."""
    attn = block.attn
    if attn.folds_at_inference():
        w_qkv, b_qkv, w_out, b_out = attn.folded()
    else:
        w_qkv, b_qkv, w_out, b_out = attn.qkv.weight, attn.qkv.bias, attn.out.weight, attn.out.bias
    first, second = block.ffn[0], block.ffn[3]
    weights = (
        block.ln_attn.weight,
        block.ln_attn.bias,
        w_qkv.t(),
        b_qkv,
        w_out.t(),
        b_out,
        block.ln_ffn.weight,
        block.ln_ffn.bias,
        first.weight.t(),
        first.bias,
        second.weight.t(),
        second.bias,
    )
    return tuple(t.detach().contiguous() for t in weights)


def fused_inference_ready(model: nn.Module) -> bool:
    """Whether ``model``'s (SASRec / BERT4Rec) inference on CPU runs through the fused kernel of
    :mod:`recsys.kernels.cpu_encoder`: eval mode, no gradients, fp32, standard blocks (no DARE-style
    decoupling), a kernel built on this machine, not exporting. ``model.fused_cpu_inference = False``
    turns it off for one model (tests compare both paths)."""
    if not (
        getattr(model, "fused_cpu_inference", False)
        and model.item_embedding.weight.dtype == torch.float32
        and model.item_embedding.weight.device.type == "cpu"
        and not model.training
        and not torch.is_grad_enabled()
        and not getattr(model.cfg, "attention_table_dim", None)
        and not exporting()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    ):
        return False
    norms = [model.final_ln] + [ln for b in model.blocks for ln in (b.ln_attn, b.ln_ffn)]
    if any(ln.eps != model.final_ln.eps or ln.weight is None or ln.bias is None for ln in norms):
        return False
    if any(not isinstance(b.ffn[1], nn.GELU) or b.ffn[1].approximate != "none" for b in model.blocks):
        return False
    if len({b.attn.folds_at_inference() for b in model.blocks}) != 1:  # folded in every block or none
        return False
    return cpu_encoder.available()


def fused_last_hidden(model: nn.Module, item_ids: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """[B, D]: the final hidden state at each row's last position by the fused CPU kernel, or None where
    it does not apply (:func:`fused_inference_ready`; ids on another device; a row without items or
    not left-padded): the caller runs its PyTorch path, the kernel's reference."""
    if item_ids.device.type != "cpu" or not fused_inference_ready(model):
        return None
    counts = cpu_encoder.left_padded_counts(item_ids)
    if counts is None:
        return None
    attn = model.blocks[0].attn
    weights = cpu_encoder.EncoderWeights(
        model.item_embedding.weight.detach(),
        model.position_embedding.weight.detach(),
        model.final_ln.weight.detach(),
        model.final_ln.bias.detach(),
        [_fused_block_weights(b) for b in model.blocks],
        attn.num_heads,
        causal,
        attn.folds_at_inference(),
        model.final_ln.eps,
        math.sqrt(model.cfg.hidden_dim),
    )
    return cpu_encoder.encode_last(item_ids, weights, counts)


class FusedCPUInference:
    """For encoders of :class:`Block` s (SASRec, BERT4Rec): evaluation / export on CPU through the fused
    kernel (:func:`fused_last_hidden`) where it applies; ``fused_cpu_inference = False`` on a model
    keeps its PyTorch path."""

    fused_cpu_inference = True

    def fused_inference(self) -> bool:
        return fused_inference_ready(self)
