import math

import pytest
import torch
import torch.nn.functional as F

from recsys.kernels.hstu_attention import hstu_attention, hstu_attention_last, hstu_attention_reference, time_buckets


def naive(q, k, v, offsets, N, pos_bias=None, time_bias=None, key_times=None, query_times=None):
    """Token by token, straight from the formula."""
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype)
    for b in range(len(offsets) - 1):
        s, e = int(offsets[b]), int(offsets[b + 1])
        for i in range(s, e):
            for j in range(s, i + 1):
                logit = (q[i] * k[j]).sum(-1)  # [H]
                if pos_bias is not None:
                    logit = logit + pos_bias[i - j]
                if time_bias is not None:
                    gap = abs(int(query_times[i]) - int(key_times[j]))
                    bucket = min(max(int(math.floor(math.log(max(gap, 1)) / 0.301)), 0), len(time_bias) - 1)
                    logit = logit + time_bias[bucket]
                out[i] += (F.silu(logit) / N)[:, None] * v[j]
    return out


def _inputs(lengths, H=2, D=4, Dv=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    offsets = torch.tensor([0] + list(torch.cumsum(torch.tensor(lengths), 0)))
    q, k = torch.randn(T, H, D, generator=g), torch.randn(T, H, D, generator=g)
    v = torch.randn(T, H, Dv, generator=g)
    times = torch.cumsum(torch.randint(0, 5000, (T,), generator=g), 0)
    return q, k, v, offsets, times


def test_time_buckets_hand_values():
    d = torch.tensor([0, 1, 2, -2, 1000, 10**12])
    # ln 2 / .301 = 2.30 -> 2; ln 1000 / .301 = 22.9 -> 22; ln 1e12 / .301 = 91.8 -> 91
    assert time_buckets(d, 129).tolist() == [0, 0, 2, 2, 22, 91]
    assert time_buckets(torch.tensor([10**17]), 129).item() == 128  # ln 1e17 / .301 = 130: clamped


@pytest.mark.parametrize("lengths", [[3, 0, 1, 5], [7], [1, 1, 2]])
@pytest.mark.parametrize("with_bias", [False, True])
def test_reference_matches_naive_formula(lengths, with_bias):
    q, k, v, offsets, times = _inputs(lengths)
    N = 8
    kwargs = {}
    if with_bias:
        g = torch.Generator().manual_seed(1)
        kwargs = dict(
            position_bias=torch.randn(N, generator=g),
            time_bias=torch.randn(129, generator=g),
            key_times=times,
            query_times=times + 17,
        )
    got = hstu_attention_reference(q, k, v, offsets, N, **kwargs)
    want = naive(
        q,
        k,
        v,
        offsets,
        N,
        kwargs.get("position_bias"),
        kwargs.get("time_bias"),
        kwargs.get("key_times"),
        kwargs.get("query_times"),
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_reference_gradients_match_the_naive_formula():
    """Every input's gradient, the bias tables' included (they go through gather_rows' own backward)."""
    q, k, v, offsets, times = _inputs([3, 0, 1, 5], seed=4)
    N = 8
    g = torch.Generator().manual_seed(5)
    pos_bias, time_bias = torch.randn(N, generator=g), torch.randn(129, generator=g)
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v, pos_bias, time_bias)]
    weights = torch.randn(q.shape[0], q.shape[1], v.shape[2], generator=g)
    got = hstu_attention_reference(
        *inputs[:3], offsets, N, position_bias=inputs[3], time_bias=inputs[4], key_times=times, query_times=times + 17
    )
    grads = torch.autograd.grad((got * weights).sum(), inputs)
    want = naive(*inputs[:3], offsets, N, inputs[3], inputs[4], times, times + 17)
    want_grads = torch.autograd.grad((want * weights).sum(), inputs)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert grads[4].abs().sum() > 0 and grads[3].abs().sum() > 0


@pytest.mark.parametrize("lengths", [[3, 0, 1, 5], [7], [0, 0]])
@pytest.mark.parametrize("with_bias", [False, True])
def test_last_query_attention_equals_the_reference_last_rows(lengths, with_bias):
    q, k, v, offsets, times = _inputs(lengths, seed=3)
    N = 8
    kwargs = {}
    if with_bias:
        g = torch.Generator().manual_seed(2)
        kwargs = dict(
            position_bias=torch.randn(N, generator=g), time_bias=torch.randn(129, generator=g), key_times=times
        )
    query_times = times + 17
    full = hstu_attention_reference(q, k, v, offsets, N, query_times=query_times if with_bias else None, **kwargs)
    last = (offsets[1:] - 1).clamp_min(0)
    nonempty = offsets[1:] > offsets[:-1]

    def at_last(x):  # each sequence's last token (zeros when there are no tokens at all)
        return x[last] if len(x) else x.new_zeros(len(last), *x.shape[1:])

    got = hstu_attention_last(
        at_last(q), k, v, offsets, N, query_times_last=at_last(query_times) if with_bias else None, **kwargs
    )
    assert got.shape == (len(lengths), q.shape[1], v.shape[2])
    torch.testing.assert_close(got[nonempty], full[last[nonempty]], rtol=1e-5, atol=1e-6)
    assert (got[~nonempty] == 0).all()


def test_small_blocks_give_the_same_result_and_gradients():
    q, k, v, offsets, times = _inputs([5, 9, 2, 0, 6], seed=3)
    for t in (q, k, v):
        t.requires_grad_(True)
    pos = torch.randn(10, requires_grad=True)
    big = hstu_attention_reference(q, k, v, offsets, 10, position_bias=pos)
    grads_big = torch.autograd.grad(big.square().sum(), (q, k, v, pos))
    small = hstu_attention_reference(q, k, v, offsets, 10, position_bias=pos, max_block_elements=200)
    grads_small = torch.autograd.grad(small.square().sum(), (q, k, v, pos))
    torch.testing.assert_close(big, small)
    for a, b in zip(grads_big, grads_small):
        torch.testing.assert_close(a, b)


def test_dispatcher_override_and_unknown_backend():
    q, k, v, offsets, _ = _inputs([4])
    torch.testing.assert_close(
        hstu_attention(q, k, v, offsets, 4, backend="reference"), hstu_attention_reference(q, k, v, offsets, 4)
    )
    with pytest.raises(ValueError, match="unknown HSTU attention backend"):
        hstu_attention(q, k, v, offsets, 4, backend="cuda-magic")


def test_bf16_inputs_with_fp32_bias_tables():
    """Under bf16 autocast the projections are bf16 while the bias tables stay fp32 parameters: the
    reference must accept the mix and return the input dtype (a GPU benchmark once failed on this)."""
    q, k, v, offsets, times = _inputs([6, 3, 9], seed=5)
    g = torch.Generator().manual_seed(2)
    bias = dict(
        position_bias=torch.randn(10, generator=g),
        time_bias=torch.randn(129, generator=g),
        key_times=times,
        query_times=times + 3,
    )
    out = hstu_attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), offsets, 10, **bias)
    assert out.dtype == torch.bfloat16
    want = hstu_attention_reference(q, k, v, offsets, 10, **bias)
    torch.testing.assert_close(out.float(), want, rtol=5e-2, atol=2e-2)
