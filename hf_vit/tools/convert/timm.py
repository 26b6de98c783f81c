"""timm `VisionTransformer` state dicts: plain `vit_*` models and the ResNet hybrids `vit_*_r*`.

timm's fused qkv, MLP and norms match ours name for name. The weights cannot show the number of attention heads:
it comes from `num_heads`, a preset, or the paper's width table (192 → 3, 384 → 6, 768 → 12, 1024 and 1280 → 16).
timm's own numerics are carried: exact GELU, LayerNorm eps 1e-6, bicubic position-embedding resize; and from a timm
Hub folder (config.json beside the weights), the preprocessing of its `pretrained_cfg`.
"""

import codecs
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ...models.presets import WIDTHS, create_config
from .common import (
    BACKBONE,
    DOWNSAMPLE_TENSORS,
    LAYER_TENSORS,
    UNIT_TENSORS,
    WEIGHT_FILES,
    ConversionError,
    Converted,
    KeyReader,
    geometry_fields,
    inside_folder,
    is_square,
    make_config,
    shape_of,
    square_grid,
    to_tensor,
)
from .preprocessing import timm_preprocessing

BLOCK = re.compile(r"^blocks\.(\d+)\.")
STAGE_UNIT = re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.")
WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")
# torch.save writes a zip archive; before PyTorch 1.6 it wrote a pickle, whose first byte is the PROTO opcode.
TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")
UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
WEIGHTS_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(.+)")
HEADS_BY_WIDTH = {widths["hidden_size"]: widths["num_attention_heads"] for widths in WIDTHS.values()}


def _not_loadable(path: Path, error: Exception) -> ConversionError:
    """Why a .pth/.bin did not load, in a line: torch's own message advises `weights_only=False`, which would run the
    file's code, whatever the file is."""
    with path.open("rb") as file:
        head = file.read(512)
    if not head:
        return ConversionError(f"{path} is empty, not a PyTorch checkpoint.")
    if not head.startswith(TORCH_SAVE_MAGIC):
        return ConversionError(
            f"{path} is not a PyTorch checkpoint: it is {'a text file' if _is_text(head) else 'binary data'}, not the "
            "zip archive that torch.save writes (nor the pickle it wrote before PyTorch 1.6)."
        )
    message = str(error)
    if unsupported := UNSUPPORTED_GLOBAL.search(message):
        return ConversionError(
            f"{path} holds {unsupported.group(1)} objects besides tensors, and hf_vit loads .pth and .bin files with "
            "weights_only=True, which never unpickles such objects: save the state dict alone, or as .safetensors."
        )
    if refusal := WEIGHTS_UNPICKLER_ERROR.search(message):
        return ConversionError(
            f"{path} is a pickle that torch.load cannot read with weights_only=True ({refusal.group(1).strip()}), "
            "and hf_vit unpickles nothing else: save the state dict with torch.save, or as .safetensors."
        )
    reason = re.split(r"(?<=\.)\s", message.strip())[0].rstrip(".") or type(error).__name__
    return ConversionError(f"{path} is a damaged or truncated PyTorch checkpoint ({reason}).")


def _is_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as UTF-8 text (a character cut at the end of `head` is fine)."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return bool(text.strip()) and all(character.isprintable() or character.isspace() for character in text)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a .pth/.bin loaded with `weights_only=True` (no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint {path} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise ConversionError(f"{path} is not a readable safetensors file ({error}).") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise _not_loadable(path, error) from None
    while isinstance(data, dict) and any(isinstance(data.get(key), dict) for key in WRAPPERS):
        data = next(data[key] for key in WRAPPERS if isinstance(data.get(key), dict))
    if not isinstance(data, dict) or not data or not all(isinstance(value, torch.Tensor) for value in data.values()):
        raise ConversionError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return data


def _num_heads(hidden: int, num_heads: int | None, preset: str | None, what: str) -> int:
    if num_heads is not None:
        return num_heads
    if preset is not None:
        try:
            return create_config(preset).num_attention_heads
        except ValueError as error:
            raise ConversionError(str(error)) from None
    if hidden in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[hidden]
    raise ConversionError(
        f"{what} has hidden size {hidden}, which is not in the paper's width table, and its weights do not show the "
        "number of attention heads: pass a preset (--preset) or the head count (--num-heads)."
    )


def convert_resnet(reader: KeyReader, state: dict[str, Any]) -> dict[str, Any]:
    """Map timm's ResNetV2 backbone (or the stem alone, for R+ViT-Ti/16); return the stage layout."""
    stem = (
        "patch_embed.backbone.stem." if "patch_embed.backbone.stem.conv.weight" in reader else "patch_embed.backbone."
    )
    root = reader.take(stem + "conv.weight", ndim=4)
    state[BACKBONE + "stem.conv.weight"] = root
    for name in ("weight", "bias"):
        state[BACKBONE + f"stem.norm.{name}"] = reader.take(stem + f"norm.{name}")
    units: dict[int, set[int]] = {}
    for key in reader.names():
        if match := STAGE_UNIT.match(key):
            units.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    for stage, indices in sorted(units.items()):
        for unit in sorted(indices):
            source = f"patch_embed.backbone.stages.{stage}.blocks.{unit}."
            names = UNIT_TENSORS + (DOWNSAMPLE_TENSORS if source + DOWNSAMPLE_TENSORS[0] in reader else ())
            for name in names:
                state[f"{BACKBONE}stages.{stage}.{unit}.{name}"] = reader.take(source + name)
    return {
        "resnet_layers": [len(units[stage]) for stage in sorted(units)],
        "resnet_width_factor": max(root.shape[0] // 64, 1),
    }


def convert_timm_state_dict(
    state_dict: dict[str, torch.Tensor],
    preset: str | None = None,
    num_heads: int | None = None,
    what: str = "timm checkpoint",
) -> Converted:
    """Convert a timm VisionTransformer state dict into our config and weights."""
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    reader = KeyReader(state_dict, what)
    if "patch_embed.proj.weight" not in reader:
        raise ConversionError(
            f"{what} has no 'patch_embed.proj.weight', so it is not a timm VisionTransformer "
            f"(its first keys: {', '.join(sorted(reader.names())[:5])})."
        )
    if "reg_token" in reader:
        raise ConversionError(f"{what} has register tokens (reg_token), which hf_vit does not implement.")
    if "fc_norm.weight" in reader:
        raise ConversionError(
            f"{what} normalises after pooling (fc_norm, timm's default for global_pool='avg'); the paper's GAP "
            "normalises before pooling, which is all hf_vit implements."
        )
    state: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    projection = reader.take("patch_embed.proj.weight", ndim=4)
    hidden, _, patch_h, patch_w = shape_of(projection)
    state["vit.embeddings.patch_embeddings.projection.weight"] = projection
    state["vit.embeddings.patch_embeddings.projection.bias"] = reader.take("patch_embed.proj.bias")
    if any(key.startswith("patch_embed.backbone.") for key in reader.names()):
        fields.update(convert_resnet(reader, state))
    token = "cls_token" in reader
    if token:
        state["vit.embeddings.cls_token"] = reader.take("cls_token", ndim=3)
    pos_embed = reader.take("pos_embed", ndim=3)
    num_tokens = pos_embed.shape[1]
    if token and is_square(num_tokens) and not is_square(num_tokens - 1):
        # no_embed_class models add position embeddings to the patches only: the class slot gets zeros.
        pos_embed = torch.cat([torch.zeros_like(pos_embed[:, :1]), pos_embed], dim=1)
    grid_h, grid_w = square_grid(pos_embed.shape[1] - int(token), what)
    state["vit.embeddings.position_embeddings"] = pos_embed
    indices = sorted({int(match.group(1)) for key in reader.names() if (match := BLOCK.match(key))})
    if indices != list(range(len(indices))) or not indices:
        raise ConversionError(f"{what}: transformer blocks are numbered {indices}, expected 0 to N-1.")
    qkv_bias = "blocks.0.attn.qkv.bias" in reader
    for index in indices:
        names = LAYER_TENSORS + ("attention.qkv.weight",) + (("attention.qkv.bias",) if qkv_bias else ())
        for name in names:
            source = f"blocks.{index}.{name}".replace("attention.", "attn.")
            state[f"vit.layers.{index}.{name}"] = reader.take(source)
    for name in ("weight", "bias"):
        state[f"vit.norm.{name}"] = reader.take(f"norm.{name}")
        if f"pre_logits.fc.{name}" in reader:
            state[f"vit.pre_logits.0.{name}"] = reader.take(f"pre_logits.fc.{name}")
        if f"head.{name}" in reader:
            state[f"classifier.{name}"] = reader.take(f"head.{name}")
    reader.finish()
    if "vit.pre_logits.0.weight" in state:
        fields["representation_size"] = state["vit.pre_logits.0.weight"].shape[0]
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
    fc1 = state.get("vit.layers.0.mlp.fc1.weight")
    fields.update(
        hidden_size=hidden,
        num_hidden_layers=len(indices),
        num_attention_heads=_num_heads(hidden, num_heads, preset, what),
        intermediate_size=fc1.shape[0] if fc1 is not None else 4 * hidden,
        qkv_bias=qkv_bias,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        pos_embed_interpolation="bicubic",
        **geometry_fields(fields, (grid_h, grid_w), (patch_h, patch_w), token),
    )
    config = make_config(fields, preset, what)
    return Converted(config, {key: to_tensor(value) for key, value in state.items()}, what)


def timm_files(path: str | os.PathLike) -> tuple[Path, dict[str, Any] | None]:
    """The weights file of a timm checkpoint (a file, or a timm Hub folder) and the `pretrained_cfg` of the
    config.json beside it (None when there is none)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        weights = [inside_folder(folder, name) for name in WEIGHT_FILES]
        path = next((file for file in weights if file.is_file()), None)
        if path is None:
            raise ConversionError(f"{folder} holds no timm weights ({' or '.join(WEIGHT_FILES)}).")
    config_file = inside_folder(folder, "config.json")
    try:
        pretrained_cfg = json.loads(config_file.read_text(encoding="utf-8")).get("pretrained_cfg")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        pretrained_cfg = None  # no config.json, or not timm's
    return path, pretrained_cfg if isinstance(pretrained_cfg, dict) else None


def load_timm(path: str | os.PathLike, preset: str | None = None, num_heads: int | None = None) -> Converted:
    """Convert the timm checkpoint at `path` (.safetensors, .pth, .bin, or a timm Hub folder holding one); a timm
    config.json beside the weights gives the preprocessing."""
    weights, pretrained_cfg = timm_files(path)
    what = f"timm checkpoint {weights.name}"
    converted = convert_timm_state_dict(load_state_dict(weights), preset, num_heads, what=what)
    if pretrained_cfg is not None:
        converted.preprocessing = timm_preprocessing(pretrained_cfg, what)
    return converted
