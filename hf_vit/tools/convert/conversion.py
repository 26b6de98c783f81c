"""Conversion from end to end: read a checkpoint, adapt it, check it against our model, write the folder."""

import os
from pathlib import Path

from ..hub import push_model
from ..model_card import is_repo_id
from . import PREPROCESSING, SOURCES
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
from .jax import load_jax
from .preprocessing import converted_processor, describe
from .timm import load_timm
from .transformers import load_transformers


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
    preprocessing: str = "source",
) -> Path:
    """Convert `checkpoint` into the folder `output` (which must not exist or be empty); return the folder.

    The folder holds safetensors weights, the config with the modeling code, the image processor and a model
    card, and loads with `AutoModelForImageClassification.from_pretrained(output, trust_remote_code=True)`.
    The image processor prepares images as the source does (`preprocessing="source"`: a transformers folder's own
    processor, a timm folder's pretrained config, the official code's bilinear resize for JAX) or as hf_vit does
    (`"paper"`); a checkpoint that does not say how gets hf_vit's.
    The card names the checkpoint, what changed on the way, `base_model` (the Hub repo the checkpoint came from;
    read off the path for a checkpoint in the Hugging Face cache) and the weights' `license`.
    On any error `output` is left as it was. With `push_to_hub` the folder is then pushed with
    `hf_vit.tools.hub.push_model`, which raises `HubError` when the Hub refuses it or cannot be reached; the converted
    folder is complete and stays by then.
    """
    output = check_output(output)
    if preprocessing not in PREPROCESSING:
        raise ConversionError(f"preprocessing must be one of {', '.join(PREPROCESSING)}, got {preprocessing!r}.")
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
    processor, origin = converted_processor(converted.preprocessing, preprocessing, model.config)
    card = conversion_card(
        model,
        converted,
        source,
        checkpoint,
        push_to_hub or str(output),
        base_model,
        license,
        preprocessing=(describe(processor), origin),
    )
    folder = save_folder(model, card, output, processor)
    if push_to_hub:
        push_model(folder, push_to_hub)
    return folder
