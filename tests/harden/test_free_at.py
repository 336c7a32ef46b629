"""Free-AT reuses the input gradient of the training backward: check it against autograd and the
perturbation update against the paper's rule ``delta <- clip(delta + eps * sign(g))``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fortify.train import tasks

from conftest import blobs, tiny_cnn


def test_free_at_replay_uses_the_backward_input_gradient() -> None:
    x, y = blobs(12)
    model = tiny_cnn()
    task = tasks.create("free_at", threat="linf:0.1", replays=2, step_ratio=1.0)
    out1 = task(model, x, y, generator=torch.Generator().manual_seed(0))
    out1.loss.backward()  # what the Trainer does; the hook captures d loss / d x_adv
    x_adv1 = x.clone()  # delta starts at zero
    xr = x_adv1.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    assert torch.allclose(task._grad, g_ref, atol=1e-7)
    model.zero_grad()
    out2 = task(model, x, y, generator=torch.Generator().manual_seed(0))  # replay: one ascent step with the captured gradient
    expected = torch.maximum(torch.minimum(x + 0.1 * g_ref.sign(), x + 0.1), x - 0.1).clamp(0, 1)
    assert torch.allclose(x + task._delta, expected, atol=1e-6)
    assert out1.grad_evals == out2.grad_evals == x.shape[0]
    assert torch.allclose(out2.logits, model(expected), atol=1e-5)
