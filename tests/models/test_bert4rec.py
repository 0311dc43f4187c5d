import pytest
import torch

from recsys.data.batching import cloze_inputs
from recsys.losses import LossConfig, next_item_loss
from recsys.models.bert4rec import BERT4Rec, BERT4RecConfig


def _model(**kw):
    torch.manual_seed(0)
    return BERT4Rec(
        BERT4RecConfig(max_seq_len=8, hidden_dim=16, num_blocks=2, num_heads=2, dropout=0.0, **kw), num_items=30
    ).eval()


def test_cloze_masks_only_real_items_and_at_least_one():
    window = torch.tensor([[0, 0, 0, 5, 6, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]])
    g = torch.Generator().manual_seed(0)
    inputs, targets = cloze_inputs(window, 5, mask_token=99, mask_prob=0.3, generator=g)
    items = window[:, -5:]
    masked = inputs == 99
    assert (masked.sum(1) >= 1).all()
    assert (items[masked] != 0).all()  # padding is never masked
    assert torch.equal(targets[masked], items[masked]) and (targets[~masked] == 0).all()
    assert torch.equal(inputs[~masked], items[~masked])
    # the mask rate is about mask_prob over many rows
    big = torch.randint(1, 50, (2000, 20))
    inputs, _ = cloze_inputs(big, 20, 99, 0.2, torch.Generator().manual_seed(1))
    assert abs((inputs == 99).float().mean().item() - 0.2) < 0.01


def test_bidirectional_and_mask_token_not_a_candidate():
    m = _model()
    ids = torch.tensor([[3, 4, 5, 6]])
    out = m(ids)
    changed = ids.clone()
    changed[0, 3] = 20
    assert not torch.allclose(out[:, 0], m(changed)[:, 0])  # a later item changes an earlier output
    assert m.item_vectors().shape[0] == 30 and m.mask_token == 30


def test_user_vector_reads_an_appended_mask():
    m = _model()
    ids = torch.tensor([[0, 3, 4, 5]])
    manual = m(torch.tensor([[0, 3, 4, 5, 30]]))[:, -1]
    torch.testing.assert_close(m.user_vectors(ids), manual)
    full = torch.arange(1, 9)[None]  # a full window drops its oldest item for the mask
    torch.testing.assert_close(m.user_vectors(full), m(torch.cat([full[:, 1:], torch.tensor([[30]])], 1))[:, -1])


def test_overfits_eight_sequences_by_cloze():
    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(max_seq_len=6, hidden_dim=32, num_blocks=1, num_heads=1, dropout=0.0), num_items=25)
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, 25, (8, 6), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = LossConfig(name="ce")
    for _ in range(300):
        inputs, targets = cloze_inputs(seqs, 6, model.mask_token, 0.3, g)
        loss = next_item_loss(cfg, model(inputs), targets, model.item_vectors())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    # last item of each sequence predicted from the rest + [mask]
    last = model(torch.cat([seqs[:, :-1], torch.full((8, 1), model.mask_token)], 1))[:, -1] @ model.item_vectors().T
    last[:, 0] = float("-inf")
    assert (last.argmax(-1) == seqs[:, -1]).float().mean() >= 0.9


@pytest.mark.parametrize("dense", [False, True])  # dense: computed in the grid layout (GridRows)
def test_user_vectors_of_a_padded_batch_equal_the_full_forward(dense):
    from recsys.models.layers import packing

    m = _model()
    ids = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 7]])
    if dense:
        ids = torch.tensor([[0, 5, 3, 4], [1, 2, 3, 4], [9, 8, 6, 7], [0, 1, 2, 3]])
    with_mask = torch.cat([ids, torch.full((len(ids), 1), 30)], dim=1)
    assert ((with_mask != 0).sum() >= packing.GRID_MIN_REAL_SHARE * with_mask.numel()) == dense
    torch.testing.assert_close(m.user_vectors(ids), m(with_mask)[:, -1], rtol=1e-5, atol=1e-6)
