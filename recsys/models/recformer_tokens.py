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
cosine / temperature. Training (:func:`fit`), as the paper's fine-tuning: stage 1 re-encodes the
whole catalogue with the current encoder at the start of every epoch and trains the encoder on the
histories with a softmax over that (fixed, gradient-free) item table; stage 2 freezes the item table
of the best stage-1 encoder and trains on.

What differs from the paper: the encoder is the packaged 6-layer MiniLM (512 positions, mean
pooling) rather than Longformer (its [CLS] state, 1,024 tokens), so ``max_tokens`` <= 512; each
epoch trains one randomly cut prefix per user instead of every prefix; no masked-language-model
pre-training on other domains (the MiniLM weights are the starting point). Cost: ~130 MFLOP per
token per training step, so this model is for GPUs; ``recsys.models.recformer`` is the two-level
variant that fits a CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.batching import padded_windows

KIND_SPECIAL, KIND_KEY, KIND_VALUE = 0, 1, 2


@dataclass
class RecformerTokensConfig:
    tokens_per_item: int = 32
    max_items: int = 15  # most recent items of a history that are read
    max_tokens: int = 512  # [CLS] + history tokens (MiniLM has 512 positions)
    temperature: float = 0.05
    words_per_attribute: int = 24


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


class RecformerTokens(nn.Module):
    """The token-level encoder; implements ``item_vectors`` / ``user_vectors`` for the shared evaluator."""

    causal = False

    def __init__(
        self,
        cfg: RecformerTokensConfig,
        token_ids: torch.Tensor,
        token_kinds: torch.Tensor,
        language_model: nn.Module,
        cls_id: int,
    ):
        super().__init__()
        self.cfg = cfg
        self.lm = language_model
        d = language_model.cfg.hidden_size
        if cfg.max_tokens > language_model.cfg.max_position_embeddings:
            raise ValueError(
                f"max_tokens {cfg.max_tokens} > the language model's "
                f"{language_model.cfg.max_position_embeddings} positions"
            )
        self.register_buffer("token_ids", token_ids, persistent=False)  # [V, T]
        self.register_buffer("token_kinds", token_kinds, persistent=False)  # [V, T]
        self.cls_id = cls_id
        # Recformer's added tables start at zero: the pretrained model's behaviour is the starting point
        self.kind_embedding = nn.Embedding(3, d)
        self.item_position_embedding = nn.Embedding(cfg.max_items + 1, d)
        nn.init.zeros_(self.kind_embedding.weight)
        nn.init.zeros_(self.item_position_embedding.weight)
        self.register_buffer("item_table", torch.zeros(token_ids.shape[0], d), persistent=False)

    def _encode(self, ids, kinds, item_pos, mask) -> torch.Tensor:  # [B, S] each -> [B, d] unit vectors
        extra = self.kind_embedding(kinds) + self.item_position_embedding(item_pos)
        states = self.lm(ids, mask, extra_embeddings=extra)  # [B, S, d]
        m = mask.unsqueeze(-1).to(states.dtype)
        return F.normalize((states * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def history_tokens(self, item_ids: torch.Tensor):
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
    from .minilm import load_minilm

    lm, tokenizer = load_minilm()
    ids, kinds = item_token_table(item_attributes(data, text, cfg.words_per_attribute), tokenizer, cfg.tokens_per_item)
    return RecformerTokens(cfg, ids, kinds, lm.train(), tokenizer.token_to_id("[CLS]"))


def random_prefixes(split, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random target index per user inside its training events (>= 1, so the history is never empty)."""
    return 1 + (rng.random(len(users)) * (split.train_lengths[users] - 1)).astype(np.int64)


def prefix_batch(data, starts: np.ndarray, cuts: np.ndarray, max_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(history windows [B, max_items] left-padded, targets [B]): the events before each cut and the one at it."""
    windows = padded_windows(data.item_ids, starts, starts + cuts, max_items)
    return torch.from_numpy(windows), torch.from_numpy(np.asarray(data.item_ids)[starts + cuts])


def fit(
    model: RecformerTokens,
    split,
    epochs_stage1: int,
    epochs_stage2: int = 0,
    batch_size: int = 16,
    lr: float = 5e-5,
    seed: int = 0,
    max_steps_per_epoch: int | None = None,
    eval_fn=None,
    progress: bool = True,
) -> list[dict]:
    """Two-stage fine-tuning on a split's training events; one random prefix per user per epoch.

    ``eval_fn(model) -> float`` (validation NDCG@10, say) picks the best stage-1 encoder, whose item
    table stage 2 keeps frozen. Returns one record per epoch (loss, seconds, steps, eval)."""
    data = split.data
    users = np.flatnonzero(split.train_lengths >= 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    history, best, best_state = [], -math.inf, None
    table_is_current = False  # the item table encodes the items with the encoder's current weights
    for epoch in range(epochs_stage1 + epochs_stage2):
        stage = 1 if epoch < epochs_stage1 else 2
        if epoch == epochs_stage1 and best_state is not None:  # stage 2 starts from the best stage-1 model
            model.load_state_dict(best_state)
            table_is_current = False
        if (stage == 1 or epoch == epochs_stage1) and not table_is_current:
            model.refresh_item_table()  # stage 1: every epoch; stage 2: once, then frozen
        rng = np.random.default_rng(seed * 1_000_003 + epoch)
        order = rng.permutation(users)
        cuts = random_prefixes(split, order, rng)
        starts = data.seq_offsets[order]
        steps = math.ceil(len(order) / batch_size)
        if max_steps_per_epoch:
            steps = min(steps, max_steps_per_epoch)
        model.train()
        total, t0 = torch.zeros((), device=model.item_table.device), time.perf_counter()  # no sync per step
        for step in tqdm(range(steps), desc=f"stage {stage} epoch {epoch + 1}", disable=not progress, leave=False):
            rows = slice(step * batch_size, (step + 1) * batch_size)
            windows, targets = prefix_batch(data, starts[rows], cuts[rows], model.cfg.max_items)
            loss = model.loss(windows, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        table_is_current = False
        record = {
            "epoch": epoch + 1,
            "stage": stage,
            "train_loss": float(total) / max(steps, 1),
            "steps": steps,
            "train_seconds": time.perf_counter() - t0,
            "sequences": min(len(order), steps * batch_size),
        }
        if eval_fn is not None:
            if stage == 1:  # score with the items as this epoch's encoder sees them (reused by the next epoch)
                model.refresh_item_table()
                table_is_current = True
            record["eval"] = eval_fn(model)
            if stage == 1 and record["eval"] > best:
                best = record["eval"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(record)
    return history
