"""Optimisers, learning-rate schedules and weight averages, from transformers' and torch's parts."""

import re

import torch
from torch import nn

BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Parameters that get weight decay: kernels, not biases, norms or what the model declares exempt.

    Norm layers and biases are excluded by transformers' own rule (`get_parameter_names`), position embeddings and
    learned tokens by the model's `no_weight_decay()` (as timm models declare them).
    """
    from transformers.trainer_pt_utils import get_parameter_names

    names = set(get_parameter_names(model, [nn.LayerNorm, nn.GroupNorm], ["bias"]))
    exempt = getattr(model, "no_weight_decay", lambda: set())()
    return {name for name in names if not any(name.endswith(suffix) for suffix in exempt)}


def build_optimizer(
    model: nn.Module, learning_rate: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW (Adam with decoupled weight decay, as the paper's pre-training) over two parameter groups."""
    decay = decay_parameter_names(model)
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


def warmup_length(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """Warm-up updates: at most `warmup_steps`, and at most `warmup_ratio` of the run (the recipes' rule)."""
    return min(warmup_steps, round(warmup_ratio * total_steps))


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' warm-up + linear/cosine decay (update s runs at s/warmup of the peak while warming up)."""
    from transformers import get_scheduler

    return get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def layer_index(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 for the embeddings (patch projection or ResNet, tokens, position
    embeddings), i + 1 for encoder block i, num_layers + 1 for what follows (final norm, pre-logits, head)."""
    block = BLOCK.search(name)
    if block:
        return int(block.group(1)) + 1
    return 0 if ".embeddings." in f".{name}" else num_layers + 1


def layer_decay_groups(model: nn.Module, learning_rate: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """Parameter groups where depth d learns at `learning_rate * layer_decay ** (num_layers + 1 - d)` (as BEiT and
    MAE fine-tune): the head at the full rate, each block below at `layer_decay` of the one above."""
    num_layers = model.config.num_hidden_layers
    decay = decay_parameter_names(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth, decays = layer_index(name, num_layers), name in decay
        group = groups.setdefault(
            (depth, decays),
            {
                "params": [],
                "lr": learning_rate * layer_decay ** (num_layers + 1 - depth),
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def weight_average(model: torch.nn.Module, decay: float):
    """An exponential moving average of `model`'s weights (torch's `AveragedModel`), or None when `decay` is 0.

    The decay warms up as TensorFlow's `ExponentialMovingAverage(num_updates=...)` does: update n blends with
    min(decay, (1 + n) / (10 + n)). A fixed 0.998 would still hold 0.998^1500 = 5% of the first update's (nearly
    random) weights after 1,500 updates; warmed up, the average forgets them within a few dozen.
    """
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def average(averaged: list, current: list, updates: torch.Tensor) -> None:
        updates = int(updates)
        get_ema_multi_avg_fn(min(decay, (1 + updates) / (10 + updates)))(averaged, current, updates)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)
