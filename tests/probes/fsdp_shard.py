"""Launched with 2 processes: FSDP2 (torch's `fully_shard`, as Accelerate's FSDP2 plugin wraps our models) on the CPU.

Shards a tiny ViT per `_no_split_modules` block, trains it next to an unsharded copy, writes a sharded checkpoint with
torch.distributed.checkpoint, resumes from it, and consolidates the weights into an ordinary saved folder.
usage: fsdp_shard.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import hf_vit
from hf_vit.training.optimization import build_optimizer

out = Path(sys.argv[1])
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
config = hf_vit.VisionTransformerConfig(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=8,
    num_labels=3, representation_size=32,
)  # fmt: skip
pixels = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
labels = torch.arange(8) % 3


def build(seed: int = 0):
    torch.manual_seed(seed)
    model = hf_vit.VisionTransformerForImageClassification(config)
    torch.nn.init.normal_(model.classifier.weight, std=0.1)  # a non-zero head, so every weight moves
    return model


def shard(model):
    for module in model.modules():
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def train(model, optimizer, steps: int) -> None:
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(pixels).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


full = StateDictOptions(full_state_dict=True, cpu_offload=True)
reference = build()
reference_optimizer = build_optimizer(reference, 1e-2, 0.1, (0.9, 0.999))
sharded = shard(build())
optimizer = build_optimizer(sharded, 1e-2, 0.1, (0.9, 0.999))
train(reference, reference_optimizer, 3)
train(sharded, optimizer, 3)
local = sharded.vit.layers[0].mlp.fc1.weight
record = {"world_size": dist.get_world_size(), "local_rows": local.to_local().shape[0], "rows": local.shape[0]}

model_state, optimizer_state = get_state_dict(sharded, optimizer)
dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(out / "sharded-checkpoint"))
train(reference, reference_optimizer, 2)
train(sharded, optimizer, 2)
straight = get_model_state_dict(sharded, options=full)

resumed = shard(build(seed=1))  # other initial weights: all must come from the checkpoint
resumed_optimizer = build_optimizer(resumed, 1e-2, 0.1, (0.9, 0.999))
model_state, optimizer_state = get_state_dict(resumed, resumed_optimizer)
state = {"model": model_state, "optimizer": optimizer_state}
dcp.load(state, checkpoint_id=str(out / "sharded-checkpoint"))
set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
train(resumed, resumed_optimizer, 2)
after_resume = get_model_state_dict(resumed, options=full)

if dist.get_rank() == 0:
    reference_state = reference.state_dict()
    record["max_diff_vs_unsharded"] = max((straight[k] - reference_state[k]).abs().max().item() for k in straight)
    record["max_diff_resumed"] = max((straight[k] - after_resume[k]).abs().max().item() for k in straight)
    consolidated = build()
    consolidated.load_state_dict(straight)
    consolidated.save_pretrained(out / "consolidated")
    torch.save(reference.eval()(pixels).logits, out / "logits.pt")
    (out / "record.json").write_text(json.dumps(record))
dist.barrier()
dist.destroy_process_group()
