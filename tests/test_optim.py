import copy
import subprocess
import sys

import pytest
import torch

from recsys.optim import AdamW


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1, bias=False))


def _train(model, opt, steps: int, unused_from: int = 10**9) -> None:
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        ids = torch.randint(0, 50, (16,), generator=gen)
        head = model[2] if step < unused_from else None  # after unused_from the last layer gets no gradient
        h = model[1](model[0](ids))
        loss = head(h).square().mean() if head is not None else h.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("fused", [True, False])  # torch's fused kernel, or the foreach fallback
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_matches_torch_adamw(weight_decay, fused, monkeypatch):
    if not fused:
        monkeypatch.delattr(torch, "_fused_adamw_")
    ours, ref = _model(), _model()
    kwargs = dict(lr=3e-2, betas=(0.9, 0.98), eps=1e-8, weight_decay=weight_decay)
    _train(ours, AdamW(ours.parameters(), **kwargs), 12, unused_from=7)
    _train(ref, torch.optim.AdamW(ref.parameters(), **kwargs), 12, unused_from=7)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # a change of the arithmetic shows: a different eps moves the parameters
    other = _model()
    _train(other, AdamW(other.parameters(), **{**kwargs, "eps": 1e-3}), 12, unused_from=7)
    assert not torch.allclose(next(other.parameters()), next(ref.parameters()), atol=1e-4)


def test_state_dict_round_trips_with_torch_adamw():
    # ours -> torch: torch continues exactly where ours stopped, and back
    a, b = _model(), _model()
    kwargs = dict(lr=1e-2, betas=(0.9, 0.98), weight_decay=0.01)
    opt_a = AdamW(a.parameters(), **kwargs)
    _train(a, opt_a, 5)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(b.parameters(), **kwargs)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as a checkpoint on disk would
    _train(a, opt_a, 4)
    _train(b, opt_b, 4)
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    c = _model(3)
    opt_c = AdamW(c.parameters(), lr=0.5)
    opt_c.load_state_dict(copy.deepcopy(opt_b.state_dict()))
    assert opt_c.lr == 1e-2 and opt_c.betas == (0.9, 0.98) and opt_c.steps[0] == 9
    torch.testing.assert_close(opt_c.exp_avg[0], opt_b.state[next(b.parameters())]["exp_avg"])


def test_load_rejects_a_mismatched_state():
    opt = AdamW(_model().parameters())
    other = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="parameters per group"):
        opt.load_state_dict(torch.optim.AdamW(other.parameters()).state_dict())


def test_training_process_does_not_import_the_compiler():
    code = (
        "import sys, torch; from recsys.optim import AdamW\n"
        "m = torch.nn.Linear(4, 1); o = AdamW(m.parameters()); m(torch.ones(2, 4)).sum().backward(); o.step()\n"
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
