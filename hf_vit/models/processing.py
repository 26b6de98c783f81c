"""The paper's preprocessing as a stock transformers image processor (no custom class to ship)."""

from transformers import BaseImageProcessor
from transformers.image_utils import PILImageResampling
from transformers.utils import is_torchvision_available

from .configuration import to_pair


def create_image_processor(config) -> BaseImageProcessor:
    """Resize to the model's `image_size` (bicubic, as the official eval) and scale to [-1, 1] (mean = std = 0.5).

    The torchvision-backed `ViTImageProcessor` when torchvision is installed, its PIL twin otherwise; both save a
    `preprocessor_config.json` that `AutoImageProcessor` and pipelines load without remote code.
    """
    if is_torchvision_available():
        from transformers import ViTImageProcessor as processor_class
    else:
        from transformers import ViTImageProcessorPil as processor_class
    height, width = to_pair(config.image_size)
    return processor_class(
        do_resize=True,
        size={"height": height, "width": width},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5] * config.num_channels,
        image_std=[0.5] * config.num_channels,
    )
