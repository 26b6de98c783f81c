"""How a converted model's images are prepared: as its source prepared them, or as hf_vit does (on request).

A model is only as exact as its inputs: the same weights fed pixels resized another way (bicubic instead of
bilinear, a squashed instead of a cropped photo) give other logits. So each converter reads its source's
preprocessing into a `Preprocessing` (what does not depend on the input size), and the converted folder's image
processor is built from it for the model's final input size:

- transformers folders: their saved image processor (resize, crop, resample, rescale, mean, std);
- timm: the `pretrained_cfg` of a timm Hub folder's config.json (interpolation, crop_pct and crop mode, mean, std),
  mapped as timm's eval transform does: the shorter side (crop mode "center") or both sides ("squash") resized to
  `floor(size / crop_pct)`, then a centre crop of `size`, the model's input size;
- official JAX checkpoints: the official eval, a plain bilinear resize to the model's size and scaling to [-1, 1]
  (`tf.image.resize` in vit_jax and big_vision).

Where the two cannot agree to the pixel: transformers' centre crop starts at `floor(margin / 2)` and timm's at
`round(margin / 2)` (half to even), a 1-pixel shift when the margin is 3 modulo 4; transformers' default torchvision
backend resamples 8-bit images slightly differently from PIL (timm's), which its PIL backend does not
(`AutoImageProcessor.from_pretrained(folder, backend="pil")`); TensorFlow's resize does not antialias, PIL's does.
"""

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from transformers import BaseImageProcessor
from transformers.image_utils import PILImageResampling

from ...models.configuration import to_pair
from ...models.processing import create_image_processor
from .common import ConversionError, inside_folder

# timm's interpolation names (timm.data.transforms) as PIL filters.
TIMM_INTERPOLATION = {
    "nearest": PILImageResampling.NEAREST,
    "bilinear": PILImageResampling.BILINEAR,
    "bicubic": PILImageResampling.BICUBIC,
    "box": PILImageResampling.BOX,
    "hamming": PILImageResampling.HAMMING,
    "lanczos": PILImageResampling.LANCZOS,
}
# What timm's resolve_data_config assumes when a pretrained config leaves a field out.
TIMM_DEFAULTS = {
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}
# Processor settings that do not depend on the input size, carried from a transformers processor as they are.
SIZE_FREE = ("resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")
# Methods that, left as transformers' image-processing backends define them, make a processor a plain
# resize -> centre crop -> rescale -> normalise, which is all a `Preprocessing` describes.
BACKEND_METHODS = ("preprocess", "_preprocess", "resize", "center_crop", "rescale", "normalize")
PAPER_HINT = "Pass --preprocessing paper (preprocessing='paper') to use hf_vit's."
TIMM_ORIGIN, PROCESSOR_ORIGIN = "timm's pretrained config", "the source folder's"


@dataclass(frozen=True)
class Preprocessing:
    """A source's preprocessing for any input size: resize (and crop), then the size-free `settings`.

    The resize target is `floor(side / crop_fraction)`, of the shorter side (`keep_aspect`, then a square centre
    crop) or of both sides; with `crop_fraction` 1 and not `keep_aspect`, a plain resize to the input size.
    `problem` says why an image processor cannot do what the source does; it is raised only when that processor is
    asked for, so that `preprocessing="paper"` still converts.
    """

    origin: str
    settings: dict[str, Any] = field(default_factory=dict)
    crop_fraction: float | Fraction = 1
    keep_aspect: bool = False
    problem: str | None = None

    def sizes(self, image_size: int | tuple[int, int]) -> dict[str, Any]:
        """The processor's resize and crop settings for inputs of `image_size`."""
        height, width = to_pair(image_size)
        if self.keep_aspect:
            if height != width:
                raise ConversionError(
                    f"This preprocessing ({self.origin}) resizes the shorter side and crops a square, which cannot "
                    f"make {height}×{width} inputs. {PAPER_HINT}"
                )
            resized: dict[str, int] = {"shortest_edge": math.floor(height / self.crop_fraction)}
        elif self.crop_fraction == 1:
            return {"size": {"height": height, "width": width}, "do_center_crop": False}
        else:
            resized = {
                "height": math.floor(height / self.crop_fraction),
                "width": math.floor(width / self.crop_fraction),
            }
        return {"size": resized, "do_center_crop": True, "crop_size": {"height": height, "width": width}}

    def image_processor(self, config) -> BaseImageProcessor:
        if self.problem:
            raise ConversionError(f"{self.problem} {PAPER_HINT}")
        return create_image_processor(config, **self.settings, **self.sizes(config.image_size))


def official_preprocessing(num_channels: int) -> Preprocessing:
    """The official eval (vit_jax's input pipeline, big_vision's `resize|value_range(-1, 1)`)."""
    return Preprocessing(
        "the official code's preprocessing",
        {
            "resample": PILImageResampling.BILINEAR,
            "image_mean": [0.5] * num_channels,
            "image_std": [0.5] * num_channels,
        },
    )


def timm_preprocessing(pretrained_cfg: dict[str, Any], what: str) -> Preprocessing:
    """timm's eval transform (`resolve_data_config` + `create_transform`) for a checkpoint's pretrained config."""
    cfg = {key: pretrained_cfg.get(key) or default for key, default in TIMM_DEFAULTS.items()}
    if cfg["interpolation"] not in TIMM_INTERPOLATION:
        problem = (
            f"{what}: interpolation {cfg['interpolation']!r} has no image-processor equivalent "
            f"(known: {', '.join(TIMM_INTERPOLATION)})."
        )
        return Preprocessing(TIMM_ORIGIN, problem=problem)
    if cfg["crop_mode"] not in ("center", "squash"):
        problem = (
            f"{what}: crop mode {cfg['crop_mode']!r} (timm pads to keep the whole image) has no processor equivalent."
        )
        return Preprocessing(TIMM_ORIGIN, problem=problem)
    try:
        crop_pct = float(cfg["crop_pct"])
        mean, std = [float(value) for value in cfg["mean"]], [float(value) for value in cfg["std"]]
    except (TypeError, ValueError):
        return Preprocessing(TIMM_ORIGIN, problem=f"{what}: crop_pct, mean and std must be numbers, got {cfg}.")
    if not 0 < crop_pct <= 1:
        return Preprocessing(TIMM_ORIGIN, problem=f"{what}: crop_pct must be in (0, 1], got {crop_pct}.")
    settings = {"resample": TIMM_INTERPOLATION[cfg["interpolation"]], "image_mean": mean, "image_std": std}
    return Preprocessing(TIMM_ORIGIN, settings, crop_pct, keep_aspect=cfg["crop_mode"] == "center")


def processor_preprocessing(processor: BaseImageProcessor, what: str) -> Preprocessing:
    """A transformers image processor as a `Preprocessing`: its resize, crop share and size-free settings."""
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    backends = (TorchvisionBackend, PilBackend)
    own = [
        name
        for name in BACKEND_METHODS
        if not any(getattr(type(processor), name, None) is getattr(backend, name) for backend in backends)
    ]
    if own or not processor.do_resize:
        reason = f"its own {', '.join(own)}" if own else "no resize"
        problem = (
            f"{what}: the image processor ({type(processor).__name__}) has {reason}, which hf_vit cannot carry over."
        )
        return Preprocessing(PROCESSOR_ORIGIN, problem=problem)
    size, crop = processor.size, processor.crop_size if processor.do_center_crop else None
    if size.height and size.width:
        fractions = {Fraction(crop.height, size.height), Fraction(crop.width, size.width)} if crop else {1}
        keep_aspect = False
    elif size.shortest_edge and crop and crop.height == crop.width:
        fractions, keep_aspect = {Fraction(crop.height, size.shortest_edge)}, True
    else:
        fractions, keep_aspect = set(), False
    if len(fractions) != 1:
        crops = f"crops {crop.height}×{crop.width}" if crop else "does not crop"
        problem = (
            f"{what}: the image processor resizes to {_set_sizes(size)} and "
            f"{crops}, which hf_vit cannot scale to other input sizes."
        )
        return Preprocessing(PROCESSOR_ORIGIN, problem=problem)
    settings = {name: getattr(processor, name) for name in SIZE_FREE if getattr(processor, name, None) is not None}
    return Preprocessing(PROCESSOR_ORIGIN, settings, fractions.pop(), keep_aspect)


def _set_sizes(size) -> dict[str, int]:
    """The sizes a processor's `size` sets (transformers' SizeDict lists every kind, most of them None)."""
    return {name: value for name, value in vars(size).items() if value is not None}


def read_processor(folder: Path, what: str) -> Preprocessing | None:
    """The preprocessing of a transformers folder's `preprocessor_config.json`, or None when it has none."""
    path = inside_folder(folder, "preprocessor_config.json", f"{what}: ")
    if not path.is_file():
        return None
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as error:
        problem = f"{what}: {path.name} does not load as an image processor ({error})."
        return Preprocessing(PROCESSOR_ORIGIN, problem=problem)
    return processor_preprocessing(processor, what)


def describe(processor: BaseImageProcessor) -> str:
    """What `processor` does to an image, in a phrase for the model card."""
    size, resample = processor.size, PILImageResampling(processor.resample).name.lower()
    if size.shortest_edge:
        text = f"shorter side resized to {size.shortest_edge} px ({resample})"
    else:
        text = f"resized to {size.height}×{size.width} px ({resample})"
    if processor.do_center_crop:
        text += f", centre crop {processor.crop_size.height}×{processor.crop_size.width}"
    mean, std = list(processor.image_mean), list(processor.image_std)
    if processor.do_rescale and processor.rescale_factor == 1 / 255 and set(mean) == set(std) == {0.5}:
        return text + ", scaled to [-1, 1]"
    if processor.do_normalize:
        text += f", normalised with mean {', '.join(f'{v:g}' for v in mean)} and std {', '.join(f'{v:g}' for v in std)}"
    return text


def converted_processor(preprocessing: Preprocessing | None, choice: str, config) -> tuple[BaseImageProcessor, str]:
    """The converted folder's image processor (the source's unless `choice` is "paper") and a sentence saying whose
    preprocessing it is, for the model card."""
    if choice == "source" and preprocessing is not None:
        return preprocessing.image_processor(config), f"The image processor follows {preprocessing.origin}."
    why = "as asked" if choice == "paper" else "the checkpoint does not say how its source prepares images"
    return create_image_processor(config), f"The image processor is hf_vit's ({why})."
