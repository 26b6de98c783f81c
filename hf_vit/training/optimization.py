"""The optimiser and learning-rate schedule of pre-training, from transformers' and torch's parts."""

import torch
from torch import nn


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
