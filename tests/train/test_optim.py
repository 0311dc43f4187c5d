"""recsys.train.optim.AdamW: torch's AdamW step, the same numbers, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import torch

from recsys.train.optim import AdamW


def test_the_same_updates_as_torch_adamw():
    torch.manual_seed(0)
    a = [torch.randn(50, 8, requires_grad=True), torch.randn(8, requires_grad=True)]
    b = [p.detach().clone().requires_grad_() for p in a]
    ours = AdamW(a, lr=0.01, betas=(0.9, 0.98), weight_decay=0.1)
    theirs = torch.optim.AdamW(b, lr=0.01, betas=(0.9, 0.98), weight_decay=0.1)
    for step in range(5):
        for params, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            ((params[0] @ params[1]) ** 2).sum().backward()
            opt.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert ours.state_dict()["state"][0]["exp_avg"].equal(theirs.state_dict()["state"][0]["exp_avg"])
    scheduler = torch.optim.lr_scheduler.StepLR(ours, step_size=1, gamma=0.5)  # a torch optimizer to schedulers
    ours.step()
    scheduler.step()
    assert ours.param_groups[0]["lr"] == 0.005


def test_its_methods_do_not_import_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from recsys.train.optim import AdamW\n"
        "p = torch.zeros(3, requires_grad=True); opt = AdamW([p]); p.sum().backward(); opt.step()\n"
        "opt.zero_grad(); state = opt.state_dict(); opt.load_state_dict(state)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
