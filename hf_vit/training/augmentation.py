"""Augmentation with torchvision's v2 transforms: per image (crop, flip, RandAugment) and per batch (mixup)."""

from collections.abc import Callable

import torch

from .arguments import AugmentationArguments


def randaugment(spec: str | None) -> Callable | None:
    """torchvision's RandAugment from "N,M" (N ops of magnitude M; it works on PIL images and uint8 tensors alike)."""
    if not spec:
        return None
    from torchvision.transforms import v2

    try:
        num_ops, magnitude = (int(v) for v in spec.split(","))
    except ValueError as error:
        raise ValueError(f"--randaugment takes N,M (two integers), got {spec!r}.") from error
    if num_ops < 1 or not 0 <= magnitude <= 30:
        raise ValueError(f"--randaugment N,M needs N >= 1 and M in [0, 30], got {spec!r}.")
    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)


def build_transforms(
    augmentation: AugmentationArguments, image_size: tuple[int, int], train: bool, uint8: bool = False
) -> Callable:
    """The official pipeline: inception crop + flip for training, plain resize for eval; pixels scaled to [-1, 1].

    With `uint8`, the fast pipeline of `transforms`: it decodes the dataset's values itself (at the scale the crop
    needs) and returns uint8 pixels, to be scaled on the device with `transforms.Normalize`.
    """
    from torchvision.transforms import v2

    from .transforms import RandomResizedCrop, Resize

    scale, augment = augmentation.random_crop_scale, randaugment(augmentation.randaugment)
    if uint8:
        if not train:
            return Resize(image_size)
        if scale < 1.0:
            return RandomResizedCrop(image_size, scale=(scale, 1.0), hflip=augmentation.hflip, augment=augment)
        return Resize(image_size, hflip=augmentation.hflip, augment=augment)
    bicubic = v2.InterpolationMode.BICUBIC
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    resize = v2.Resize(image_size, interpolation=bicubic, antialias=True)
    if not train:
        return v2.Compose([resize, *normalize])
    steps: list = [
        v2.RandomResizedCrop(image_size, scale=(scale, 1.0), interpolation=bicubic, antialias=True)
        if scale < 1.0
        else resize
    ]
    if augmentation.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment is not None:
        steps.append(augment)
    return v2.Compose([*steps, *normalize])


def batch_mixing(augmentation: AugmentationArguments, num_classes: int) -> Callable | None:
    """Mixup and/or CutMix over a batch (torchvision's; with both, one of them per batch), or None.

    Mixup blends each image with its neighbour in the batch, CutMix pastes a box of it; the labels are blended by
    the same weight (mixup's draw, or the area CutMix kept). Returns (pixels, soft targets) and draws from the global
    torch RNG, which the training loop seeds per micro-batch.
    """
    from torchvision.transforms import v2

    mixes = []
    if augmentation.mixup:
        mixes.append(v2.MixUp(alpha=augmentation.mixup, num_classes=num_classes))
    if augmentation.cutmix:
        mixes.append(v2.CutMix(alpha=augmentation.cutmix, num_classes=num_classes))
    if len(mixes) > 1:
        return v2.RandomChoice(mixes)
    return mixes[0] if mixes else None


class ProcessorTransform:
    """A PIL image to the model's pixel tensor through a transformers image processor."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]
