"""HSTU: hierarchical sequential transduction units.

Jiaqi Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations", ICML 2024.

Method. Items are embedded (scaled by sqrt(D)) plus a learned position embedding, then run through
``num_blocks`` HSTU layers on the *jagged* token list (padding is dropped right after the embedding and
only restored at the output). Each layer, as the authors' research code does it::

    Xn         = LayerNorm(X)                                   (no affine parameters)
    U, V, Q, K = split(SiLU(Xn @ W_uvqk))                       (one weight, no bias)
    A          = SiLU(Q K^T + rab) / N,  causal                 (pointwise: no softmax, no 1/sqrt(d))
    Y          = X + W_o(Dropout(U * LayerNorm(A V)))

N is the configured maximum sequence length. ``rab`` is a learned relative bias: one weight per
position offset i - j plus one per log-bucketed time gap between the query's *next* timestamp (the
time of the item it predicts; at serving time the request time) and the key's timestamp. The attention
goes through :func:`recsys.kernels.hstu_attention.hstu_attention` (the PyTorch reference on CPU).

Initialisation matters as much as any of the above: as in the reference code, W_uvqk ~ N(0, 0.02) (small
gates and attention at the start), relative biases ~ N(0, 0.02), position embeddings ~ N(0, 1/D). With
Xavier-initialised projections instead (``init_scheme = "xavier"``) the same recipe reaches test NDCG@10
.167 on the partial ML-1M file in 50 epochs, against .182 (benchmarks/RESULTS.md).

What differs from the paper / reference code:
- Positions of the absolute position embedding count back from the most recent item (as in our
  SASRec), which left-padded batches make natural; the relative bias is unaffected.
- The query time is a flag: ``query_time = "next"`` (default, the reference's choice) or ``"current"``
  (the query item's own timestamp, for logs whose next timestamp should not be known).
- Datasets without timestamps (file order only) give position-valued "times"; set
  ``use_time_bias = false`` for them (the recipes do).
- Output L2 normalisation and the temperature belong to the loss (``loss.l2_normalize``), so the
  evaluator scores by cosine exactly as the loss trains.
- ``reasoning_steps = K > 0`` adds ReaRec's latent reasoning (Tang et al. 2025,
  :mod:`recsys.models.layers.reasoning`) on the grid path (:meth:`HSTU.reasoning_states`); a reasoning
  token has its position's place and query time, so its relative bias to the history is that
  position's, and to its own position's reasoning tokens offset 0 and time gap 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.hstu_attention import hstu_attention, hstu_attention_last, time_buckets
from ..kernels.onednn import Linear
from .base import SequentialEncoder, padding_and_positions, register
from .dropout import Dropout
from .layers import Packing, exporting
from .layers.attention import packed_windows
from .layers.reasoning import (
    ReasoningConfig,
    append_step,
    combine_states,
    history_mask,
    merge_heads,
    packed_attention,
    pointwise_attention,
)
from .layers.repeat import RepeatBiasConfig, init_repeat_bias

NUM_TIME_BUCKETS = 129


@dataclass
class HSTUConfig(ReasoningConfig, RepeatBiasConfig):
    max_seq_len: int = 200  # the most recent items of a history that are read
    hidden_dim: int = 50  # width of item and hidden vectors
    num_blocks: int = 2  # transformer blocks
    num_heads: int = 1  # attention heads
    qk_dim: int | None = None  # per head; default hidden_dim // num_heads
    v_dim: int | None = None  # per head; default hidden_dim // num_heads
    dropout: float = 0.2  # dropout on embeddings, attention and feed-forward outputs
    use_position_bias: bool = True  # a learned bias per relative position in the attention
    use_time_bias: bool = True  # a learned bias per bucket of log time difference in the attention
    query_time: Literal["next", "current"] = "next"  # time differences from the next event's time or the current
    attention_backend: Literal["auto", "reference", "triton"] = "auto"  # auto: Triton on CUDA, else PyTorch
    init_std: float = 0.02  # item embeddings
    # "reference": as the authors' research code initialises (W_uvqk ~ N(0, 0.02), relative biases
    # ~ N(0, 0.02), position embeddings ~ N(0, 1/D), W_o Xavier); "xavier": Xavier W_uvqk, zero biases,
    # position embeddings ~ N(0, init_std) (this project's first version, kept to reproduce it)
    init_scheme: Literal["reference", "xavier"] = "reference"


class HSTULayer(nn.Module):
    def __init__(self, cfg: HSTUConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.num_heads
        self.qk_dim = cfg.qk_dim or cfg.hidden_dim // H
        self.v_dim = cfg.v_dim or cfg.hidden_dim // H
        self.uvqk = Linear(cfg.hidden_dim, H * (2 * self.v_dim + 2 * self.qk_dim), bias=False)
        self.out = Linear(H * self.v_dim, cfg.hidden_dim)
        self.dropout = Dropout(cfg.dropout)
        self.position_bias = nn.Parameter(torch.zeros(cfg.max_seq_len)) if cfg.use_position_bias else None
        self.time_bias = nn.Parameter(torch.zeros(NUM_TIME_BUCKETS)) if cfg.use_time_bias else None
        if cfg.init_scheme == "reference":
            nn.init.normal_(self.uvqk.weight, std=0.02)
            nn.init.xavier_uniform_(self.out.weight)
            for bias in (self.position_bias, self.time_bias):
                if bias is not None:
                    nn.init.normal_(bias, std=0.02)
        else:
            nn.init.xavier_uniform_(self.uvqk.weight)

    def forward(  # x: [T, D] jagged
        self,
        x: torch.Tensor,
        seq_offsets: torch.Tensor,
        key_times: torch.Tensor | None,
        query_times: torch.Tensor | None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """[T, D] -> [T, D]; ``last_only``: [B, D], each sequence's last token only (the last layer of an
        evaluation: keys and values from every token, one query per sequence, O(T) attention)."""
        T, H = x.shape[0], self.cfg.num_heads
        xn = F.layer_norm(x, (x.shape[-1],))
        u, v, q, k = torch.split(
            F.silu(self.uvqk(xn)), [H * self.v_dim, H * self.v_dim, H * self.qk_dim, H * self.qk_dim], dim=-1
        )
        if last_only and T == 0:  # every history empty
            return x.new_zeros(seq_offsets.shape[0] - 1, x.shape[-1])
        if last_only:
            last = (seq_offsets[1:] - 1).clamp_min(0)  # [B]; an empty sequence's row is zeroed below
            nonempty = (seq_offsets[1:] > seq_offsets[:-1])[:, None]  # [B, 1]
            attn = hstu_attention_last(
                q[last].view(-1, H, self.qk_dim),
                k.view(T, H, self.qk_dim),
                v.view(T, H, self.v_dim),
                seq_offsets,
                self.cfg.max_seq_len,
                position_bias=self.position_bias,
                time_bias=self.time_bias,
                key_times=key_times,
                query_times_last=None if query_times is None else query_times[last],
            ).reshape(-1, H * self.v_dim)  # [B, H * Dv]
            y = u[last] * F.layer_norm(attn, (attn.shape[-1],))
            return (x[last] + self.out(self.dropout(y))) * nonempty  # an empty history gives zeros
        attn = hstu_attention(
            q.view(T, H, self.qk_dim),
            k.view(T, H, self.qk_dim),
            v.view(T, H, self.v_dim),
            seq_offsets,
            self.cfg.max_seq_len,
            position_bias=self.position_bias,
            time_bias=self.time_bias,
            key_times=key_times,
            query_times=query_times,
            backend=self.cfg.attention_backend,
        ).reshape(T, H * self.v_dim)  # [T, H * Dv]
        y = u * F.layer_norm(attn, (attn.shape[-1],))
        return x + self.out(self.dropout(y))

    def dense(
        self,
        x: torch.Tensor,
        real: torch.Tensor,
        last_only: bool = False,
        key_times: torch.Tensor | None = None,
        query_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` on a left-padded [B, L, D] grid (``real`` [B, L]: not padding; key_times,
        query_times [B, L] with a time bias), every shape fixed by the input's: the path ``torch.export``
        captures (an exported encoder). Same values at the real positions (test)."""
        L = x.shape[1]
        u, v, q, k = self.heads(x)
        pos = torch.arange(L, device=x.device)
        queries = pos[-1:] if last_only else pos  # [Lq]
        if last_only:
            q, u, x = q[:, :, -1:], u[:, -1:], x[:, -1:]
        bias = self.relative_bias(queries, L, key_times, query_times)
        allowed = history_mask(real, queries)  # [B, Lq, L]: real, earlier keys
        return self.after_attention(
            x, u, merge_heads(pointwise_attention(q, k, v, bias, allowed, None, None, 0.0, self.cfg.max_seq_len))
        )

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A [B, L, D] grid's gates u [B, L, H * Dv] and values, queries, keys [B, H, L, d]."""
        B, L, _ = x.shape
        H = self.cfg.num_heads
        u, v, q, k = torch.split(
            F.silu(self.uvqk(F.layer_norm(x, (x.shape[-1],)))),
            [H * self.v_dim, H * self.v_dim, H * self.qk_dim, H * self.qk_dim],
            dim=-1,
        )
        v, q, k = (t.reshape(B, L, H, -1).transpose(1, 2) for t in (v, q, k))
        return u, v, q, k

    def relative_bias(
        self, queries: torch.Tensor, length: int, key_times: torch.Tensor | None, query_times: torch.Tensor | None
    ) -> torch.Tensor | float:
        """The relative bias of queries at grid columns ``queries`` [Lq] against every key of a grid of
        ``length`` columns, [B or 1, 1, Lq, L] (0.0 without biases): left padding makes grid offsets the
        sequence's own."""
        bias: torch.Tensor | float = 0.0
        if self.position_bias is not None:
            keys = torch.arange(length, device=queries.device)
            offsets = (queries[:, None] - keys[None, :]).clamp(0, self.position_bias.shape[0] - 1)
            bias = self.position_bias[offsets][None, None]  # [1, 1, Lq, L]
        if self.time_bias is not None:
            gap = query_times[:, queries, None] - key_times[:, None, :]  # [B, Lq, L]
            bias = bias + self.time_bias[time_buckets(gap, self.time_bias.shape[0])][:, None]
        return bias

    def step_bias(self) -> torch.Tensor | float:
        """The relative bias of a reasoning token's keys for the queries at its own position: offset 0, gap 0."""
        bias: torch.Tensor | float = 0.0
        if self.position_bias is not None:
            bias = self.position_bias[0]
        if self.time_bias is not None:
            bias = bias + self.time_bias[0]
        return bias

    def packed_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed rows' [T, D] gates u and values [T, H * Dv], queries and keys [T, H * d]."""
        H = self.cfg.num_heads
        return torch.split(
            F.silu(self.uvqk(F.layer_norm(x, (x.shape[-1],)))),
            [H * self.v_dim, H * self.v_dim, H * self.qk_dim, H * self.qk_dim],
            dim=-1,
        )

    def after_attention(self, x: torch.Tensor, u: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """X + W_o(Dropout(U * LayerNorm(A V))) for x [..., D] and its attention [..., H * Dv] (heads side by
        side)."""
        return x + self.out(self.dropout(u * F.layer_norm(attended, (attended.shape[-1],))))


@register("hstu", HSTUConfig)
class HSTU(SequentialEncoder):
    causal = True
    last_only_forward = True
    packed_reasoning_available = True  # full-CE training of reasoning steps on packed rows

    def __init__(self, cfg: HSTUConfig, num_items: int):
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(num_items, cfg.hidden_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_seq_len + 1, cfg.hidden_dim, padding_idx=0)
        init_repeat_bias(self, cfg.repeat_bias)
        self.emb_dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.num_blocks))
        position_std = cfg.hidden_dim**-0.5 if cfg.init_scheme == "reference" else cfg.init_std
        for emb, std in ((self.item_embedding, cfg.init_std), (self.position_embedding, position_std)):
            nn.init.normal_(emb.weight, std=std)
            emb.weight.data[0].zero_()
        self.reasoning_steps = cfg.reasoning_steps
        if cfg.reasoning_steps:  # p_1 .. p_K: reasoning position embeddings
            self.reasoning_position = nn.Embedding(cfg.reasoning_steps, cfg.hidden_dim)
            nn.init.normal_(self.reasoning_position.weight, std=position_std)

    def embed(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The layers' input grid [B, L, D], not_pad [B, L, 1], and each token's time and the time its
        query predicts for, key_times and query_times [B, L] (None without the time bias)."""
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)
        x = self.emb_dropout(
            self.item_embedding(item_ids) * math.sqrt(self.cfg.hidden_dim) + self.position_embedding(positions)
        )  # [B, L, D]
        key_times = query_times = None
        if self.cfg.use_time_bias:
            if timestamps is None:
                raise ValueError("HSTU with use_time_bias needs timestamps")
            use_next = self.cfg.query_time == "next" and next_timestamps is not None
            key_times, query_times = timestamps, (next_timestamps if use_next else timestamps)
        return x, not_pad, key_times, query_times

    def forward(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        last_only: bool = False,
        reasoning: bool = False,
        noise: float = 0.0,
        packed: bool = False,
    ) -> torch.Tensor:
        """[B, L] -> [B, L, D]; ``last_only``: [B, 1, D], the last position's output (the last layer
        computes it alone). With reasoning steps, the user vectors of :meth:`reasoning_states` (their
        mean or last), or with ``reasoning`` the states themselves [B, L, K + 1, D]; with ``packed`` too,
        those of the real positions alone (:meth:`packed_reasoning_states`)."""
        if self.reasoning_steps and packed:
            return self.packed_reasoning_states(item_ids, timestamps, next_timestamps, noise)
        if self.reasoning_steps:
            states = self.reasoning_states(item_ids, timestamps, next_timestamps, last_only, noise)
            return states if reasoning else combine_states(states, self.cfg.reasoning_method)
        B, L = item_ids.shape
        x, not_pad, key_times, query_times = self.embed(item_ids, timestamps, next_timestamps)
        real = not_pad.squeeze(-1)  # [B, L]; left padding, so each row's real tokens are contiguous
        if exporting():  # the grid path: no data-dependent shapes
            for i, layer in enumerate(self.layers):
                x = layer.dense(x, real, last_only and i == len(self.layers) - 1, key_times, query_times)
            return x * (real[:, -1:, None] if last_only else not_pad)  # an empty history gives zeros
        x = x[real]  # [T, D] jagged values
        lengths = real.sum(1)
        seq_offsets = F.pad(torch.cumsum(lengths, 0), (1, 0))  # [B + 1]
        if key_times is not None:
            key_times, query_times = key_times[real], query_times[real]  # [T]
        for i, layer in enumerate(self.layers):
            x = layer(x, seq_offsets, key_times, query_times, last_only and i == len(self.layers) - 1)
        if last_only:
            return x[:, None]  # [B, 1, D]
        out = x.new_zeros(B, L, x.shape[-1])
        out[real] = x
        return out

    def reasoning_states(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        last_only: bool = False,
        noise: float = 0.0,
    ) -> torch.Tensor:
        """ReaRec's states h^(0..K) at every position [B, L, K + 1, D] (``last_only``: the last, [B, 1, K + 1,
        D]), on the grid: h^(0) is the plain encoder's output; step k feeds h^(k-1) + p_k back through the
        layers as a token that attends to the history up to its position and to that position's earlier
        reasoning tokens. ``noise``: Gaussian noise of this scale on the reasoning inputs (PRL)."""
        L = item_ids.shape[1]
        x, not_pad, key_times, query_times = self.embed(item_ids, timestamps, next_timestamps)
        real = not_pad.squeeze(-1)
        columns = torch.arange(L, device=item_ids.device)
        queries = columns[-1:] if last_only else columns  # where reasoning happens
        within_history = history_mask(real, columns)  # [B, L, L]
        history = []  # per layer: keys, values [B, H, L, d] and the relative bias [B or 1, 1, L, L]
        for layer in self.layers:
            u, v, q, k = layer.heads(x)
            bias = layer.relative_bias(columns, L, key_times, query_times)
            history.append((k, v, bias))
            attended = pointwise_attention(q, k, v, bias, within_history, None, None, 0.0, self.cfg.max_seq_len)
            x = layer.after_attention(x, u, merge_heads(attended))
        states = [x[:, queries] * not_pad[:, queries]]  # h^(0): [B, Lq, D], zeros at padding as forward gives
        allowed = history_mask(real, queries)  # [B, Lq, L]
        step_kv: list[list] = [[None, None] for _ in self.layers]
        for step in range(self.reasoning_steps):
            r = states[-1] + self.reasoning_position.weight[step]  # [B, Lq, D]
            if noise:
                r = r + noise * torch.randn_like(r)
            for layer, (k, v, bias), cache in zip(self.layers, history, step_kv):
                u_r, v_r, q_r, k_r = layer.heads(r)
                cache[0], cache[1] = append_step(cache[0], k_r), append_step(cache[1], v_r)
                bias_r = bias[:, :, queries] if torch.is_tensor(bias) else bias  # the position's own bias row
                attended = pointwise_attention(
                    q_r, k, v, bias_r, allowed, cache[0], cache[1], layer.step_bias(), self.cfg.max_seq_len
                )
                r = layer.after_attention(r, u_r, merge_heads(attended))
            states.append(r)
        return torch.stack(states, dim=2)  # [B, Lq, K + 1, D]

    def packed_reasoning_states(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        noise: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's :meth:`reasoning_states` on the real positions alone: left-padded [B, L] ids ->
        (states [T, K + 1, D], index [T]), the T real positions in row-major order and their flat indices
        into [B * L]. Every projection runs on the T real rows; the attention (history pass and steps) on
        each length group's window (:func:`packed_attention`), whose columns give the same relative
        offsets as the grid's."""
        x, not_pad, key_times, query_times = self.embed(item_ids, timestamps, next_timestamps)
        packing = Packing(not_pad)
        x = packing.pack(x)  # [T_b, D]
        windows = packed_windows(packing)
        times = None
        if key_times is not None:  # [T_b] each
            times = tuple(packing.pack(t[..., None]).squeeze(1) for t in (key_times, query_times))
        heads, N = self.cfg.num_heads, self.cfg.max_seq_len
        history = []  # per layer: keys, values [T_b, H * d] and each window's relative bias
        for layer in self.layers:
            u, v, q, k = layer.packed_heads(x)
            biases = []
            for window, _ in windows:
                n = window.shape[1]
                window_times = (None, None) if times is None else (times[0][window], times[1][window])
                biases.append(layer.relative_bias(torch.arange(n, device=x.device), n, *window_times))

            def attend(group, q_g, k_g, v_g, sk, sv, causal, biases=biases):
                return pointwise_attention(q_g, k_g, v_g, biases[group], causal, None, None, 0.0, N)

            history.append((k, v, biases))
            x = layer.after_attention(x, u, packed_attention(attend, packing, heads, q, k, v, windows=windows))
        states = [x]  # h^(0): [T_b, D]
        step_kv: list[list] = [[None, None] for _ in self.layers]  # per layer: reasoning keys, values [T_b, S, .]
        for step in range(self.reasoning_steps):
            r = states[-1] + self.reasoning_position.weight[step]  # [T_b, D]
            if noise:
                r = r + noise * torch.randn_like(r)
            for layer, (k, v, biases), cache in zip(self.layers, history, step_kv):
                u_r, v_r, q_r, k_r = layer.packed_heads(r)
                cache[0], cache[1] = append_step(cache[0], k_r, dim=1), append_step(cache[1], v_r, dim=1)
                step_bias = layer.step_bias()

                def attend(group, q_g, k_g, v_g, sk, sv, causal, biases=biases, step_bias=step_bias):
                    return pointwise_attention(q_g, k_g, v_g, biases[group], causal, sk, sv, step_bias, N)

                attended = packed_attention(attend, packing, heads, q_r, k, v, *cache, windows=windows)
                r = layer.after_attention(r, u_r, attended)
            states.append(r)
        return torch.stack(states, dim=1)[: packing.num_real], packing.index  # [T, K + 1, D], [T]
