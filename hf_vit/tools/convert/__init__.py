"""Checkpoint conversion: official JAX (.npz), timm and transformers ViT weights into hf_vit folders.

Each source has a module that reads its layout into a `Converted` (our config and weights); `common` resizes,
replaces the head, checks every name and shape against our model, and writes the folder atomically.

    from hf_vit.tools.convert import convert_checkpoint
    convert_checkpoint("jax", "ViT-B_16.npz", "vit-b16", image_size=384)
"""

import os
from pathlib import Path

from ..hub import push_model
from ..model_card import is_repo_id
from .common import (
    ConversionError,
    Converted,
    adapt,
    build_model,
    cached_repo_id,
    check_output,
    conversion_card,
    read_labels,
    save_folder,
)
from .jax import convert_jax_params, load_jax
from .timm import convert_timm_state_dict, load_timm
from .transformers import convert_transformers_folder, load_transformers

SOURCES = ("jax", "timm", "transformers")


def load_checkpoint(
    source: str, checkpoint: str | os.PathLike, preset: str | None = None, num_heads: int | None = None
) -> Converted:
    """Read `checkpoint` in the layout of `source` ("jax", "timm" or "transformers") into our config and weights.

    `preset` (and `num_heads`) supply what the weights cannot show and are checked against what they do show.
    """
    if source == "jax":
        converted = load_jax(checkpoint, preset)
    elif source == "timm":
        converted = load_timm(checkpoint, preset, num_heads)
    elif source == "transformers":
        converted = load_transformers(checkpoint, preset)
    else:
        raise ConversionError(f"Unknown source {source!r}; choose one of {', '.join(SOURCES)}.")
    if num_heads is not None and num_heads != converted.config.num_attention_heads:
        raise ConversionError(
            f"{converted.source} has {converted.config.num_attention_heads} attention heads, not {num_heads}."
        )
    return converted


def convert_checkpoint(
    source: str,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    preset: str | None = None,
    num_heads: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    interpolation: str | None = None,
    num_labels: int | None = None,
    drop_head: bool = False,
    labels: list[str] | str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
) -> Path:
    """Convert `checkpoint` into the folder `output` (which must not exist or be empty); return the folder.

    The folder holds safetensors weights, the config with the modeling code, the image processor and a model
    card, and loads with `AutoModelForImageClassification.from_pretrained(output, trust_remote_code=True)`.
    The card names the checkpoint, what changed on the way, `base_model` (the Hub repo the checkpoint came from;
    read off the path for a checkpoint in the Hugging Face cache) and the weights' `license`.
    On any error `output` is left as it was. With `push_to_hub` the folder is then pushed with
    `hf_vit.tools.hub.push_model`, which raises `HubError` when the Hub refuses it or cannot be reached; the converted
    folder is complete and stays by then.
    """
    output = check_output(output)
    if base_model is not None and not is_repo_id(base_model):
        raise ConversionError(
            f"base_model must be a Hub repo id such as google/vit-base-patch16-224, got {base_model!r}."
        )
    if labels is not None and not isinstance(labels, list):
        labels = read_labels(labels)
    converted = load_checkpoint(source, checkpoint, preset, num_heads)
    converted = adapt(converted, image_size, interpolation, num_labels, drop_head, labels)
    model = build_model(converted)
    base_model = base_model or cached_repo_id(checkpoint)
    card = conversion_card(model, converted, source, checkpoint, push_to_hub or str(output), base_model, license)
    folder = save_folder(model, card, output)
    if push_to_hub:
        push_model(folder, push_to_hub)
    return folder


__all__ = [
    "SOURCES",
    "ConversionError",
    "Converted",
    "adapt",
    "build_model",
    "convert_checkpoint",
    "convert_jax_params",
    "convert_timm_state_dict",
    "convert_transformers_folder",
    "conversion_card",
    "load_checkpoint",
    "load_jax",
    "load_timm",
    "load_transformers",
    "read_labels",
    "save_folder",
]
