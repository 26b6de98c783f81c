"""transformers ViT folders (config.json + weights), with the old or the current parameter names.

`save_pretrained` writes the old names (`encoder.layer.N.attention.attention.query`); transformers 5 models hold
the new ones in memory (`layers.N.attention.q_proj`); both are read. `ViTModel` folders (no `vit.` prefix, maybe
a pooler) convert too: the pooler (Dense + tanh on the class token) is the paper's representation layer.
The source's GELU (`hidden_act`), LayerNorm eps, labels, bicubic position-embedding resize and image processor
are carried.
"""

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .common import (
    LAYER_TENSORS,
    WEIGHT_FILES,
    ConversionError,
    Converted,
    KeyReader,
    inside_folder,
    make_config,
    shape_of,
    to_tensor,
)
from .preprocessing import read_processor
from .timm import load_state_dict

# (pattern, replacement) from either naming to one canonical spelling, per encoder layer.
RENAMES = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"layers.\1.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm_(before|after)\.", r"layers.\1.layernorm_\2."),
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"layers.\1.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"layers.\1.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"layers.\1.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"layers.\1.attention.proj."),
    (r"^layers\.(\d+)\.layernorm_before\.", r"layers.\1.norm1."),
    (r"^layers\.(\d+)\.layernorm_after\.", r"layers.\1.norm2."),
]
LAYER = re.compile(r"^layers\.(\d+)\.")


def load_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config dict and state dict of a saved transformers model (single file, or shards with an index).

    Every file read lies inside the folder: shard names that leave it (`../x`, `/etc/passwd`, a link out) are refused.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    config_file = inside_folder(folder, "config.json")
    if not config_file.is_file():
        raise ConversionError(f"{path} is not a transformers model folder: it has no config.json.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{config_file} is not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{config_file} does not hold a JSON object.")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = inside_folder(folder, index_name)
        if index_file.is_file():
            try:
                shards = sorted(set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values()))
                shard_files = [inside_folder(folder, shard, f"{index_file}: shard ") for shard in shards]
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
                raise ConversionError(f"{index_file} is not a weight index ({error}).") from None
            state: dict[str, torch.Tensor] = {}
            for shard_file in shard_files:
                state.update(load_state_dict(shard_file))
            return config, state
    for name in WEIGHT_FILES:
        if (weights := inside_folder(folder, name)).is_file():
            return config, load_state_dict(weights)
    raise ConversionError(f"{folder} has no weights ({', '.join(WEIGHT_FILES)} or a sharded index).")


def canonical_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `vit.` prefix and bring old and new layer names to one spelling."""
    renamed = {}
    for key, value in state_dict.items():
        name = key.removeprefix("vit.")
        for pattern, replacement in RENAMES:
            name = re.sub(pattern, replacement, name)
        renamed[name] = value
    return renamed


def convert_transformers_folder(
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    preset: str | None = None,
    what: str = "transformers checkpoint",
) -> Converted:
    """Convert a transformers ViT config dict and state dict into our config and weights."""
    model_type = config.get("model_type")
    if model_type != "vit":
        raise ConversionError(f"{what} is a {model_type!r} model; only transformers ViT (model_type 'vit') converts.")
    from transformers import ViTConfig

    source_config = ViTConfig(**{key: value for key, value in config.items() if key != "model_type"})
    dim, heads = source_config.hidden_size, source_config.num_attention_heads
    if getattr(source_config, "head_dim", None) not in (None, dim // heads) or dim % heads:
        raise ConversionError(f"{what}: hf_vit needs heads x head_dim = hidden size ({heads} heads, width {dim}).")
    reader = KeyReader(canonical_names(state_dict), what)
    if "embeddings.patch_embeddings.projection.weight" not in reader:
        raise ConversionError(
            f"{what} has no patch embedding weights (embeddings.patch_embeddings.projection.weight); "
            f"its first keys: {', '.join(sorted(state_dict)[:5])}."
        )
    state: dict[str, Any] = {}
    for name in ("cls_token", "position_embeddings", "patch_embeddings.projection.weight"):
        state[f"vit.embeddings.{name}"] = reader.take(f"embeddings.{name}")
    if "embeddings.patch_embeddings.projection.bias" in reader:
        state["vit.embeddings.patch_embeddings.projection.bias"] = reader.take(
            "embeddings.patch_embeddings.projection.bias"
        )
    if "embeddings.mask_token" in reader:
        reader.skip("embeddings.mask_token")  # only used for masked image modeling
    indices = sorted({int(match.group(1)) for key in reader.names() if (match := LAYER.match(key))})
    if indices != list(range(source_config.num_hidden_layers)):
        raise ConversionError(
            f"{what}: config.json says {source_config.num_hidden_layers} layers but the weights hold layers "
            f"{indices[:3]}{'...' if len(indices) > 3 else ''} ({len(indices)} in all)."
        )
    for index in indices:
        layer = f"layers.{index}."
        ours = f"vit.layers.{index}."
        for suffix in ("weight", "bias") if source_config.qkv_bias else ("weight",):
            parts = [reader.take(f"{layer}{name}.{suffix}") for name in ("query", "key", "value")]
            shapes = {shape_of(part) for part in parts}
            if len(shapes) != 1:
                raise ConversionError(
                    f"{what}: layer {index} has query/key/value {suffix}s of shapes {sorted(shapes)}."
                )
            state[f"{ours}attention.qkv.{suffix}"] = torch.cat(parts, dim=0)
        for name in LAYER_TENSORS:
            state[ours + name] = reader.take(layer + name)
    for suffix in ("weight", "bias"):
        state[f"vit.norm.{suffix}"] = reader.take(f"layernorm.{suffix}")
        if f"pooler.dense.{suffix}" in reader:
            state[f"vit.pre_logits.0.{suffix}"] = reader.take(f"pooler.dense.{suffix}")
        if f"classifier.{suffix}" in reader:
            state[f"classifier.{suffix}"] = reader.take(f"classifier.{suffix}")
    reader.finish()
    fields: dict[str, Any] = {
        name: getattr(source_config, name)
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "layer_norm_eps",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "image_size",
            "patch_size",
            "num_channels",
            "qkv_bias",
        )
    }
    fields.update(classifier="token", pos_embed_interpolation="bicubic")
    if "vit.pre_logits.0.weight" in state:
        if source_config.pooler_act != "tanh":
            raise ConversionError(f"{what}: the pooler uses {source_config.pooler_act!r}; hf_vit's is tanh.")
        fields["representation_size"] = state["vit.pre_logits.0.weight"].shape[0]
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
        if len(source_config.id2label) == fields["num_labels"]:
            fields["id2label"] = {int(index): label for index, label in source_config.id2label.items()}
    converted = make_config(fields, preset, what)
    return Converted(converted, {key: to_tensor(value) for key, value in state.items()}, what)


def load_transformers(path: str | os.PathLike, preset: str | None = None) -> Converted:
    """Convert the transformers ViT folder at `path`, with its image processor's preprocessing."""
    config, state_dict = load_folder(path)
    what = f"transformers checkpoint {Path(path).name}"
    converted = convert_transformers_folder(config, state_dict, preset, what=what)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    converted.preprocessing = read_processor(folder, what)
    return converted
