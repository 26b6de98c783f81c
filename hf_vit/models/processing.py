"""The paper's preprocessing as a stock transformers image processor (no custom class to ship)."""

from typing import Any

from transformers import BaseImageProcessor
from transformers.image_utils import PILImageResampling
from transformers.utils import is_torchvision_available

from .configuration import to_pair


def create_image_processor(config, **overrides: Any) -> BaseImageProcessor:
    """Resize to the model's `image_size` (bicubic, as timm evaluates the official weights) and scale to [-1, 1].

    `overrides` replace any of these settings (a converted checkpoint keeps its source's resize, crop, mean and std).
    The torchvision-backed `ViTImageProcessor` when torchvision is installed, its PIL twin otherwise; both save a
    `preprocessor_config.json` that `AutoImageProcessor` and pipelines load without remote code.
    """
    if is_torchvision_available():
        from transformers import ViTImageProcessor as processor_class
    else:
        from transformers import ViTImageProcessorPil as processor_class
    height, width = to_pair(config.image_size)
    settings = dict(
        do_resize=True,
        size={"height": height, "width": width},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5] * config.num_channels,
        image_std=[0.5] * config.num_channels,
    )
    return processor_class(**(settings | overrides))
