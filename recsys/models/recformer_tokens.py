"""Recformer at the token level: one bidirectional language model reads the words of a whole history.

Jiacheng Li et al., "Text Is All You Need: Learning Language Representations for Sequential
Recommendation", KDD 2023.

Method. An item is its flattened key-value attributes (``title ... brand ... category ...``) as word
pieces, each attribute's key and value tokens kept apart by a token kind (key / value; special for
[CLS] and padding), cut to ``tokens_per_item`` tokens. A history is [CLS] followed by its items'
tokens, most recent item first, cut to ``max_tokens``. A token's input embedding is the pretrained
word + token-position + segment embedding plus two tables Recformer adds: the token kind and the
item position (1 = the most recent item). The same encoder reads a single item (item position 1) to
give that item's vector, so any item with text, seen in training or not, can be scored. Score =
cosine / temperature. Training (:class:`recsys.train.text.TwoStageTextTrainer`, a recipe naming
``model.name = "recformer_tokens"``), as the paper's fine-tuning: stage 1 re-encodes the whole
catalogue with the current encoder at the start of every epoch and trains the encoder on the
histories with a softmax over that (fixed, gradient-free) item table; stage 2 freezes the item table
of the best stage-1 encoder and trains on.

What differs from the paper: the encoder is the packaged 6-layer MiniLM (512 positions, mean
pooling) rather than Longformer (its [CLS] state, 1,024 tokens), so ``max_tokens`` <= 512; each
epoch trains one randomly cut prefix per user instead of every prefix; no masked-language-model
pre-training on other domains (the MiniLM weights are the starting point); ``lm_layers`` may keep only
the first layers of MiniLM (fewer FLOPs; all six by default). Cost: ~130 MFLOP per
token per training step, so this model is for GPUs; ``recsys.models.recformer`` is the two-level
variant that fits a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.batching import padded_windows
from .base import SequentialEncoder, register

KIND_SPECIAL, KIND_KEY, KIND_VALUE = 0, 1, 2


@dataclass
class RecformerTokensConfig:
    tokens_per_item: int = 32
    max_items: int = 15  # most recent items of a history that are read
    max_tokens: int = 512  # [CLS] + history tokens (MiniLM has 512 positions)
    temperature: float = 0.05
    words_per_attribute: int = 24
    lm_layers: int = 6  # MiniLM layers kept (its first ones)
    stage1_epochs: int = 10  # epochs with the item table re-encoded each epoch; the rest are stage 2
    steps_per_epoch: int = 0  # training steps per epoch (0: one random prefix of every user)
    dropout: float = 0.1  # the language model's hidden dropout

    @property
    def max_seq_len(self) -> int:  # the history window the evaluator hands over
        return self.max_items

    def check(self) -> list[tuple[str, bool, str]]:
        """(key, holds, what is allowed) for each setting (recsys.config reports the first that fails)."""
        return [
            ("tokens_per_item", self.tokens_per_item >= 1, ">= 1"),
            ("max_items", self.max_items >= 1, ">= 1"),
            ("max_tokens", 2 <= self.max_tokens <= 512, "in [2, 512] (MiniLM's positions)"),
            ("temperature", self.temperature > 0, "> 0"),
            ("words_per_attribute", self.words_per_attribute >= 1, ">= 1"),
            ("lm_layers", 1 <= self.lm_layers <= 6, "in [1, 6] (MiniLM's layers)"),
            ("stage1_epochs", self.stage1_epochs >= 0, ">= 0"),
            ("steps_per_epoch", self.steps_per_epoch >= 0, ">= 0 (0: every user once)"),
        ]


def item_token_table(
    sentences_by_attribute: list[list[tuple[str, str]] | None], tokenizer, tokens_per_item: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [V, T], token kinds [V, T]) for every item's (key, value) attributes; row 0 and items
    without text are all padding. Keys and values are word-piece encoded once each, without specials."""
    V, T = len(sentences_by_attribute), tokens_per_item
    ids = torch.zeros(V, T, dtype=torch.long)
    kinds = torch.full((V, T), KIND_SPECIAL, dtype=torch.long)

    def pieces(texts: list[str]) -> list[list[int]]:  # word pieces, without any padding the tokenizer adds
        return [
            [t for t, real in zip(e.ids, e.attention_mask) if real]
            for e in tokenizer.encode_batch(texts, add_special_tokens=False)
        ]

    keys = sorted({k for attrs in sentences_by_attribute if attrs for k, _ in attrs})
    key_tokens = dict(zip(keys, pieces(keys)))
    flat = [(v, k, value) for v, attrs in enumerate(sentences_by_attribute) if attrs for k, value in attrs]
    encoded = pieces([value for _, _, value in flat])
    filled = np.zeros(V, dtype=np.int64)
    for (v, key, _), value_ids in zip(flat, encoded):  # once per catalogue attribute, at set-up
        room = T - filled[v]
        piece = (key_tokens[key] + value_ids)[:room]
        kind = ([KIND_KEY] * len(key_tokens[key]) + [KIND_VALUE] * len(value_ids))[:room]
        ids[v, filled[v] : filled[v] + len(piece)] = torch.tensor(piece, dtype=torch.long)
        kinds[v, filled[v] : filled[v] + len(piece)] = torch.tensor(kind, dtype=torch.long)
        filled[v] += len(piece)
    return ids, kinds


@register("recformer_tokens", RecformerTokensConfig)
class RecformerTokens(SequentialEncoder):
    """The token-level encoder; implements ``item_vectors`` / ``user_vectors`` for the shared evaluator.
    Built from its config and the catalogue size (the packaged MiniLM, cut to ``lm_layers``), then given
    the catalogue's text with :meth:`set_item_attributes`; tests may hand in a language model and
    tokenizer of their own."""

    causal = False
    objective = "two_stage_text"
    needs_item_text = True
    item_text_form = "attributes"

    def __init__(self, cfg: RecformerTokensConfig, num_items: int, language_model=None, tokenizer=None):
        super().__init__()
        if language_model is None:
            from .minilm import load_minilm

            language_model, tokenizer = load_minilm()
            if not 1 <= cfg.lm_layers <= len(language_model.layers):
                raise ValueError(f"lm_layers must be in [1, {len(language_model.layers)}], got {cfg.lm_layers}")
            language_model.layers = language_model.layers[: cfg.lm_layers]
            for module in language_model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = cfg.dropout
        self.cfg = cfg
        self.lm = language_model
        self.tokenizer = tokenizer
        d = language_model.cfg.hidden_size
        if cfg.max_tokens > language_model.cfg.max_position_embeddings:
            raise ValueError(
                f"max_tokens {cfg.max_tokens} > the language model's "
                f"{language_model.cfg.max_position_embeddings} positions"
            )
        self.register_buffer(
            "token_ids", torch.zeros(num_items, cfg.tokens_per_item, dtype=torch.long), persistent=False
        )
        self.register_buffer("token_kinds", torch.zeros_like(self.token_ids), persistent=False)
        self.cls_id = tokenizer.token_to_id("[CLS]") if tokenizer is not None else 101
        # Recformer's added tables start at zero: the pretrained model's behaviour is the starting point
        self.kind_embedding = nn.Embedding(3, d)
        self.item_position_embedding = nn.Embedding(cfg.max_items + 1, d)
        nn.init.zeros_(self.kind_embedding.weight)
        nn.init.zeros_(self.item_position_embedding.weight)
        # the item vectors scores are computed against: kept in checkpoints (stage 2 trains against the
        # table of the best stage-1 encoder, which the encoder's weights alone no longer give)
        self.register_buffer("item_table", torch.zeros(num_items, d))

    def set_item_attributes(self, attributes: list[list[tuple[str, str]] | None]) -> None:
        """The catalogue's (key, value) attributes per internal item id (:func:`recsys.text.item_attributes`)."""
        if len(attributes) != self.token_ids.shape[0]:
            raise ValueError(f"{len(attributes)} items' attributes for a catalogue of {self.token_ids.shape[0]}")
        ids, kinds = item_token_table(attributes, self.tokenizer, self.cfg.tokens_per_item)
        self.token_ids.copy_(ids)
        self.token_kinds.copy_(kinds)

    def forward(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, L] -> [B, 1, D]: the history's vector (the model reads a history as one token sequence)."""
        return self.user_vectors(item_ids)[:, None]

    def _encode(self, ids, kinds, item_pos, mask) -> torch.Tensor:  # [B, S] each -> [B, d] unit vectors
        extra = self.kind_embedding(kinds) + self.item_position_embedding(item_pos)
        states = self.lm(ids, mask, extra_embeddings=extra)  # [B, S, d]
        m = mask.unsqueeze(-1).to(states.dtype)
        return F.normalize((states * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def history_tokens(self, item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded item windows [B, L] -> (ids, kinds, item positions, mask), each [B, S]."""
        recent = item_ids.flip(1)[:, : self.cfg.max_items]  # [B, I] most recent first
        B, I = recent.shape
        T = self.token_ids.shape[1]
        ids = self.token_ids[recent].reshape(B, I * T)
        kinds = self.token_kinds[recent].reshape(B, I * T)
        item_pos = torch.arange(1, I + 1, device=item_ids.device).repeat_interleave(T)[None].expand(B, -1)
        valid = ids > 0
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
        take = lambda x: torch.gather(x, 1, order)[:, : self.cfg.max_tokens - 1]  # noqa: E731
        ids, kinds, item_pos, valid = take(ids), take(kinds), take(item_pos) * take(valid), take(valid)
        cls = torch.full((B, 1), self.cls_id, dtype=ids.dtype, device=ids.device)
        zero = torch.zeros_like(cls)
        return (
            torch.cat([cls, ids * valid], 1),
            torch.cat([zero, kinds * valid], 1),
            torch.cat([zero, item_pos], 1),
            torch.cat([torch.ones_like(valid[:, :1]), valid], 1),
        )

    def user_vectors(self, item_ids: torch.Tensor, *unused) -> torch.Tensor:  # [B, L] -> [B, d]
        return self._encode(*self.history_tokens(item_ids))

    def encode_items(self, items: torch.Tensor) -> torch.Tensor:  # [n] item ids -> [n, d]
        ids, kinds = self.token_ids[items], self.token_kinds[items]
        cls = torch.full((len(items), 1), self.cls_id, dtype=ids.dtype, device=ids.device)
        zero = torch.zeros_like(cls)
        real = (ids > 0).long()  # item position 1 on the item's tokens, 0 on [CLS] and padding
        return self._encode(
            torch.cat([cls, ids], 1),
            torch.cat([zero, kinds], 1),
            torch.cat([zero, real], 1),
            torch.cat([torch.ones_like(zero), real], 1),
        )

    @torch.no_grad()
    def refresh_item_table(self, batch_size: int = 256, progress: bool = False) -> None:
        """Re-encode every item with the current encoder (stage 1 does this each epoch)."""
        was = self.training
        self.eval()
        V = self.token_ids.shape[0]
        for start in tqdm(range(0, V, batch_size), desc="encode items", disable=not progress, leave=False):
            items = torch.arange(start, min(V, start + batch_size), device=self.token_ids.device)
            self.item_table[items] = self.encode_items(items)
        self.item_table[0] = 0.0
        self.train(was)

    def item_vectors(self) -> torch.Tensor:
        return self.item_table

    def loss(self, item_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Softmax over the whole (fixed) item table, cosine / temperature; padding never a candidate."""
        logits = self.user_vectors(item_ids) @ self.item_table[1:].T / self.cfg.temperature  # [B, V - 1]
        return F.cross_entropy(logits, targets - 1)


def build(data, text, cfg: RecformerTokensConfig = RecformerTokensConfig()) -> RecformerTokens:
    """The token-level model for a prepared dataset and its catalogue text (recsys.data.cards.load_item_text)."""
    from ..text import item_attributes

    model = RecformerTokens(cfg, data.num_items)
    model.set_item_attributes(item_attributes(data, text, cfg.words_per_attribute))
    return model


def random_prefixes(split, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random target index per user inside its training events (>= 1, so the history is never empty)."""
    return 1 + (rng.random(len(users)) * (split.train_lengths[users] - 1)).astype(np.int64)


def prefix_batch(data, starts: np.ndarray, cuts: np.ndarray, max_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(history windows [B, max_items] left-padded, targets [B]): the events before each cut and the one at it."""
    windows = padded_windows(data.item_ids, starts, starts + cuts, max_items)
    return torch.from_numpy(windows), torch.from_numpy(np.asarray(data.item_ids)[starts + cuts])
