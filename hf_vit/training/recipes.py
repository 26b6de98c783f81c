"""Named recipes: the defaults of a run, as data, in one place.

A recipe fills every argument that the user left unset (None). `paper` is the paper's upstream and transfer recipe;
`digits` is the built-in demo (scikit-learn's 8x8 digits, which ship offline): small images, gentle crops, no flips
(a flipped digit is another digit), short runs; it is the default for the digits, also when no dataset is named, and
`paper` for any other dataset. `small-data` adds the regularisation that small datasets need.
"""

from dataclasses import dataclass, field
from typing import Any

# The paper warms up for 10k of ~300k pre-training steps (ImageNet-21k, batch 4096, ~90 epochs) and for 500 steps
# when fine-tuning (at most 5% of a short run): a ratio of the run capped at a number of steps.
PAPER_PRETRAINING = {
    "model": "ViT-B/16",
    "per_device_batch_size": 64,
    "epochs": 90.0,
    "learning_rate": 1e-3,
    "weight_decay": 0.1,
    "warmup_steps": 10_000,
    "warmup_ratio": 10_000 / 300_000,
    "lr_schedule": "linear",
    "grad_clip": 1.0,
    "representation_layer": True,
    "drop_path_rate": 0.0,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,
    "random_crop_scale": 0.05,
    "hflip": True,
    "mixup": 0.0,
    "cutmix": 0.0,
}
PAPER_FINETUNING = {
    "model": "outputs/pretrain",
    "per_device_batch_size": 64,
    "total_batch_size": 512,
    "max_steps": 10_000,
    "learning_rate": 0.03,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "warmup_steps": 500,
    "warmup_ratio": 0.05,
    "lr_schedule": "cosine",
    "grad_clip": 1.0,
    "layer_decay": 1.0,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,
    "random_crop_scale": 0.05,
    "hflip": True,
    "mixup": 0.0,
    "cutmix": 0.0,
}
# "How to train your ViT?" (Steiner et al., 2021): augmentation and regularisation buy back much of the data a ViT
# lacks. No representation layer, RandAugment and mixup/CutMix, label smoothing, stochastic depth, more weight decay,
# cosine decay, and an average of the weights for evaluation; for fine-tuning, layer-wise rate decay on top.
SMALL_DATA = {
    "representation_layer": False,
    "randaugment": "2,9",
    "mixup": 0.2,
    "cutmix": 1.0,
    "label_smoothing": 0.1,
    "drop_path_rate": 0.1,
    "ema_decay": 0.998,
}
DIGITS = {"dataset": "digits", "random_crop_scale": 0.6, "hflip": False}


@dataclass(frozen=True)
class Recipe:
    """Defaults for the arguments of each entry point (field name -> value)."""

    description: str
    pretraining: dict[str, Any] = field(default_factory=dict)
    finetuning: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        "The paper's: Adam, linear warm-up and decay, representation layer, inception crop and flip for "
        "pre-training; SGD with momentum, cosine decay, batch 512 for fine-tuning.",
        pretraining=PAPER_PRETRAINING,
        finetuning=PAPER_FINETUNING,
    ),
    "digits": Recipe(
        "The built-in demo: the paper's recipe scaled to scikit-learn's digits (ViT-Ti/16 at 32 px, 30 epochs; "
        "fine-tuning 100 steps), with gentle crops and no flips.",
        pretraining={**PAPER_PRETRAINING, **DIGITS, "model": "ViT-Ti/16", "image_size": 32, "epochs": 30.0},
        finetuning={**PAPER_FINETUNING, **DIGITS, "max_steps": 100},
    ),
    "small-data": Recipe(
        "For thousands to a few hundred thousand images: the paper's with RandAugment, mixup and CutMix, label "
        "smoothing, stochastic depth, weight decay 0.05 and cosine decay, an average of the weights (EMA) evaluated "
        "and saved; fine-tuning adds layer-wise learning-rate decay (0.75) at a higher peak rate (0.1).",
        pretraining={
            **PAPER_PRETRAINING,
            **SMALL_DATA,
            "random_crop_scale": 0.08,
            "weight_decay": 0.05,
            "lr_schedule": "cosine",
            "warmup_ratio": 0.05,
            "epochs": 300.0,
        },
        finetuning={
            **PAPER_FINETUNING,
            **{k: SMALL_DATA[k] for k in ("label_smoothing", "ema_decay")},
            "layer_decay": 0.75,
            # Layer decay slows every layer but the head, so the peak rate goes up (MAE fine-tunes at twice DeiT's
            # from-scratch rate); on the digits the best rate moved from 0.03-0.1 to 0.1-0.3 (docs/small_data.md).
            "learning_rate": 0.1,
        },
    ),
}


def default_recipe(dataset: str) -> str:
    """The recipe made for `dataset` (the demo's for the built-in digits, the default dataset), else the paper's."""
    return next((name for name, recipe in RECIPES.items() if recipe.pretraining.get("dataset") == dataset), "paper")


def recipe_defaults(name: str, task: str) -> dict[str, Any]:
    """The defaults recipe `name` gives to `task` ("pretraining" or "finetuning")."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; recipes: {', '.join(RECIPES)}.")
    return dict(getattr(RECIPES[name], task))
