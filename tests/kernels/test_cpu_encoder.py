"""The fused CPU encoder kernel against its PyTorch reference and against the models' own PyTorch path."""

import os
import shutil
import sys
import warnings

import pytest
import torch

from recsys.kernels import cpu_build, cpu_encoder, cpu_ranking, cpu_softmax_ce
from recsys.models.base import build_model
from tests.conftest import REPO, needs_data

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")


@pytest.fixture(autouse=True)
def _fresh_kernel_state(monkeypatch):
    # every test decides availability anew (its own RECSYS_CACHE, its own environment)
    monkeypatch.setattr(cpu_build, "_state", None)
    monkeypatch.setattr(cpu_build, "_library", None)


def _left_padded(counts: torch.Tensor, length: int, num_items: int, gen: torch.Generator) -> torch.Tensor:
    ids = torch.randint(1, num_items, (len(counts), length), generator=gen)
    return ids * (torch.arange(length) >= length - counts[:, None])


@pytest.mark.parametrize(
    "causal,folded,heads", [(True, True, 1), (True, False, 1), (True, False, 4), (False, False, 2), (False, True, 1)]
)
@pytest.mark.parametrize("dim,ffn", [(32, 48), (20, 20)])  # 20: widths that are no multiple of 8 or 16
def test_kernel_equals_the_reference(causal, folded, heads, dim, ffn):
    assert cpu_build.available()
    gen = torch.Generator().manual_seed(dim + heads)
    if dim % heads:
        pytest.skip("heads must divide the width")
    weights = cpu_encoder.random_weights(60, 40, dim, heads, ffn, 3, causal, folded, gen)
    counts = torch.tensor([1, 2, 5, 6, 7, 13, 40, 39, 40, 17, 3])  # query tiles of 6: every remainder
    ids = _left_padded(counts, 40, 60, gen)
    got = cpu_encoder.encode_last(ids, weights, counts, num_threads=2)
    torch.testing.assert_close(got, cpu_encoder.reference_encode_last(ids, weights), rtol=1e-4, atol=1e-4)
    # one thread or three: each row is computed by one thread alone, so the bits do not change
    assert torch.equal(cpu_encoder.encode_last(ids, weights, counts, num_threads=1), got)
    assert torch.equal(cpu_encoder.encode_last(ids, weights, counts, num_threads=3), got)


def test_a_row_does_not_depend_on_its_batch_or_padding():
    assert cpu_build.available()
    gen = torch.Generator().manual_seed(3)
    weights = cpu_encoder.random_weights(60, 30, 16, 1, 16, 2, True, True, gen)
    counts = torch.tensor([4, 30, 9])
    ids = _left_padded(counts, 30, 60, gen)
    batch = cpu_encoder.encode_last(ids, weights, counts)
    alone = cpu_encoder.encode_last(ids[2:, -9:], weights, counts[2:])  # the same history, no padding
    assert torch.equal(batch[2:], alone)


def test_left_padded_counts():
    assert cpu_encoder.left_padded_counts(torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])).tolist() == [2, 4]
    assert cpu_encoder.left_padded_counts(torch.tensor([[0, 3, 0, 4]])) is None  # padding between items
    assert cpu_encoder.left_padded_counts(torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4]])) is None  # an empty row
    assert cpu_encoder.left_padded_counts(torch.zeros(0, 4, dtype=torch.long)) is None


def test_the_library_is_built_into_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))
    assert cpu_build.available()
    built = list((tmp_path / "kernels").glob("cpu_kernels-*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob("*.tmp"))


@pytest.mark.skipif(cpu_build._openmp_runtime() is None, reason="torch runs no libgomp thread pool here")
def test_the_kernels_run_on_torchs_own_thread_pool():
    assert cpu_build.available() and cpu_build.uses_torch_threads()


def test_threads_of_its_own_compute_the_same_bits(tmp_path, monkeypatch):
    """The fallback where torch runs no OpenMP pool: pthreads started per call (a fresh library copy)."""
    gen = torch.Generator().manual_seed(5)
    weights = cpu_encoder.random_weights(70, 24, 32, 2, 40, 2, False, False, gen)
    counts = torch.tensor([24, 1, 7, 13, 6])
    ids = _left_padded(counts, 24, 70, gen)
    users = torch.randn(9, 32, generator=gen)
    targets, seen = torch.randint(1, 70, (9,), generator=gen), (torch.tensor([0, 0, 4]), torch.tensor([3, 9, 1]))

    def outputs():
        assert cpu_build.available()
        ranker = cpu_ranking.ItemRanker(weights.item_table, 70)
        return (
            cpu_encoder.encode_last(ids, weights, counts, num_threads=2),
            ranker.ranks(users, targets, seen, "optimistic", num_threads=2),
        )

    first = outputs()
    monkeypatch.setattr(cpu_build, "_openmp_runtime", lambda: None)
    monkeypatch.setattr(cpu_build, "_state", None)
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))
    second = outputs()
    assert not cpu_build.uses_torch_threads()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_built_without_native_instructions_the_kernels_agree(tmp_path, monkeypatch):
    """The build's fallback target (no -march=native: x86-64's SSE2 baseline, no AVX or FMA; also what
    other targets get where -march=native is refused) compiles, passes the load-time check and gives
    the native build's results to float rounding."""
    gen = torch.Generator().manual_seed(6)
    weights = cpu_encoder.random_weights(70, 24, 32, 2, 40, 2, False, False, gen)
    counts = torch.tensor([24, 1, 7, 13, 6])
    ids = _left_padded(counts, 24, 70, gen)
    hidden, items = torch.randn(50, 32, generator=gen), torch.randn(70, 32, generator=gen) * 0.3
    targets = torch.randint(0, 70, (50,), generator=gen)

    logits = (torch.randn(64, 37, generator=gen) * 4).bfloat16()  # the bf16 CE's exponentials (8 lanes, no
    # AVX512-BF16 conversion there)

    def outputs():
        assert cpu_build.available()
        loss, grad_hidden, grad_items = cpu_softmax_ce.softmax_ce(hidden, items, targets, True)
        block = logits.clone()
        sums = cpu_softmax_ce.bf16_exp_column_sums(block)
        return (
            cpu_encoder.encode_last(ids, weights, counts, num_threads=2),
            loss,
            grad_hidden,
            grad_items,
            block.float(),
            sums,
        )

    native = outputs()
    wrapper = tmp_path / "cc-baseline"  # the system compiler with -march=native dropped
    wrapper.write_text(
        f"#!{sys.executable}\nimport os, shutil, sys\n"
        "args = [a for a in sys.argv[1:] if a != '-march=native']\n"
        f"os.execv({shutil.which('cc')!r}, ['cc', *args])\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_build, "_state", None)
    baseline = outputs()
    assert list((tmp_path / "cache" / "kernels").glob("cpu_kernels-*.so"))
    for got, want in zip(baseline, native):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_switched_off_or_without_a_compiler_the_models_use_pytorch(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_CPU_ENCODER", "torch")
    assert not cpu_build.available()
    monkeypatch.delenv("RECSYS_CPU_ENCODER")
    monkeypatch.setattr(cpu_build, "_state", None)
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    with pytest.warns(RuntimeWarning, match="fused CPU kernels unavailable"):
        assert not cpu_build.available()
    m = build_model("sasrec", {"max_seq_len": 8, "hidden_dim": 16, "num_heads": 1, "dropout": 0.0}, 30).eval()
    ids = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(m.user_vectors(ids), m(ids)[:, -1], rtol=1e-5, atol=1e-5)


def _spread_weights(model):
    torch.manual_seed(1)
    for p in model.parameters():  # away from the small initialisation, so every term matters
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.mark.parametrize(
    "name,kw",
    [
        ("sasrec", {"num_heads": 1}),
        ("sasrec", {"num_heads": 2, "num_blocks": 3}),
        ("bert4rec", {"num_heads": 2, "ffn_dim": 64}),
        ("bert4rec", {"num_heads": 1}),
    ],
)
def test_models_user_vectors_equal_their_pytorch_path(name, kw):
    assert cpu_build.available()
    torch.manual_seed(0)
    m = _spread_weights(build_model(name, {"max_seq_len": 20, "hidden_dim": 16, "dropout": 0.3, **kw}, 50)).eval()
    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor([1, 3, 19, 20, 7, 12])
    ids = _left_padded(counts, 20, 50, gen)
    calls = []
    original = cpu_encoder.encode_last
    with torch.no_grad():
        cpu_encoder.encode_last = lambda *a, **k: calls.append(1) or original(*a, **k)
        try:
            fused = m.user_vectors(ids)
        finally:
            cpu_encoder.encode_last = original
        m.fused_cpu_inference = False
        plain = m.user_vectors(ids)
    assert calls, "the kernel did not run"
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


def test_training_gradients_and_decoupled_tables_keep_the_pytorch_path():
    m = build_model("sasrec", {"max_seq_len": 8, "hidden_dim": 16, "num_heads": 1, "dropout": 0.0}, 30)
    ids = torch.tensor([[0, 0, 3, 4, 5]])
    from recsys.models.layers import fused_last_hidden

    assert fused_last_hidden(m, ids, True) is None  # training mode
    m.eval()
    assert fused_last_hidden(m, ids, True) is None  # gradients enabled
    with torch.no_grad():
        assert fused_last_hidden(m, ids, True) is not None
        assert fused_last_hidden(m, torch.tensor([[0, 3, 0, 5]]), True) is None  # not left-padded
        d = build_model("sasrec", {"max_seq_len": 8, "hidden_dim": 16, "attention_table_dim": 8}, 30).eval()
        assert fused_last_hidden(d, ids, True) is None  # DARE-style decoupling


@needs_data("ml-1m")
@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_ml1m_test_metrics_are_the_same_through_the_kernel(tmp_path, name):
    """The real ML-1M log (histories up to 200), one epoch of training: the test metrics through the
    kernel equal the PyTorch path's (a near-tie may flip a rank), and the user vectors agree."""
    from recsys.config import load_recipe
    from recsys.evaluation import iter_eval_batches
    from recsys.train import Trainer, prepare_data

    assert cpu_build.available()
    cfg = load_recipe(
        REPO / f"recipes/ml-1m/{name}.toml", ["model.hidden_dim=32", "train.epochs=1", "train.num_threads=2"]
    )
    trainer = Trainer(cfg, tmp_path / "run", data=prepare_data(cfg.data, verbose=False), progress=False)
    trainer.train_epoch()
    fused = trainer.evaluate("test")
    trainer.model.fused_cpu_inference = False
    plain = trainer.evaluate("test")
    users = plain["num_users"]
    assert fused["num_users"] == users > 2000
    for key in ("hr@10", "ndcg@10", "mrr", "hr@20"):
        assert fused[key] == pytest.approx(plain[key], abs=2 / users), key
    assert plain["hr@10"] > 0.01  # it learned something (a random ranking: 10 / 3,600 items)
    batch = next(iter_eval_batches(trainer.split, trainer.split.test, cfg.max_seq_len, 64))
    model = trainer.model.eval()
    with torch.no_grad():
        model.fused_cpu_inference = True
        a = model.user_vectors(batch.item_ids)
        model.fused_cpu_inference = False
        b = model.user_vectors(batch.item_ids)
    assert batch.item_ids.shape[1] > 100  # long real histories
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about on a machine with a compiler
        assert cpu_build.available()


@pytest.mark.parametrize("tie_policy", ["optimistic", "pessimistic"])
def test_ranker_equals_the_score_matrix_ranks(tie_policy):
    """Integer-valued vectors make every score exact on both sides, ties (duplicated items) included."""
    from recsys.metrics import ranks_from_item_scores

    assert cpu_build.available()
    gen = torch.Generator().manual_seed(0)
    # more than two chunks of 1,024 items; a width that is no multiple of 8; 203 users: 34 tiles of 6,
    # shared by units of 4 tiles with 2 threads and of 8 with one (the last unit and tile partial)
    V, D, B = 2500, 12, 203
    items = torch.randint(-3, 4, (V, D), generator=gen).float()
    items[100:140] = items[7]  # ties with item 7
    users = torch.randint(-2, 3, (B, D), generator=gen).float()
    targets = torch.randint(1, V, (B,), generator=gen)
    targets[:3] = 7
    rows = torch.randint(0, B, (3000,), generator=gen)
    seen = torch.randint(0, V, (3000,), generator=gen)
    seen[:2] = targets[rows[:2]]  # a target that was also seen is still ranked
    padded = torch.cat([items, torch.randn(12, D)])  # alignment rows past the catalogue: never ranked
    scores = padded @ users.T
    scores[0] = float("-inf")
    scores[V:] = float("-inf")
    expected = ranks_from_item_scores(scores, targets, (rows, seen), tie_policy)
    ranker = cpu_ranking.ItemRanker(padded, V)
    assert torch.equal(ranker.ranks(users, targets, (rows, seen), tie_policy), expected)
    order = torch.argsort(rows, stable=True)  # the same pairs sorted by user
    assert torch.equal(ranker.ranks(users, targets, (rows[order], seen[order]), tie_policy, num_threads=1), expected)
    scores = padded @ users.T
    scores[0] = float("-inf")
    scores[V:] = float("-inf")
    assert torch.equal(
        ranker.ranks(users, targets, None, tie_policy), ranks_from_item_scores(scores, targets, None, tie_policy)
    )


@pytest.mark.parametrize("P,V,D", [(1, 1, 8), (47, 5, 20), (49, 48, 16), (97, 101, 64), (48, 200, 33)])
@pytest.mark.parametrize("logit_scale", [1.0, 40.0])  # 40: logits ~ +-300, the running max must shift
def test_softmax_ce_equals_torch_cross_entropy(P, V, D, logit_scale):
    """Every remainder of the 48-position and 48-item tiles, widths that are no multiple of 8."""
    assert cpu_build.available()
    gen = torch.Generator().manual_seed(P + V)
    hidden = (torch.randn(P, D, generator=gen) * logit_scale / D**0.5).requires_grad_()
    items = torch.randn(V, D, generator=gen).requires_grad_()
    targets = torch.randint(0, V, (P,), generator=gen)
    ref = torch.nn.functional.cross_entropy(hidden @ items.T, targets)
    ref_grads = torch.autograd.grad(ref, (hidden, items))
    losses, grad_hidden, grad_items = cpu_softmax_ce.softmax_ce(hidden, items, targets, True, num_threads=2)
    assert losses.shape == (P,) and torch.isfinite(losses).all()
    assert losses.mean().item() == pytest.approx(ref.item(), rel=2e-6, abs=1e-6 * logit_scale)
    torch.testing.assert_close(grad_hidden, ref_grads[0], rtol=1e-5, atol=1e-6 * logit_scale)
    torch.testing.assert_close(grad_items, ref_grads[1], rtol=1e-5, atol=1e-6 * logit_scale)
    # each output row is one thread's alone: the same bits with 1 or 3 threads; the value alone without
    # gradients is the same number
    one = cpu_softmax_ce.softmax_ce(hidden, items, targets, True, num_threads=1)
    three = cpu_softmax_ce.softmax_ce(hidden, items, targets, True, num_threads=3)
    assert all(
        torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(one, three, (losses, grad_hidden, grad_items))
    )
    value, none_h, none_w = cpu_softmax_ce.softmax_ce(hidden, items, targets, False)
    assert torch.equal(value, losses) and none_h is None and none_w is None


@pytest.mark.parametrize("kept_floats", [0, 192 * 192, 192 * 288, -1])
def test_softmax_ce_in_position_groups_or_recomputed(kept_floats):
    """The kept exponentials in groups of positions (11 blocks of 48: 192 x 192 floats fit 4 blocks, so
    groups of 4 + 4 + 3; 192 x 288 fit 6: 6 + 5; the default: one group) and the recomputing path (0):
    each equals torch's cross-entropy, and the other path to rounding, with the same bits for any
    number of threads."""
    assert cpu_build.available()
    P, V, D = 500, 101, 24  # 528 padded positions = 11 blocks; 101 items = 2 tiles = 192 rows
    assert cpu_softmax_ce.ce_keeps_exponentials(528, V, kept_floats) == (kept_floats != 0)
    gen = torch.Generator().manual_seed(3)
    hidden = (torch.randn(P, D, generator=gen) * 3.0).requires_grad_()
    items = torch.randn(V, D, generator=gen).requires_grad_()
    targets = torch.randint(0, V, (P,), generator=gen)
    ref = torch.nn.functional.cross_entropy(hidden @ items.T, targets)
    ref_grads = torch.autograd.grad(ref, (hidden, items))
    got = cpu_softmax_ce.softmax_ce(hidden, items, targets, True, num_threads=2, kept_floats=kept_floats)
    assert got[0].mean().item() == pytest.approx(ref.item(), rel=2e-6)
    torch.testing.assert_close(got[1], ref_grads[0], rtol=1e-5, atol=3e-6)
    torch.testing.assert_close(got[2], ref_grads[1], rtol=1e-5, atol=3e-6)
    for threads in (1, 3):
        other = cpu_softmax_ce.softmax_ce(hidden, items, targets, True, num_threads=threads, kept_floats=kept_floats)
        assert all(torch.equal(a, b) for a, b in zip(got, other))
    recomputed = cpu_softmax_ce.softmax_ce(hidden, items, targets, True, kept_floats=0)
    assert torch.equal(recomputed[0], got[0])  # phase 1 is the same either way
    torch.testing.assert_close(recomputed[2], got[2], rtol=1e-5, atol=1e-7)


def test_softmax_ce_keeps_exponentials_only_where_a_group_fits():
    assert cpu_build.available()
    # Beauty's shape keeps them by default; 10^6 items would need 384 MB for 96 positions: recomputed
    assert cpu_softmax_ce.ce_keeps_exponentials(720, 54542) and not cpu_softmax_ce.ce_keeps_exponentials(25600, 10**6)
    assert cpu_softmax_ce.ce_keeps_exponentials(96, 10**5)  # fewer positions than CE_KEPT_MIN: all of them
    assert not cpu_softmax_ce.ce_keeps_exponentials(720, 54542, kept_floats=0)


def test_softmax_ce_checks_its_targets():
    assert cpu_build.available()
    with pytest.raises(RuntimeError, match="code 3"):
        cpu_softmax_ce.softmax_ce(torch.randn(3, 8), torch.randn(5, 8), torch.tensor([0, 5, 1]), True)


def test_training_loss_and_gradients_through_the_kernel_equal_the_pytorch_path(monkeypatch):
    """A SASRec training step's full CE (padding row, masked positions) with the kernel and without."""
    from recsys import losses

    assert cpu_build.available()
    model = build_model("sasrec", {"max_seq_len": 12, "hidden_dim": 24, "num_heads": 1, "dropout": 0.0}, 130)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 130, (6, 12), generator=gen)
    ids[:3, :4] = 0
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = 0

    def step():
        model.zero_grad()
        loss = losses.next_item_loss(losses.LossConfig(name="ce"), model(ids), targets, model.item_embedding.weight)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    kernel = step()
    monkeypatch.setattr(losses.full_ce, "_cpu_kernel_usable", lambda hidden, table: False)
    pytorch = step()
    assert kernel[0].item() == pytest.approx(pytorch[0].item(), rel=1e-6)
    for a, b in zip(kernel[1], pytorch[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rows,cols", [(1, 1), (300, 37), (700, 384), (257, 16)])  # every lane remainder
@pytest.mark.parametrize("shifted", [False, True])
def test_bf16_exp_column_sums_equal_torch(rows, cols, shifted):
    """The bf16 CE's elementwise pass: exp(x - shift) rounded to bf16 in place, fp32 column sums of the
    unrounded values; the same as torch's exp of the widened values (rounded the same way, to the last
    bit but for an fp32 rounding that lands on a bf16 tie), the same bits for 1 or 3 threads."""
    assert cpu_build.available()
    gen = torch.Generator().manual_seed(rows + cols)
    x = (torch.randn(rows, cols, generator=gen) * 4).bfloat16()
    shift = x.float().amax(dim=0) if shifted else None
    exact = (x.double() - (shift.double() if shifted else 0)).exp()
    block = x.clone()
    sums = cpu_softmax_ce.bf16_exp_column_sums(block, shift, num_threads=2)
    want = exact.float().bfloat16()
    assert (block != want).float().mean() <= 1e-3
    torch.testing.assert_close(block.float(), want.float(), rtol=2**-8, atol=0)
    torch.testing.assert_close(sums.double(), exact.sum(dim=0), rtol=1e-5, atol=0)
    for threads in (1, 3):
        again = x.clone()
        assert torch.equal(cpu_softmax_ce.bf16_exp_column_sums(again, shift, num_threads=threads), sums)
        assert torch.equal(again, block)


def test_bf16_exp_column_sums_report_clamped_inputs():
    """Inputs past 88 are clamped (e^88 ~ 2^127): their column's sum reaches BF16_EXP_LARGEST_SUM, which
    the loss takes as an overflow and redoes with the column's max subtracted."""
    assert cpu_build.available()
    x = torch.zeros(40, 20).bfloat16()
    x[3, 5] = 95.0
    sums = cpu_softmax_ce.bf16_exp_column_sums(x.clone())
    assert sums[5] >= cpu_softmax_ce.BF16_EXP_LARGEST_SUM and torch.isfinite(sums).all()
    assert (sums[torch.arange(20) != 5] == 40).all()
    with pytest.raises(ValueError, match="bf16"):
        cpu_softmax_ce.bf16_exp_column_sums(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="one value per column"):
        cpu_softmax_ce.bf16_exp_column_sums(x.clone(), torch.zeros(3))


@pytest.mark.parametrize("logit_scale", [1.0, 30.0])  # 30: sums overflow, each block redone shifted
def test_bf16_ce_through_the_kernel_equals_its_pytorch_path(monkeypatch, logit_scale):
    """The bf16 full CE with its elementwise pass in the kernel and in torch ops (exp, bf16 reduction):
    the same loss and gradients to the bf16 rounding of the column sums (the kernel's are fp32)."""
    from recsys import losses

    assert cpu_build.available()
    gen = torch.Generator().manual_seed(4)
    hidden = (torch.randn(90, 32, generator=gen) * logit_scale / 32**0.5).requires_grad_()
    table = torch.randn(301, 32, generator=gen).requires_grad_()
    targets = torch.randint(1, 301, (90,), generator=gen)

    def run():
        loss = losses.full_softmax_ce(hidden, table, targets, chunk=32, compute_dtype=torch.bfloat16)
        return (loss, *torch.autograd.grad(loss, (hidden, table)))

    calls = []
    kernel_sums = cpu_softmax_ce.bf16_exp_column_sums
    monkeypatch.setattr(cpu_softmax_ce, "bf16_exp_column_sums", lambda *a, **k: calls.append(1) or kernel_sums(*a, **k))
    fused = run()
    assert len(calls) == (3 if logit_scale == 1.0 else 6)  # 3 blocks of 32 positions (twice each: redone)
    monkeypatch.setattr(cpu_softmax_ce, "available", lambda: False)
    plain = run()
    assert fused[0].item() == pytest.approx(plain[0].item(), rel=2e-3)
    for a, b in zip(fused[1:], plain[1:]):
        assert (a - b).abs().max() <= 0.01 * b.abs().max()


def test_ranker_counts_ties_as_the_score_matrix_does():
    """(above, ties) by the kernel: integer-valued vectors make every score exact, so ties are exact too."""
    from recsys.metrics import rank_counts_from_item_scores

    assert cpu_build.available()
    gen = torch.Generator().manual_seed(1)
    V, D, B = 2100, 8, 50
    items = torch.randint(-1, 2, (V, D), generator=gen).float()  # few distinct vectors: many ties
    users = torch.randint(-1, 2, (B, D), generator=gen).float()
    targets = torch.randint(1, V, (B,), generator=gen)
    rows = torch.randint(0, B, (500,), generator=gen)
    seen = torch.randint(0, V, (500,), generator=gen)
    padded = torch.cat([items, torch.zeros(12, D)])
    scores = padded @ users.T
    scores[0] = float("-inf")
    scores[V:] = float("-inf")
    above, ties = rank_counts_from_item_scores(scores, targets, (rows, seen))
    assert int(ties.sum()) > 1000
    got_above, got_ties = cpu_ranking.ItemRanker(padded, V).counts(users, targets, (rows, seen))
    assert torch.equal(got_above, above) and torch.equal(got_ties, ties)


CHECK = "from recsys.kernels import cpu_build; print('kernel', cpu_build.available())"


def _kernel_run(cache):
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "RECSYS_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", CHECK], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )


def test_a_truncated_compiled_kernel_is_rebuilt_not_loaded(tmp_path):
    """A truncated library in the cache killed every command with a bus error; now its hash is checked first."""
    import shutil

    assert cpu_build.available()
    built = sorted(cpu_build._cache_dir().glob("cpu_kernels-*.so"))
    assert built and all(cpu_build._verified(p) for p in built)
    shutil.copytree(cpu_build._cache_dir(), tmp_path / "kernels")
    for so in (tmp_path / "kernels").glob("*.so"):
        so.write_bytes(so.read_bytes()[:4096])
    run = _kernel_run(tmp_path)
    assert run.returncode == 0 and "kernel True" in run.stdout, run.stderr
    assert "does not match the hash recorded" in run.stderr and "rebuilding" in run.stderr
    assert all(cpu_build._verified(p) for p in (tmp_path / "kernels").glob("*.so"))


def test_kernels_are_never_loaded_from_a_folder_others_can_write(tmp_path):
    (tmp_path / "kernels").mkdir(mode=0o700)
    os.chmod(tmp_path / "kernels", 0o777)
    run = _kernel_run(tmp_path)
    assert run.returncode == 0 and "kernel False" in run.stdout
    assert "not a private folder" in run.stderr and "using the PyTorch path" in run.stderr
    assert not list((tmp_path / "kernels").glob("*.so"))
