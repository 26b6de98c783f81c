"""Semantic segmentation on real handwritten digits: hf_vit's ViT as the backbone of transformers' UperNet.

Every image is a 64×64 canvas with one to three of scikit-learn's 8×8 digits, upscaled to 24 or 32 px, pasted at
random places; every pixel is labelled with its digit (classes 1-10) or as background (0). Training and held-out
canvases use different digit images. A small ViT (8-pixel patches: an 8×8 token grid, four blocks) feeds its four
blocks to UperNet through `VisionTransformerBackbone`; the script prints the loss and the held-out mean IoU next to
what predicting background everywhere scores, and can draw predictions (`--figure`, needs matplotlib).

Background outnumbers digit pixels about 7 to 1, so its pixels weigh `BACKGROUND_WEIGHT` in the cross-entropy: with
UperNet's own unweighted loss the model settled on background everywhere (held-out mean IoU 0.084 after 400 steps).

    python examples/segment_digits.py --figure docs/figures/segment_digits.png
"""

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from transformers import UperNetConfig, UperNetForSemanticSegmentation, get_cosine_schedule_with_warmup

import hf_vit

CANVAS = 64
NUM_CLASSES = 11  # background and the ten digits
INK = 0.4  # a pixel belongs to a digit where its ink (0-1) is above this
SCALES = (3, 4)  # digits are upscaled to 24 or 32 px
BACKGROUND_WEIGHT = 0.2


def make_canvases(
    images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` canvases of 1-3 digits drawn from `images` (0-16, 8×8): pixels in [-1, 1] and per-pixel classes."""
    pixels = np.zeros((count, CANVAS, CANVAS), dtype=np.float32)
    masks = np.zeros((count, CANVAS, CANVAS), dtype=np.int64)
    for canvas, mask in zip(pixels, masks, strict=True):
        for index in rng.choice(len(images), size=rng.integers(1, 4)):
            side = 8 * int(rng.choice(SCALES))
            ink = np.asarray(Image.fromarray(images[index] / 16).resize((side, side), Image.BILINEAR))
            top, left = rng.integers(0, CANVAS - side + 1, size=2)
            window = (slice(top, top + side), slice(left, left + side))
            canvas[window] = np.maximum(canvas[window], ink)
            mask[window][ink > INK] = labels[index] + 1
    rgb = torch.from_numpy(pixels * 2 - 1).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return rgb, torch.from_numpy(masks)


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES) -> float:
    """Intersection over union per class, averaged over the classes present in `target` or `predicted`."""
    confusion = torch.bincount(target.flatten() * num_classes + predicted.flatten(), minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes).double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return (intersection[union > 0] / union[union > 0]).mean().item()


def build_model() -> UperNetForSemanticSegmentation:
    backbone = hf_vit.VisionTransformerConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=CANVAS,
        patch_size=8,
        out_indices=[1, 2, 3, 4],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=64,
        pool_scales=[1, 2, 4],
        num_labels=NUM_CLASSES,
        use_auxiliary_head=False,
    )
    return UperNetForSemanticSegmentation(config)


def predict(model: UperNetForSemanticSegmentation, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(chunk).logits.argmax(1) for chunk in pixels.split(batch_size)])


def train(
    steps: int = 300,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    train_canvases: int = 2000,
    eval_canvases: int = 200,
) -> dict:
    """Train on canvases of the first 80% of the digits, score on canvases of the rest; returns the numbers."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    split = int(0.8 * len(digits.images))
    train_pixels, train_masks = make_canvases(digits.images[:split], digits.target[:split], train_canvases, rng)
    eval_pixels, eval_masks = make_canvases(digits.images[split:], digits.target[split:], eval_canvases, rng)
    model = build_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.05)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=steps // 10, num_training_steps=steps)
    weights = torch.ones(NUM_CLASSES)
    weights[0] = BACKGROUND_WEIGHT
    losses, start = [], time.perf_counter()
    for step in range(steps):
        batch = torch.from_numpy(rng.choice(train_canvases, size=batch_size, replace=False))
        logits = model(train_pixels[batch]).logits  # upsampled to the canvas
        loss = torch.nn.functional.cross_entropy(logits, train_masks[batch], weight=weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % max(steps // 10, 1) == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}", flush=True)
    predicted = predict(model, eval_pixels)
    window = max(steps // 10, 1)
    return {
        "model": model,
        "eval_pixels": eval_pixels,
        "eval_masks": eval_masks,
        "predicted": predicted,
        "first_loss": float(np.mean(losses[:window])),
        "last_loss": float(np.mean(losses[-window:])),
        "mean_iou": mean_iou(predicted, eval_masks),
        "background_mean_iou": mean_iou(torch.zeros_like(eval_masks), eval_masks),
        "pixel_accuracy": (predicted == eval_masks).double().mean().item(),
        "seconds": time.perf_counter() - start,
    }


def draw(pixels: torch.Tensor, masks: torch.Tensor, predicted: torch.Tensor, path: str, count: int = 4) -> None:
    """Canvases, their labels and the predictions, one row each; classes in a fixed colour map (background black)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = ListedColormap(np.vstack([[0, 0, 0, 1], colormaps["tab10"](np.arange(10))]))
    figure = Figure(figsize=(1.6 * count, 5.3), dpi=80, layout="constrained")
    axes = figure.subplots(3, count)
    rows = [
        ("canvas", pixels[:, 0], "gray", -1, 1),
        ("labels", masks, colours, 0, 10),
        ("predicted", predicted, colours, 0, 10),
    ]
    for row, (title, images, cmap, low, high) in zip(axes, rows, strict=True):
        for column, ax in enumerate(row):
            ax.imshow(images[column], cmap=cmap, vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(title)
    key = [Patch(color=colours(digit + 1), label=str(digit)) for digit in range(10)]
    figure.legend(handles=key, loc="outside lower center", ncols=10, frameon=False, handlelength=1, columnspacing=1)
    figure.suptitle("each pixel's digit (colour) or background (black)")
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", help="write a PNG of held-out canvases, labels and predictions here")
    parser.add_argument("--output", help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or not math.isfinite(args.learning_rate) or args.learning_rate <= 0:
        parser.error("--steps and --batch-size must be positive integers and --learning-rate a positive number")
    result = train(args.steps, args.batch_size, args.learning_rate, args.seed)
    numbers = {key: value for key, value in result.items() if isinstance(value, float)}
    print(
        f"loss {numbers['first_loss']:.3f} -> {numbers['last_loss']:.3f}; held-out mean IoU {numbers['mean_iou']:.3f} "
        f"(background everywhere: {numbers['background_mean_iou']:.3f}), pixel accuracy "
        f"{numbers['pixel_accuracy']:.3f}; {numbers['seconds']:.0f} s"
    )
    if args.figure:
        draw(result["eval_pixels"], result["eval_masks"], result["predicted"], args.figure)
    if args.output:
        with open(args.output, "w") as file:
            json.dump(numbers, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
