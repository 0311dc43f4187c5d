"""SASRec: self-attentive sequential recommendation.

Wang-Cheng Kang and Julian McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.

Method. Item embeddings (scaled by sqrt(D)) plus learned position embeddings go through
``num_blocks`` causal transformer blocks (multi-head self-attention, then a two-layer point-wise
feed-forward network, each with a residual connection), computed for the real positions only
(:class:`recsys.models.layers.Packing`); a final LayerNorm gives the hidden state h_t, scored against the (shared) item embeddings:
``score(i | history up to t) = h_t . e_i``.

What differs from the paper:
- Pre-LayerNorm blocks (LN before attention and before the FFN) instead of the original's mix of
  normalised queries and un-normalised keys; this trains stably at larger learning rates.
- Attention is PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU); on
  CPU causal attention runs in chunks of 32 queries (exact, faster there),
  in training on groups of rows of similar length gathered from the packed rows
  (:func:`recsys.models.layers.attention.grouped_packed_attention`), and the linear layers'
  fp32 products go through oneDNN (:mod:`recsys.kernels.onednn`).
- Training with full CE runs the real positions alone from the embedding lookup on
  (:meth:`SASRec.packed_forward`: no embedding, dropout or final LayerNorm of padding, same values);
  the trainer scores its packed hidden states directly.
- Inference with one head (evaluation, export) folds the key projection into the query's and the value
  projection into the output's (:meth:`recsys.models.layers.CausalSelfAttention.folded`): the same function to fp32 rounding
  at half the per-position products (same ranks).
- Inference on CPU (evaluation, export of user vectors, the API) goes through a fused C kernel,
  one history at a time in cache (:func:`recsys.models.layers.fused_last_hidden`), where it
  is built; the PyTorch path below is its reference and runs everywhere else.
- Positions count from the end of the history (the most recent item always has the same position
  embedding), as left padding makes natural; padding has its own zero position.
- Embeddings start at N(0, 0.02) instead of N(0, 1): a plain SASRec learned much slower with the latter.
- ``attention_table_dim`` turns on DARE-style decoupling (Feng et al. 2025): queries and keys of every block
  come from a separate (smaller) item table, values and scores from the item table.
- The loss is chosen by the recipe (BCE with one negative as in the paper, full CE = "SASRec+",
  sampled softmax, gBCE); the model only produces hidden states.
- ``reasoning_steps = K > 0`` adds ReaRec's latent reasoning (Tang et al. 2025,
  :mod:`recsys.models.layers.reasoning`): K more passes of the blocks for a token fed back from the last
  hidden state. Training with full CE reasons at every real position on packed rows
  (:meth:`SASRec.packed_reasoning_states`); other losses and inference take the grid path of
  :meth:`SASRec.reasoning_states`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import SequentialEncoder, padding_and_positions, register
from .dropout import Dropout
from .layers import Block, FusedCPUInference, Packing, fused_last_hidden, grid_inputs, run_blocks
from .layers.attention import grouped_packed_attention, packed_windows
from .layers.attributes import AttributeConfig, ItemAttributes
from .layers.reasoning import (
    ReasoningConfig,
    append_step,
    combine_states,
    history_mask,
    merge_heads,
    packed_softmax_attention,
    softmax_attention,
)
from .layers.repeat import RepeatBiasConfig, init_repeat_bias


@dataclass
class SASRecConfig(ReasoningConfig, RepeatBiasConfig, AttributeConfig):
    max_seq_len: int = 50  # the most recent items of a history that are read
    hidden_dim: int = 64  # width of item and hidden vectors
    num_blocks: int = 2  # transformer blocks
    num_heads: int = 1  # attention heads
    ffn_dim: int | None = None  # default: hidden_dim (as in the paper)
    dropout: float = 0.2  # dropout on embeddings, attention and feed-forward outputs
    init_std: float = 0.02  # standard deviation of the initial weights
    # DARE-style decoupling (Feng et al. 2025): a separate item table of this dimension feeds every block's
    # queries and keys, the item table feeds values and scores; None = one table, as in the paper
    attention_table_dim: int | None = None
    # dropout between the feed-forward network's two layers, as in SASRec's code (BERT has none there)
    ffn_inner_dropout: bool = True


@register("sasrec", SASRecConfig)
class SASRec(FusedCPUInference, SequentialEncoder):
    causal = True
    last_only_forward = True
    packed_forward_available = True
    packed_reasoning_available = True  # full-CE training of reasoning steps on packed rows

    def __init__(self, cfg: SASRecConfig, num_items: int):
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(num_items, cfg.hidden_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_seq_len + 1, cfg.hidden_dim, padding_idx=0)
        init_repeat_bias(self, cfg.repeat_bias)
        self.attributes: ItemAttributes | None = None  # set_item_attribute_ids, with attribute_embeddings
        self.emb_dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(
                cfg.hidden_dim, cfg.num_heads, cfg.dropout, cfg.ffn_dim, cfg.attention_table_dim, cfg.ffn_inner_dropout
            )
            for _ in range(cfg.num_blocks)
        )
        self.final_ln = nn.LayerNorm(cfg.hidden_dim)
        tables = [self.item_embedding, self.position_embedding]
        if cfg.attention_table_dim:
            self.attention_embedding = nn.Embedding(num_items, cfg.attention_table_dim, padding_idx=0)
            self.attention_position = nn.Embedding(cfg.max_seq_len + 1, cfg.attention_table_dim, padding_idx=0)
            tables += [self.attention_embedding, self.attention_position]
        for emb in tables:
            nn.init.normal_(emb.weight, std=cfg.init_std)
            emb.weight.data[0].zero_()
        self.reasoning_steps = cfg.reasoning_steps
        if cfg.reasoning_steps:
            if cfg.attention_table_dim:
                raise ValueError("model.reasoning_steps > 0 does not combine with model.attention_table_dim")
            # p_1 .. p_K: reasoning position embeddings, a table apart from the items' positions
            self.reasoning_position = nn.Embedding(cfg.reasoning_steps, cfg.hidden_dim)
            nn.init.normal_(self.reasoning_position.weight, std=cfg.init_std)

    def forward(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        last_only: bool = False,
        packed: bool = False,
        reasoning: bool = False,
        noise: float = 0.0,
    ) -> torch.Tensor:
        """[B, L] -> [B, L, D]; ``last_only``: [B, 1, D], the last position's output (computed alone in the
        last block); ``packed``: (hidden [T, D], index [T]), see :meth:`packed_forward`. With reasoning
        steps, the user vectors of :meth:`reasoning_states` (their mean or last), or with ``reasoning``
        the states themselves [B, L, K + 1, D]; with ``packed`` too, those of the real positions alone
        (:meth:`packed_reasoning_states`)."""
        if self.reasoning_steps and packed:
            return self.packed_reasoning_states(item_ids, noise)
        if self.reasoning_steps:
            states = self.reasoning_states(item_ids, last_only, noise)
            return states if reasoning else combine_states(states, self.cfg.reasoning_method)
        if packed:
            return self.packed_forward(item_ids)
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        if last_only and (fused := fused_last_hidden(self, item_ids, causal=True)) is not None:
            return fused[:, None]
        grid, not_pad, item_ids, positions = grid_inputs(last_only, not_pad, item_ids, positions)
        x, attention_input = self.embed(item_ids, positions)  # [B, L, D], [B, L, A] or None
        x = x * not_pad
        if attention_input is not None:
            attention_input = attention_input * not_pad
        return self.final_ln(run_blocks(self.blocks, x, not_pad, True, attention_input, last_only, grid))

    @property
    def needs_item_attributes(self) -> bool:
        return self.cfg.attribute_embeddings

    def set_item_attribute_ids(self, ids: torch.Tensor, offsets: torch.Tensor, num_attributes: int) -> None:
        """The catalogue's attributes (ids [nnz], offsets [V + 1] by internal item id): from now on an item's
        vector is its ID embedding plus its attributes' mean embedding (:mod:`.layers.attributes`)."""
        if offsets.numel() != self.item_embedding.num_embeddings + 1:
            raise ValueError(
                f"attribute offsets for {offsets.numel() - 1} items, the model has {self.item_embedding.num_embeddings}"
            )
        self.attributes = ItemAttributes(ids, offsets, num_attributes, self.cfg.hidden_dim, self.cfg.init_std)
        self.fused_cpu_inference = False  # the fused kernel reads the ID table alone

    def item_vectors(self) -> torch.Tensor:  # [V, D]
        if self.attributes is None:
            return self.item_embedding.weight
        return self.item_embedding.weight + self.attributes()

    def embed(self, item_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The blocks' input for ids and positions of any shape [...]: item embedding x sqrt(D) plus position
        embedding, dropped out [..., D]; with ``attention_table_dim``, the attention stream the same way
        from its own tables [..., A] (the same for every block), else None."""
        items = self.item_embedding(item_ids) if self.attributes is None else self.item_vectors()[item_ids]
        x = self.emb_dropout(items * math.sqrt(self.cfg.hidden_dim) + self.position_embedding(positions))
        attention_input = None
        if self.cfg.attention_table_dim:
            attention_input = self.attention_embedding(item_ids) * math.sqrt(self.cfg.attention_table_dim)
            attention_input = self.emb_dropout(attention_input + self.attention_position(positions))
        return x, attention_input

    def packed_forward(self, item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's forward on the real positions alone: left-padded [B, L] ids -> (hidden [T, D], index
        [T]), the hidden states of the T real positions in row-major order and their flat indices into
        [B * L] (``target_ids.view(-1)[index]`` are their targets; ``hidden[not_pad]`` of the padded
        forward, same values). The padded forward embeds, drops out and normalises all B x L positions
        and packs / unpacks around the blocks; here the embeddings are looked up for the packed rows
        only, so none of that touches padding (on Beauty's batches 1 position in 7 is real)."""
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        packing = Packing(not_pad)
        ids, positions = item_ids.reshape(-1)[packing.rows], positions.reshape(-1)[packing.rows]  # [T_bucket]
        x, attention_input = self.embed(ids, positions)  # [T_bucket, D], [T_bucket, A] or None
        for block in self.blocks:
            x = block(x, packing, attention_input, False, True)
        return self.final_ln(x[: packing.num_real]), packing.index  # [T, D], [T]

    def reasoning_states(self, item_ids: torch.Tensor, last_only: bool = False, noise: float = 0.0) -> torch.Tensor:
        """ReaRec's hidden states h^(0..K) at every position [B, L, K + 1, D] (``last_only``: the last, [B, 1,
        K + 1, D]). h^(0) is the plain encoder's output; step k feeds h^(k-1) + p_k back through the blocks
        as a token that attends to the history up to its position and to that position's earlier reasoning
        tokens. ``noise``: Gaussian noise of this scale on the reasoning inputs (PRL's second view)."""
        B, L = item_ids.shape
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        real = not_pad.squeeze(-1)
        columns = torch.arange(L, device=item_ids.device)
        queries = columns[-1:] if last_only else columns  # where reasoning happens
        p = self.cfg.dropout if self.training else 0.0
        # the history pass, every position (a padding query reads itself alone: finite, never used)
        eye = torch.eye(L, dtype=torch.bool, device=item_ids.device)
        within_history = history_mask(real, columns) | eye  # [B, L, L]
        x = self.embed(item_ids, positions)[0] * not_pad  # [B, L, D]
        history_kv = []
        for block in self.blocks:
            q, k, v = block.attention_heads(x)  # [B, H, L, d]
            history_kv.append((k, v))
            x = block.after_attention(x, merge_heads(softmax_attention(q, k, v, within_history, None, None, p)))
        states = [self.final_ln(x[:, queries])]  # h^(0): [B, Lq, D]
        allowed = history_mask(real, queries)  # [B, Lq, L]
        step_kv: list[list] = [[None, None] for _ in self.blocks]  # per block: reasoning keys, values so far
        for step in range(self.reasoning_steps):
            r = states[-1] + self.reasoning_position.weight[step]  # [B, Lq, D]
            if noise:
                r = r + noise * torch.randn_like(r)
            for block, (k, v), cache in zip(self.blocks, history_kv, step_kv):
                q_r, k_r, v_r = block.attention_heads(r)  # [B, H, Lq, d]
                cache[0], cache[1] = append_step(cache[0], k_r), append_step(cache[1], v_r)
                attended = softmax_attention(q_r, k, v, allowed, cache[0], cache[1], p)  # [B, H, Lq, d]
                r = block.after_attention(r, merge_heads(attended))
            states.append(self.final_ln(r))
        return torch.stack(states, dim=2)  # [B, Lq, K + 1, D]

    def packed_reasoning_states(self, item_ids: torch.Tensor, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's :meth:`reasoning_states` on the real positions alone: left-padded [B, L] ids ->
        (states [T, K + 1, D], index [T]) as :meth:`packed_forward` (h^(0) is its hidden state). Every
        linear layer, LayerNorm and dropout runs on the T real rows of each step instead of B x L; the
        attention on each length group's window (:func:`packed_softmax_attention`)."""
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        packing = Packing(not_pad)
        x = self.embed(item_ids.reshape(-1)[packing.rows], positions.reshape(-1)[packing.rows])[0]  # [T_b, D]
        heads, p = self.cfg.num_heads, self.cfg.dropout if self.training else 0.0
        windows = packed_windows(packing)  # once for every block and step (one host sync)
        history_kv = []
        for block in self.blocks:  # the history pass: the plain packed encoder, keeping keys and values
            qkv = block.packed_qkv(x)  # [T_b, 3 D]
            history_kv.append(qkv.chunk(3, dim=1)[1:])
            x = block.after_attention(x, grouped_packed_attention(qkv, packing, heads, p, causal=True))
        states = [self.final_ln(x)]  # h^(0): [T_b, D]
        step_kv: list[list] = [[None, None] for _ in self.blocks]  # per block: reasoning keys, values [T_b, S, D]
        for step in range(self.reasoning_steps):
            r = states[-1] + self.reasoning_position.weight[step]  # [T_b, D]
            if noise:
                r = r + noise * torch.randn_like(r)
            for block, (k, v), cache in zip(self.blocks, history_kv, step_kv):
                q_r, k_r, v_r = block.packed_qkv(r).chunk(3, dim=1)  # [T_b, D] each
                cache[0], cache[1] = append_step(cache[0], k_r, dim=1), append_step(cache[1], v_r, dim=1)
                r = block.after_attention(r, packed_softmax_attention(q_r, k, v, *cache, packing, heads, p, windows))
            states.append(self.final_ln(r))
        return torch.stack(states, dim=1)[: packing.num_real], packing.index  # [T, K + 1, D], [T]
