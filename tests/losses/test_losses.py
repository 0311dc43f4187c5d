import pytest
import torch
import torch.nn.functional as F

from recsys import losses
from recsys.losses import LossConfig, full_softmax_ce, next_item_loss


def _setup(B=3, L=5, D=8, V=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, D, generator=g, requires_grad=True)
    items = torch.randn(V, D, generator=g, requires_grad=True)
    targets = torch.randint(1, V, (B, L), generator=g)
    targets[0, :2] = 0  # padding positions carry no target
    return hidden, items, targets


def _kernel_off(monkeypatch):
    monkeypatch.setattr(losses.full_ce, "_cpu_kernel_usable", lambda hidden, table: False)


@pytest.fixture(autouse=True)
def _pytorch_path_unless_asked(request, monkeypatch):
    """The full CE's PyTorch path, whose blocks these tests look into, unless a test takes ``gemm``."""
    if "gemm" not in request.fixturenames:
        _kernel_off(monkeypatch)


@pytest.fixture(params=["kernel", "onednn", "torch"])
def gemm(request, monkeypatch):
    """Every fp32 path of the full CE on CPU: the fused C kernel (recsys.kernels.cpu_encoder, where a
    C compiler is there), and the PyTorch path with oneDNN (where this torch has it) or torch.mm."""
    from recsys.kernels import cpu_build, onednn

    if request.param == "kernel" and not cpu_build.available():
        pytest.skip("no fused CPU kernels here (no C compiler)")
    if request.param != "kernel":
        _kernel_off(monkeypatch)
    if request.param == "torch":
        monkeypatch.setattr(onednn, "_usable", False)
    return request.param


@pytest.mark.parametrize("logit_scale", [1.0, 30.0])  # small logits: exp without a shift; large: max-shifted
@pytest.mark.parametrize("chunk, item_chunk", [(1, 0), (4, 0), (64, 0), (4, 7), (3, 1), (64, 29), (5, 1000)])
def test_chunked_ce_equals_plain_cross_entropy(chunk, item_chunk, logit_scale, gemm):
    """Blocks of positions, and of items too (online log-sum-exp across item slices; 29 = one slice,
    7 leaves a ragged last slice, 1 = one item per slice)."""
    hidden, items, targets = _setup()
    hidden = (hidden * logit_scale).detach().requires_grad_(True)  # logits up to ~30 x 12: exp would overflow
    mask = targets > 0
    logits = hidden[mask] @ items[1:].T
    ref = F.cross_entropy(logits, targets[mask] - 1)
    ref_grads = torch.autograd.grad(ref, (hidden, items))
    got = full_softmax_ce(hidden[mask], items, targets[mask], chunk=chunk, item_chunk=item_chunk)
    grads = torch.autograd.grad(got, (hidden, items))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(grads, ref_grads):  # float rounding of the logits grows with their size
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7 * logit_scale)
    assert grads[1][0].abs().sum() == 0  # the padding row is never a candidate


@pytest.mark.parametrize("chunk", [64, 5])  # one block; several, the last one smaller
def test_bf16_logits_stay_close_to_fp32(chunk):
    hidden, items, targets = _setup(B=4, L=8, D=16, V=500)
    mask = targets > 0
    ref = full_softmax_ce(hidden[mask], items, targets[mask])
    ref_grads = torch.autograd.grad(ref, (hidden, items))
    got = full_softmax_ce(hidden[mask], items, targets[mask], chunk=chunk, compute_dtype=torch.bfloat16)
    grads = torch.autograd.grad(got, (hidden, items))
    # bf16 keeps 8 significant bits: logits (and so the loss) agree to ~1%, gradients to a few %
    assert got.item() == pytest.approx(ref.item(), rel=1e-2)
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max() <= 0.05 * b.abs().max()
        assert a.dtype == b.dtype == torch.float32


@pytest.mark.parametrize("logit_scale", [1.0, 8.0])  # exp without a shift; logits past the bound: max-shifted
@pytest.mark.parametrize("chunk", [64, 5])
def test_bf16_ce_equals_fp32_ce_of_the_rounded_operands(chunk, logit_scale):
    """What bf16 leaves: the operands rounded to bf16 (the reference here) and the exponentials, column
    sums and gradient GEMM outputs rounded to bf16 (~2^-9 each) -- nothing of the size of a scale bug."""
    hidden, items, targets = _setup(B=4, L=8, D=16, V=500)
    hidden = (hidden * logit_scale).detach().requires_grad_(True)
    mask = targets > 0
    h16, w16 = (
        hidden.detach().bfloat16().float().requires_grad_(True),
        items.detach().bfloat16().float().requires_grad_(True),
    )
    ref = F.cross_entropy(h16[mask] @ w16[1:].T, targets[mask] - 1)
    ref_grads = torch.autograd.grad(ref, (h16, w16))
    got = full_softmax_ce(hidden[mask], items, targets[mask], chunk=chunk, compute_dtype=torch.bfloat16)
    grads = torch.autograd.grad(got, (hidden, items))
    assert got.item() == pytest.approx(ref.item(), rel=2e-3)
    # cancellation against the onehot part; with logits of +-60 the softmax is peaked and each of its few
    # large entries carries its bf16 rounding: ~4% of the largest gradient (the same with the earlier
    # fp32-shifted softmax: 4.2 / 3.6 / 3.0% on three seeds)
    tolerance = 0.02 if logit_scale == 1.0 else 0.05
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max() <= tolerance * b.abs().max()


def test_bf16_large_logits_fused_equals_recomputed_slices():
    """Large logits are shifted by their column's max (in bf16) in the fused pass; the item-sliced path
    (online log-sum-exp in fp32, recomputing backward) rounds the same bf16 logits: the two agree closely."""
    hidden, items, targets = _setup(B=4, L=8, D=16, V=500)
    hidden = (hidden * 30).detach().requires_grad_(True)
    mask = targets > 0
    fused = full_softmax_ce(hidden[mask], items, targets[mask], chunk=5, compute_dtype=torch.bfloat16)
    sliced = full_softmax_ce(hidden[mask], items, targets[mask], chunk=5, compute_dtype=torch.bfloat16, item_chunk=7)
    assert fused.item() == pytest.approx(sliced.item(), rel=1e-3)
    for a, b in zip(torch.autograd.grad(fused, (hidden, items)), torch.autograd.grad(sliced, (hidden, items))):
        assert (a - b).abs().max() <= 0.02 * b.abs().max()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("case", ["moderate", "overflowing"])
def test_logits_past_the_bound_are_shifted_only_when_a_column_sum_leaves_the_range(monkeypatch, dtype, case):
    """Past the |h| max|w| bound a CPU block is exponentiated unshifted and kept when every column sum
    is in range (a long item vector: the bound fails, the logits stay moderate); a block whose sums
    overflow is recomputed with its columns' maxima subtracted. Either way the loss is the plain one."""
    from recsys import losses

    hidden, items, targets = _setup(B=4, L=8, D=16, V=500)
    with torch.no_grad():
        if case == "moderate":
            items[7] *= 4  # |w_7| ~ 16: the bound (~85) fails, the logits stay below ~50
        else:
            hidden *= 30  # logits up to several hundred: exp overflows
    checks = []
    in_range = losses.full_ce._sums_in_range
    monkeypatch.setattr(
        losses.full_ce, "_sums_in_range", lambda col_sum: checks.append(in_range(col_sum)) or checks[-1]
    )
    mask = targets > 0
    got = full_softmax_ce(hidden[mask], items, targets[mask], chunk=8, compute_dtype=dtype)
    grads = torch.autograd.grad(got, (hidden, items))
    assert checks and all(checks) == (case == "moderate")  # kept unshifted / redone with the shift
    h, w = hidden, items
    if dtype is not None:  # the reference: fp32 CE of the bf16-rounded operands
        h, w = (t.detach().bfloat16().float().requires_grad_(True) for t in (hidden, items))
    ref = F.cross_entropy(h[mask] @ w[1:].T, targets[mask] - 1)
    ref_grads = torch.autograd.grad(ref, (h, w))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6 if dtype is None else 2e-3)
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max() <= (1e-5 if dtype is None else 0.05) * b.abs().max()


def test_ce_loss_via_config_with_temperature():
    hidden, items, targets = _setup()
    cfg = LossConfig(name="ce", temperature=0.5)
    mask = targets > 0
    ref = F.cross_entropy((hidden[mask] @ items[1:].T) / 0.5, targets[mask] - 1)
    assert next_item_loss(cfg, hidden, targets, items).item() == pytest.approx(ref.item(), rel=1e-6)


def test_sampled_softmax_masks_collisions():
    # with every negative equal to the positive, all negatives are masked: loss = -log(1) = 0
    hidden, items, targets = _setup(V=2)
    cfg = LossConfig(name="sampled_softmax", num_negatives=16)
    loss = next_item_loss(cfg, hidden, torch.where(targets > 0, 1, 0), items)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("batch", [3, 1])  # one sequence: per-position negatives still drawn per position
@pytest.mark.parametrize("shared", ["batch", "sequence", "position"])
def test_sampled_softmax_matches_hand_formula(shared, batch):
    hidden, items, targets = _setup(B=batch)
    cfg = LossConfig(
        name="sampled_softmax", num_negatives=6, negatives_shared=shared, temperature=0.1, l2_normalize=True
    )
    torch.manual_seed(3)
    loss = next_item_loss(cfg, hidden, targets, items)
    torch.manual_seed(3)
    B, L, _ = hidden.shape
    shape = {"batch": (1, 1, 6), "sequence": (B, 1, 6), "position": (B, L, 6)}[shared]
    negs = torch.randint(1, items.shape[0], shape).expand(B, L, 6)
    h, w = F.normalize(hidden, dim=-1), F.normalize(items, dim=-1)
    total, count = 0.0, 0
    for b in range(B):
        for t in range(L):
            if targets[b, t] == 0:
                continue
            pos = (h[b, t] @ w[targets[b, t]]) / 0.1
            neg = torch.stack([(h[b, t] @ w[n]) / 0.1 for n in negs[b, t] if n != targets[b, t]])
            total += -(pos - torch.logsumexp(torch.cat([pos[None], neg]), 0))
            count += 1
    assert loss.item() == pytest.approx((total / count).item(), rel=1e-5)


def test_in_batch_negatives_with_logq_match_hand_formula():
    hidden, items, targets = _setup(B=3)
    V = items.shape[0]
    frequency = torch.rand(V) + 0.05
    frequency[0] = 0.0
    frequency = frequency / frequency.sum()
    cfg = LossConfig(
        name="sampled_softmax",
        num_negatives=5,
        negatives_shared="batch",
        temperature=0.5,
        in_batch_negatives=4,
        logq_correction=True,
    )
    torch.manual_seed(7)
    loss = next_item_loss(cfg, hidden, targets, items, item_frequency=frequency)
    torch.manual_seed(7)  # the same draws: 5 uniform items, then 4 of the scored positions' targets
    uniform = torch.randint(1, V, (1, 1, 5))[0, 0]
    scored_targets = targets[targets > 0]
    in_batch = scored_targets[torch.randint(0, len(scored_targets), (4,))]
    expected = 4 * frequency + 5 / (V - 1)  # expected draws of each item among a position's candidates
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            y = targets[b, t]
            if y == 0:
                continue
            pos = hidden[b, t] @ items[y] / 0.5 - torch.log(expected[y])
            neg = [
                hidden[b, t] @ items[n] / 0.5 - torch.log(expected[n]) for n in torch.cat([uniform, in_batch]) if n != y
            ]
            total += -(pos - torch.logsumexp(torch.stack([pos, *neg]), 0))
            count += 1
    assert loss.item() == pytest.approx((total / count).item(), rel=1e-5)


def test_logq_with_uniform_negatives_only_changes_nothing():
    hidden, items, targets = _setup(B=3)
    frequency = torch.full((items.shape[0],), 1.0 / (items.shape[0] - 1))
    plain = LossConfig(name="sampled_softmax", num_negatives=8)
    corrected = LossConfig(name="sampled_softmax", num_negatives=8, logq_correction=True)
    torch.manual_seed(0)
    a = next_item_loss(plain, hidden, targets, items)
    torch.manual_seed(0)
    b = next_item_loss(corrected, hidden, targets, items, item_frequency=frequency)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)  # a shift shared by every candidate


def test_in_batch_negatives_config_is_checked():
    from recsys.config import ConfigError, load_recipe
    from tests.conftest import REPO

    with pytest.raises(ConfigError, match="loss.in_batch_negatives must be 0 unless loss.name = 'sampled_softmax'"):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["loss.name=ce", "loss.in_batch_negatives=8"])
    with pytest.raises(ConfigError, match="loss.logq_correction must be false unless"):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["loss.name=bce", "loss.logq_correction=true"])


def test_bce_and_gbce_formulas():
    hidden, items, targets = _setup()
    torch.manual_seed(5)
    bce = next_item_loss(LossConfig(name="bce"), hidden, targets, items)
    torch.manual_seed(5)
    neg = torch.randint(1, items.shape[0], (hidden.shape[0], 1, 1)).expand(-1, hidden.shape[1], 1)[..., 0]
    pos_l = (hidden * items[targets]).sum(-1)
    neg_l = (hidden * items[neg]).sum(-1)
    ref = -(F.logsigmoid(pos_l) + F.logsigmoid(-neg_l) * (neg != targets))
    assert bce.item() == pytest.approx(ref[targets > 0].mean().item(), rel=1e-5)
    # gBCE with t = 0 has beta = 1: plain BCE with N negatives
    torch.manual_seed(5)
    g0 = next_item_loss(LossConfig(name="gbce", num_negatives=1, gbce_t=0.0), hidden, targets, items)
    assert g0.item() == pytest.approx(bce.item(), rel=1e-6)
    # t = 1 gives beta = alpha * (1 - 1/alpha + 1/alpha) = alpha: the positive term is scaled by alpha
    torch.manual_seed(5)
    g1 = next_item_loss(LossConfig(name="gbce", num_negatives=1, gbce_t=1.0), hidden, targets, items)
    alpha = 1 / (items.shape[0] - 1)
    ref1 = -(alpha * F.logsigmoid(pos_l) + F.logsigmoid(-neg_l) * (neg != targets))
    assert g1.item() == pytest.approx(ref1[targets > 0].mean().item(), rel=1e-5)


def test_no_targets_gives_zero_loss_with_grad():
    hidden, items, _ = _setup()
    loss = next_item_loss(LossConfig(), hidden, torch.zeros(3, 5, dtype=torch.long), items)
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("item_chunk", [0, 7])  # one pass (gradients in the forward) and recomputed slices
def test_chunked_ce_scaled_loss_and_no_grad(item_chunk, gemm):
    hidden, items, targets = _setup(seed=3)
    mask = targets > 0
    ref = 2.5 * F.cross_entropy(hidden[mask] @ items[1:].T, targets[mask] - 1)
    ref_grads = torch.autograd.grad(ref, (hidden, items))
    got = 2.5 * full_softmax_ce(hidden[mask], items, targets[mask], chunk=4, item_chunk=item_chunk)
    for a, b in zip(torch.autograd.grad(got, (hidden, items)), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # no gradients wanted: the value alone, same number
        value = full_softmax_ce(hidden[mask], items, targets[mask], chunk=4, item_chunk=item_chunk)
    assert 2.5 * value.item() == pytest.approx(ref.item(), rel=1e-6)


def test_per_position_negatives_dense_and_gathered_paths_agree(monkeypatch):
    """Negatives drawn per position are scored either from one whole-catalogue GEMM (small catalogues)
    or by gathering their vectors (large ones): same loss and gradients."""
    import recsys.losses as losses

    hidden, items, targets = _setup(V=40, seed=5)
    cfg = LossConfig(
        name="sampled_softmax", num_negatives=8, negatives_shared="position", temperature=0.05, l2_normalize=True
    )
    results = []
    for limit in (10**6, 0):  # dense, then gathered
        monkeypatch.setattr(losses, "DENSE_NEGATIVES_MAX_ITEMS_PER_NEGATIVE", limit)
        loss = next_item_loss(cfg, hidden, targets, items, generator=torch.Generator().manual_seed(9))
        results.append((loss, *torch.autograd.grad(loss, (hidden, items))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_sampled_columns_equals_gather_of_full_scores(chunk, gemm):
    from recsys.losses import SampledColumns

    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(10, 6, generator=g, requires_grad=True)
    items = torch.randn(15, 6, generator=g, requires_grad=True)
    columns = torch.randint(0, 15, (10, 20), generator=g)  # 20 > 15: repeated columns must add up
    weights = torch.randn(10, 20, generator=g)
    ref = ((hidden @ items.T).gather(1, columns) * weights).sum()
    got = (SampledColumns.apply(hidden, items, columns, chunk) * weights).sum()
    torch.testing.assert_close(got, ref)
    for a, b in zip(torch.autograd.grad(got, (hidden, items)), torch.autograd.grad(ref, (hidden, items))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_l2_normalize_equals_f_normalize_with_gradients():
    from recsys.losses import l2_normalize

    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 8, generator=g)
    x[0] = 0.0  # a padding row: norm clamped
    x[1] = 1e-14  # under eps
    x[2] *= 1e3
    grad = torch.randn(50, 8, generator=g)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya, yb = l2_normalize(a), F.normalize(b, dim=-1)
    torch.testing.assert_close(ya, yb)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_fused_ce_refuses_a_second_backward_through_the_same_graph(gemm):
    # the fused pass scales its stored gradients in place when the loss is scaled: a retained graph
    # must then not silently reuse them; an unscaled backward leaves them as they are (still right)
    hidden, items, targets = _setup()
    mask = targets > 0
    loss = full_softmax_ce(hidden[mask], items, targets[mask])
    once = [g.clone() for g in torch.autograd.grad(loss, (hidden, items), retain_graph=True)]
    again = torch.autograd.grad(loss, (hidden, items), retain_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(once, again))
    scaled = torch.autograd.grad(2 * loss, (hidden, items), retain_graph=True)
    assert all(torch.equal(2 * a, b) for a, b in zip(once, scaled))
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_ce_workspace_reused_across_calls_changes_nothing(dtype):
    from recsys.losses import Workspace

    workspace = Workspace()
    for seed, (B, L) in enumerate([(4, 8), (3, 5), (5, 9)]):  # a different number of positions each call
        hidden, items, targets = _setup(B=B, L=L, D=16, V=300, seed=seed)
        mask = targets > 0
        ref = full_softmax_ce(hidden[mask], items, targets[mask], chunk=7, compute_dtype=dtype)
        ref_grads = torch.autograd.grad(ref, (hidden, items))
        got = full_softmax_ce(hidden[mask], items, targets[mask], chunk=7, compute_dtype=dtype, workspace=workspace)
        grads = torch.autograd.grad(got, (hidden, items))
        assert got.item() == ref.item()
        for a, b in zip(grads, ref_grads):
            assert torch.equal(a, b)
    from recsys.kernels import onednn

    fp32 = {"items_t"} if onednn.usable(items) else {"block"}  # oneDNN writes its own blocks
    assert set(workspace._buffers) == (
        fp32 if dtype is None else {"items_low", "block_low", "items_t", "grad_items_low"}
    )
