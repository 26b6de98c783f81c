"""The small-data recipe's parts, each checked exactly: CutMix boxes and label areas, label smoothing, the weight
average (EMA) against its formula, layer-wise learning-rate decay; and all of it through checkpoints and resume."""

import shutil

import pytest
import torch
from conftest import TINY, TINY_RUN, pretrained, run_script
from safetensors.torch import load_file

import hf_vit
from hf_vit.training.arguments import FinetuningArguments, PretrainingArguments
from hf_vit.training.augmentation import batch_mixing
from hf_vit.training.loop import classification_loss
from hf_vit.training.optimization import layer_decay_groups, layer_index, weight_average

MODEL = [*TINY_RUN, "--per-device-batch-size", "8"]


def test_cutmix_pastes_one_box_and_mixes_labels_by_its_area():
    cutmix = batch_mixing(PretrainingArguments(mixup=0.0, cutmix=1.0), num_classes=4)
    pixels = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 24).clone()  # image i is all i
    labels = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(3)
    mixed, targets = cutmix(pixels, labels)
    for index in range(4):
        pasted = mixed[index, 0] == (index - 1) % 4  # the box comes from the previous image of the batch
        rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
        if len(rows):  # one rectangle, filled
            box = pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all() and pasted.sum() == box.numel()
        kept = 1 - pasted.float().mean().item()
        expected = torch.zeros(4)
        expected[index] += kept
        expected[(index - 1) % 4] += 1 - kept
        torch.testing.assert_close(targets[index], expected)
    assert 0 < pasted.float().mean() < 1  # a box of some size was pasted
    both = batch_mixing(PretrainingArguments(mixup=0.2, cutmix=1.0), num_classes=4)
    assert [type(t).__name__ for t in both.transforms] == ["MixUp", "CutMix"]


@pytest.mark.parametrize("soft", [False, True])
def test_label_smoothing_targets(soft):
    """Smoothing by e: the targets become (1 - e) t + e / K, for class ids and for mixed targets alike."""
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 1, 1, 2])
    targets = torch.nn.functional.one_hot(labels, 4).float()
    if soft:
        targets = 0.7 * targets + 0.3 * targets.roll(1, 0)
    expected = -((0.9 * targets + 0.1 / 4) * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(classification_loss(logits, targets if soft else labels, 0.1), expected)


def test_the_weight_average_after_k_updates_is_the_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = weight_average(model, 0.9)
    history = []
    for _ in range(5):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        history.append(model.weight.detach().clone())
        average.update_parameters(model)
    expected = history[0]  # the first update copies, update n blends in 1 - d_n of the weights
    for n, weights in enumerate(history[1:], start=1):
        rate = min(0.9, (1 + n) / (10 + n))
        expected = rate * expected + (1 - rate) * weights
    torch.testing.assert_close(average.module.weight, expected)
    for _ in range(100):  # warmed up: the decay stays at the one asked for
        average.update_parameters(model)
    before = average.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update_parameters(model)
    torch.testing.assert_close(average.module.weight, 0.9 * before + 0.1 * model.weight)
    assert weight_average(model, 0.0) is None


def test_pretraining_saves_the_average_of_its_updates(digits_folder, tmp_path):
    """End to end: the saved model is the EMA of the weights of every update (read from the checkpoints)."""
    out = tmp_path / "run"
    run_script("pretrain", *MODEL, "--dataset", str(digits_folder), "--max-steps", "4", "--save-every", "1",
               "--save-total-limit", "10", "--ema-decay", "0.8", "--output-dir", str(out))  # fmt: skip
    steps = [load_file(out / f"checkpoint-{step}" / "model.safetensors") for step in range(1, 5)]
    expected = steps[0]
    for n, weights in enumerate(steps[1:], start=1):
        rate = min(0.8, (1 + n) / (10 + n))
        expected = {name: rate * expected[name] + (1 - rate) * weights[name] for name in expected}
    saved = load_file(out / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, msg=name)
    assert not torch.equal(saved["classifier.weight"], steps[-1]["classifier.weight"])


def test_layer_decay_gives_each_depth_its_multiple_of_the_rate():
    model = pretrained()  # 2 blocks: embeddings 0, blocks 1 and 2, head 3
    groups = layer_decay_groups(model, 0.1, 0.5, weight_decay=0.05)
    rate = {id(param): group["lr"] for group in groups for param in group["params"]}
    decay = {id(param): group["weight_decay"] for group in groups for param in group["params"]}
    for name, param in model.named_parameters():
        depth = layer_index(name, 2)
        assert rate[id(param)] == pytest.approx(0.1 * 0.5 ** (3 - depth)), name
        exempt = param.ndim < 2 or name.endswith(("position_embeddings", "_token"))
        assert decay[id(param)] == (0.0 if exempt else 0.05), name
    assert layer_index("vit.embeddings.cls_token", 2) == 0 and layer_index("vit.layers.1.mlp.fc1.weight", 2) == 2
    assert layer_index("classifier.weight", 2) == layer_index("vit.norm.weight", 2) == 3
    hybrid = hf_vit.HybridVisionTransformerConfig(**{**TINY, "patch_size": 1}, resnet_layers=(1,))
    names = [name for name, _ in hf_vit.HybridVisionTransformerForImageClassification(hybrid).named_parameters()]
    assert {layer_index(name, 2) for name in names if ".backbone." in name} == {0}  # the ResNet is the embedding


def test_the_small_data_recipe():
    pre, fine = PretrainingArguments(recipe="small-data"), FinetuningArguments(recipe="small-data")
    assert (pre.representation_layer, pre.randaugment, pre.mixup, pre.cutmix) == (False, "2,9", 0.2, 1.0)
    assert (pre.label_smoothing, pre.drop_path_rate, pre.ema_decay, pre.weight_decay) == (0.1, 0.1, 0.998, 0.05)
    assert (fine.layer_decay, fine.label_smoothing, fine.ema_decay, fine.learning_rate) == (0.75, 0.1, 0.998, 0.1)
    flags = PretrainingArguments(recipe="paper", cutmix=1.0, ema_decay=0.99)  # each part on its own
    assert (flags.cutmix, flags.ema_decay, flags.mixup, flags.label_smoothing) == (1.0, 0.99, 0.0, 0.0)


def test_everything_survives_checkpoint_and_exact_resume(digits_folder, pretrained_folder, tmp_path):
    """Pre-training with mixup, CutMix, label smoothing, drop-path and EMA, and fine-tuning with layer decay, label
    smoothing and EMA: 3 + resumed 3 updates end with the straight run's saved (averaged) weights, bit for bit."""
    pre = [*MODEL, "--recipe", "small-data", "--dataset", str(digits_folder), "--randaugment", "2,5"]
    pre += ["--random-crop-scale", "0.6", "--max-steps", "6", "--save-every", "3", "--ema-decay", "0.7"]
    fine = ["--recipe", "small-data", "--model", str(pretrained_folder), "--dataset", str(digits_folder)]
    fine += ["--per-device-batch-size", "8", "--total-batch-size", "8", "--max-steps", "6", "--save-every", "3"]
    fine += ["--ema-decay", "0.7"]
    for script, args in (("pretrain", pre), ("finetune", fine)):
        straight, resumed = tmp_path / f"{script}-straight", tmp_path / f"{script}-resumed"
        run_script(script, *args, "--output-dir", str(straight))
        resumed.mkdir()
        shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
        run_script(script, *args, "--output-dir", str(resumed), "--resume-from-checkpoint", "latest")
        left, right = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
        for name, tensor in left.items():
            assert torch.equal(right[name], tensor), (script, name)
