import numpy as np
import polars as pl
import pytest
import torch

from recsys.data.prepare import prepare_sequences
from recsys.data.readers import frame_to_interactions
from recsys.data.splits import make_split
from recsys.evaluation import EvalConfig, evaluate
from recsys.metrics import ranking_metrics
from recsys.models.sasrec import SASRec, SASRecConfig


def _split(n_users=50, n_items=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        length = int(rng.integers(3, 15))
        items = rng.integers(1, n_items + 1, length)  # repeats allowed: targets may be seen items
        rows += [(u, int(i), t) for t, i in enumerate(items)]
    df = pl.DataFrame({"u": [r[0] for r in rows], "i": [r[1] for r in rows], "t": [r[2] for r in rows]})
    seq = prepare_sequences(frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}), verbose=False)
    return make_split(seq, "leave_one_out", verbose=False)


def _brute_force_ranks(model, split, eval_set, max_len, exclude_seen):
    """Per user, one at a time, with a full argsort (the slow obvious way)."""
    model.eval()
    ranks = []
    data = split.data
    items = model.item_vectors().detach()
    for u, n, target in zip(eval_set.users, eval_set.history_lengths, eval_set.targets):
        history = data.sequence(u)[:n]
        ids = torch.from_numpy(history[-max_len:])[None]
        with torch.no_grad():
            scores = (model.user_vectors(ids) @ items.T)[0]
        target_score = scores[target].item()
        candidates = set(range(1, len(items)))
        if exclude_seen:
            candidates -= set(history.tolist())
        candidates.discard(int(target))
        ranks.append(1 + sum(scores[c].item() > target_score for c in candidates))
    return ranks


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("block_size", [7, 64])
def test_evaluator_equals_brute_force(exclude_seen, block_size):
    split = _split()
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    cfg = EvalConfig(ks=(1, 5, 10), exclude_seen=exclude_seen, block_size=block_size)
    out = evaluate(model, split, split.test, 8, cfg, return_ranks=True)
    expected = _brute_force_ranks(model, split, split.test, 8, exclude_seen)
    assert out["ranks"].tolist() == expected
    ref = ranking_metrics(expected, ks=(1, 5, 10))
    for name in ("hr@10", "ndcg@10", "mrr", "ndcg@5"):
        assert out[name] == pytest.approx(ref[name], abs=1e-12)


def test_exclude_seen_only_raises_metrics():
    split = _split(seed=1)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    on = evaluate(model, split, split.test, 8, EvalConfig(exclude_seen=True), return_ranks=True)["ranks"]
    off = evaluate(model, split, split.test, 8, EvalConfig(exclude_seen=False), return_ranks=True)["ranks"]
    assert (on <= off).all() and (on < off).any()


def test_memory_budget_shrinks_blocks_not_results():
    split = _split(seed=2)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    big = evaluate(model, split, split.test, 8, EvalConfig(block_size=512), return_ranks=True)["ranks"]
    tiny = evaluate(model, split, split.test, 8, EvalConfig(block_size=512, max_block_mb=0), return_ranks=True)["ranks"]
    assert torch.equal(big, tiny)
