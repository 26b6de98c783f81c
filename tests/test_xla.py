"""The TPU code path, run for real on the CPU through XLA (`PJRT_DEVICE=CPU`).

These tests need torch_xla, which lives in a separate environment (see .ci/run); elsewhere they are skipped.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, randomize_head
from transformers import AutoModelForImageClassification

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


def tiny_classifier(hybrid: bool = False, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    if hybrid:
        config = hf_vit.HybridVisionTransformerConfig(**{**TINY, "patch_size": 1, "resnet_layers": (1, 1), **overrides})
    else:
        config = hf_vit.VisionTransformerConfig(**{**TINY, **overrides})
    model = AutoModelForImageClassification.from_config(config)
    with torch.no_grad():  # the zero-initialised last norm of each ResNet unit would hide the residual branch
        for name, param in model.named_parameters():
            if name.endswith("norm3.weight"):
                param.normal_(1.0, 0.2)
    return randomize_head(model)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"classifier": "gap", "representation_size": 16}, {"hybrid": True}],
    ids=["vit-token", "vit-gap-prelogits", "hybrid"],
)
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


@pytest.mark.parametrize("hybrid", [False, True], ids=["vit", "hybrid"])
def test_training_step_compiles_once(hybrid):
    device = DEVICE
    model = tiny_classifier(hybrid, drop_path_rate=0.1, hidden_dropout_prob=0.1).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    counts, times = [], []
    for _ in range(7):
        start = time.perf_counter()
        loss = model(x.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch_xla.sync()
        counts.append(compile_count())
        times.append(time.perf_counter() - start)
    print(f"compile counts {counts}, step times {[round(t, 3) for t in times]} s")
    # The first two steps differ (the optimizer creates its state); after that no new graph may be compiled.
    assert counts[2:] == [counts[2]] * 5, counts


def test_pretrain_script_checkpoints_and_resumes_on_xla(tmp_path):
    """The unchanged script picks the XLA device through Accelerate, checkpoints, and resumes to the same step."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "pretrain.py"
    common = [
        sys.executable, str(script), "--output-dir", str(tmp_path / "run"), "--per-device-batch-size", "16",
        "--config-overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64",
        "--image-size", "16", "--save-every", "2", "--eval-every", "4", "--logging-every", "2",
    ]  # fmt: skip
    env = {**os.environ, "PJRT_DEVICE": "CPU"}

    def run(*extra: str) -> str:
        result = subprocess.run([*common, *extra], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        return result.stdout + result.stderr

    first = run("--max-steps", "4")
    assert "Training on xla with 1 process (XLA)." in first, first[-2000:]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = run("--max-steps", "6", "--resume-from-checkpoint", "latest")
    assert "Resumed from" in resumed and "checkpoint-4 at update 4" in resumed, resumed[-2000:]
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["step"] == 6
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert results["train_steps"] == 6 and 0.0 <= results["eval_accuracy"] <= 1.0
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "run")
    assert isinstance(model, hf_vit.VisionTransformerForImageClassification) and model.config.image_size == 16
