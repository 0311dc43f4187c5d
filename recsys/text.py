"""Item text for text-based recommenders: flattened key-value sentences and their MiniLM vectors.

An item becomes a sentence of its attributes, Recformer-style: ``title: Toy Story (1995) genres:
Animation Children's Comedy`` (MovieLens) or ``title: ... brand: ... category: ...`` (Amazon, UniSRec
text), each attribute cut to ``max_words_per_attribute`` words. Vectors are
the packaged MiniLM's mean-pooled sentence embeddings, computed once per (catalogue text, settings) and
cached as .npy in RECSYS_CACHE/text/; items without text get a zero vector (and a printed count).
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from .data.cards import cache_dir
from .data.prepare import SequenceData
from .files import atomic_write_bytes, sha256_of

ATTRIBUTES = ("title", "genres", "brand", "category")  # in this order, where the catalogue has them


def item_attributes(
    data: SequenceData, text: pl.DataFrame, max_words_per_attribute: int = 24
) -> list[list[tuple[str, str]] | None]:
    """Per internal item id, its (key, value) attributes with each value cut to
    ``max_words_per_attribute`` words (index 0 = padding = None; None where the catalogue has no text)."""
    rows = {str(r["item_id"]): r for r in text.iter_rows(named=True)}  # one row per catalogue item
    out: list[list[tuple[str, str]] | None] = [None]
    for raw in data.item_raw_ids[1:]:
        row = rows.get(str(raw))
        parts = []
        for key in ATTRIBUTES if row is not None else ():
            value = row.get(key)
            if value:
                parts.append((key, " ".join(str(value).replace("|", " ").split()[:max_words_per_attribute])))
        out.append(parts or None)
    return out


def item_sentences(data: SequenceData, text: pl.DataFrame, max_words_per_attribute: int = 24) -> list[str | None]:
    """One flattened ``key: value key: value`` sentence per internal item id (None: no text)."""
    return [
        " ".join(f"{k}: {v}" for k, v in attrs) if attrs else None
        for attrs in item_attributes(data, text, max_words_per_attribute)
    ]


@torch.no_grad()
def encode_sentences(
    sentences: list[str | None], batch_size: int = 256, max_tokens: int = 64, progress: bool = True
) -> np.ndarray:
    """[N, 384] MiniLM sentence vectors (zeros for None), cached by content."""
    key = hashlib.sha256(json.dumps([sentences, max_tokens, "all-MiniLM-L6-v2"]).encode()).hexdigest()[:20]
    path = cache_dir() / "text" / f"{key}.npy"
    digest_path = path.with_name(path.name + ".sha256")  # written with the vectors, checked before use
    if path.exists():
        try:
            if digest_path.read_text().strip() == sha256_of(path):
                return np.load(path)
        except (OSError, ValueError):
            pass
        print(
            f"note: the cached text vectors {path} do not match their recorded checksum; encoding again",
            file=sys.stderr,
        )
    from .models.minilm import load_minilm

    model, tokenizer = load_minilm()
    tokenizer.enable_padding(pad_id=0)
    tokenizer.enable_truncation(max_tokens)
    out = np.zeros((len(sentences), model.cfg.hidden_size), dtype=np.float32)
    todo = [i for i, s in enumerate(sentences) if s]
    for b in tqdm(range(0, len(todo), batch_size), desc="encode item text", disable=not progress, leave=False):
        rows = todo[b : b + batch_size]
        enc = tokenizer.encode_batch([sentences[i] for i in rows])
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        out[rows] = model.sentence_embedding(ids, mask).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, out)
    atomic_write_bytes(digest_path, (sha256_of(tmp) + "\n").encode())
    tmp.replace(path)
    return out


def item_text_vectors(data: SequenceData, text: pl.DataFrame | None, verbose: bool = True) -> torch.Tensor:
    """[V, 384] text vectors by internal item id."""
    if text is None:
        raise ValueError("this model needs item text, and the dataset's card has none")
    sentences = item_sentences(data, text)
    missing = sum(s is None for s in sentences[1:])
    if missing and verbose:
        print(f"{missing:,} of {data.num_items - 1:,} items have no text: they get a zero text vector")
    return torch.from_numpy(encode_sentences(sentences, progress=verbose))
