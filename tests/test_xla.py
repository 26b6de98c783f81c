"""The TPU code path, run for real on the CPU through XLA (`PJRT_DEVICE=CPU`).

These tests need torch_xla, which lives in a separate environment (see .ci/run); elsewhere they are skipped.
"""

import os

import pytest
import torch
from conftest import TINY, randomize_head

import hf_vit

pytestmark = pytest.mark.xla
os.environ.setdefault("PJRT_DEVICE", "CPU")
torch_xla = pytest.importorskip("torch_xla")
metrics = pytest.importorskip("torch_xla.debug.metrics")
# Start the XLA runtime before any CPU backward pass: autograd sizes its per-device queues on first use.
DEVICE = torch_xla.device()


def compile_count() -> int:
    data = metrics.metric_data("CompileTime")
    return data[0] if data else 0


def tiny_classifier(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = hf_vit.VisionTransformerConfig(**{**TINY, **overrides})
    return randomize_head(hf_vit.VisionTransformerForImageClassification._from_config(config))


@pytest.mark.parametrize("overrides", [{}, {"classifier": "gap", "representation_size": 16}])
def test_forward_and_backward_match_cpu(overrides):
    model = tiny_classifier(**overrides)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = model(x, labels=labels)
    out.loss.backward()
    cpu_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    device = DEVICE
    model.to(device)
    xla_out = model(x.to(device), labels=labels.to(device))
    xla_out.loss.backward()
    torch_xla.sync()
    torch.testing.assert_close(xla_out.logits.cpu(), out.logits, atol=1e-4, rtol=1e-4)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad.cpu(), cpu_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_training_step_compiles_once():
    device = DEVICE
    model = tiny_classifier(drop_path_rate=0.1, hidden_dropout_prob=0.1).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    counts = []
    for _ in range(7):
        loss = model(x.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch_xla.sync()
        counts.append(compile_count())
    # The first two steps differ (the optimizer creates its state); after that no new graph may be compiled.
    assert counts[2:] == [counts[2]] * 5, counts
