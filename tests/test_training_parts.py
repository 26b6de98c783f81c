"""The parts training is built from: typed arguments and recipes, and the library pieces that replaced hand-written
ones (transformers' schedule, torchvision's mixup, transformers' weight-decay rule), each checked against the old
behaviour."""

import math

import pytest
import torch
from conftest import TINY

import hf_vit
from hf_vit.training.arguments import FinetuningArguments, PretrainingArguments
from hf_vit.training.augmentation import batch_mixing
from hf_vit.training.optimization import build_optimizer, build_scheduler, decay_parameter_names, warmup_length
from hf_vit.training.recipes import RECIPES


def test_recipes_fill_only_what_the_user_left_unset():
    demo = PretrainingArguments()
    assert demo.recipe == "digits" and demo.dataset == "digits" and demo.model == "ViT-Ti/16"
    assert (demo.image_size, demo.random_crop_scale, demo.hflip, demo.epochs) == (32, 0.6, False, 30.0)
    paper = PretrainingArguments(dataset="imagenet-1k")
    assert paper.recipe == "paper" and paper.model == "ViT-B/16" and paper.image_size is None
    assert (paper.random_crop_scale, paper.hflip, paper.epochs, paper.lr_schedule) == (0.05, True, 90.0, "linear")
    mine = PretrainingArguments(dataset="imagenet-1k", hflip=False, learning_rate=3e-3, recipe="digits")
    assert (mine.hflip, mine.learning_rate, mine.epochs, mine.dataset) == (False, 3e-3, 30.0, "imagenet-1k")
    finetuning = FinetuningArguments(dataset="cifar10")
    assert (finetuning.max_steps, finetuning.learning_rate, finetuning.momentum) == (10_000, 0.03, 0.9)
    assert (finetuning.total_batch_size, finetuning.lr_schedule, finetuning.weight_decay) == (512, "cosine", 0.0)
    assert FinetuningArguments().max_steps == 100
    with pytest.raises(ValueError, match="Unknown recipe 'fast'; recipes: paper, digits, small-data"):
        PretrainingArguments(recipe="fast")


def test_every_recipe_value_names_a_field_of_its_entry_point():
    entry_points = {"pretraining": PretrainingArguments, "finetuning": FinetuningArguments}
    for name, recipe in RECIPES.items():
        for task, arguments in entry_points.items():
            unknown = set(getattr(recipe, task)) - set(arguments.__dataclass_fields__)
            assert not unknown, f"recipe {name} sets {unknown}, which {task} does not have"


def test_warm_up_is_the_recipes_cap_of_steps_and_ratio():
    assert warmup_length(750, 10_000, 10_000 / 300_000) == 25  # the digits run: 1/30 of the run
    assert warmup_length(3_000_000, 10_000, 10_000 / 300_000) == 10_000  # the paper's 10k, whatever the length
    assert warmup_length(100, 500, 0.05) == 5 and warmup_length(20_000, 500, 0.05) == 500


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_schedule_at_every_update_of_a_short_run(schedule):
    """transformers' schedule against the paper's formula: warm-up from 0 over 4 updates, then decay to 0 at 12.

    The old hand-written schedule started the warm-up one update later ((s + 1) / 4), otherwise the same."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    scheduler = build_scheduler(optimizer, schedule, warmup=4, total_steps=12)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step, rate in enumerate(seen):
        if step < 4:
            expected = 0.5 * step / 4
        else:
            progress = (step - 4) / 8
            expected = 0.5 * (1 - progress) if schedule == "linear" else 0.5 * 0.5 * (1 + math.cos(math.pi * progress))
        assert rate == pytest.approx(expected, abs=1e-12), step


def test_mixup_blends_images_and_labels_with_one_draw():
    """torchvision's MixUp, as the old hand-written mixup: each image blended with a neighbour of the batch with
    weight lambda ~ Beta(a, a), and the one-hot labels blended with the same lambda."""
    mixing = batch_mixing(PretrainingArguments(mixup=0.4), num_classes=5)
    pixels, labels = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(0)
    mixed, targets = mixing(pixels, labels)
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    lam = targets[1, 1].item()  # image 1 (a "1") is blended with image 0 (a "0")
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
    torch.testing.assert_close(mixed, lam * pixels + (1 - lam) * pixels.roll(1, 0))
    assert 0 < lam < 1 and batch_mixing(PretrainingArguments(mixup=0.0), 5) is None


@pytest.mark.parametrize("hybrid", [False, True])
def test_weight_decay_reaches_kernels_only(hybrid):
    """transformers' rule (no biases, no norms) and the model's declaration (no position embeddings or tokens)
    select exactly the parameters the old hand-written rule did: those with two or more dimensions, but not
    position embeddings or learned tokens."""
    if hybrid:
        config = hf_vit.HybridVisionTransformerConfig(**{**TINY, "patch_size": 1}, resnet_layers=(1,))
        model = hf_vit.HybridVisionTransformerForMaskedPatchPrediction(config)
    else:
        model = hf_vit.VisionTransformerForMaskedPatchPrediction(hf_vit.VisionTransformerConfig(**TINY))
    old_rule = {
        name
        for name, param in model.named_parameters()
        if not (param.ndim < 2 or "position_embeddings" in name or name.endswith("_token"))
    }
    assert decay_parameter_names(model) == old_rule
    assert "vit.embeddings.mask_token" not in old_rule and any("norm" in name for name, _ in model.named_parameters())
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.999))
    decayed, exempt = optimizer.param_groups
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.1, 0.0)
    assert len(decayed["params"]) == len(old_rule)
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
