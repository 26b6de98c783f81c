"""What every converter shares: the converted result, strict checks against the target model, and writing it out.

A converter turns a checkpoint into a `Converted` (our config and a state dict in our parameter names). Everything
after that — resizing, a new head, labels, the checks against the model, the output folder — is the same for all
sources and lives here.
"""

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification, BaseImageProcessor, PreTrainedModel

from ...models.configuration import HybridVisionTransformerConfig, VisionTransformerConfig, resnet_stride, to_pair
from ...models.presets import create_config
from ...models.processing import create_image_processor
from ...transfer import replace_head, resize_to
from ..files import file_in_folder
from ..model_card import render_model_card, weight_changes

if TYPE_CHECKING:
    from .preprocessing import Preprocessing

# Fields that define the architecture: a preset must agree with the checkpoint on these.
ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "resnet_layers",
    "resnet_width_factor",
)
# Fields a preset contributes that weights cannot show (the training-time regularisation).
PRESET_ONLY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
BACKBONE = "vit.embeddings.patch_embeddings.backbone."
# The weights of a saved model folder (transformers' save_pretrained, timm's save_for_hf), in the order preferred.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# How a model card names each source layout.
SOURCE_DESCRIPTIONS = {"jax": "official JAX (.npz)", "timm": "timm", "transformers": "transformers ViT"}


# Per encoder layer, the tensors that timm and (after renaming) transformers share with us, besides q/k/v.
LAYER_TENSORS = tuple(
    f"{module}.{kind}"
    for module in ("norm1", "attention.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for kind in ("weight", "bias")
)
# Per ResNet unit, as timm and we name them; the downsample (projection) only where the shape changes.
UNIT_TENSORS = tuple(f"conv{i}.weight" for i in (1, 2, 3)) + tuple(
    f"norm{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")
)
DOWNSAMPLE_TENSORS = ("downsample.conv.weight", "downsample.norm.weight", "downsample.norm.bias")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the keys or shapes at fault."""


@dataclass
class Converted:
    """A checkpoint in our terms: the config, the weights under our names, what was done to them, and how the source
    prepares images (None when the checkpoint does not say)."""

    config: VisionTransformerConfig
    state_dict: dict[str, torch.Tensor]
    source: str
    notes: list[str] = field(default_factory=list)
    preprocessing: "Preprocessing | None" = None


def inside_folder(folder: Path, name: str, named_by: str = "") -> Path:
    """`folder / name` for a file that conversion reads, refused when it lies outside the checkpoint folder."""
    try:
        return file_in_folder(folder, name)
    except ValueError as error:
        raise ConversionError(f"{named_by}{error}; conversion reads only files inside the checkpoint folder.") from None


def format_keys(keys: Iterable[str], limit: int = 8) -> str:
    """A short, sorted list of key names for an error message."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def shape_of(array: Any) -> tuple[int, ...]:
    return tuple(int(size) for size in array.shape)


def to_tensor(array: Any) -> torch.Tensor:
    """A float32 torch tensor from a NumPy array or a tensor (checkpoints may hold fp16/bf16; float32 is exact)."""
    if isinstance(array, torch.Tensor):
        return array.detach().to(torch.float32).contiguous()
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class KeyReader:
    """Hands out a checkpoint's arrays by name and remembers which were used, so that leftovers are reported."""

    def __init__(self, arrays: Mapping[str, Any], what: str):
        self.arrays = dict(arrays)
        self.what = what
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def names(self) -> list[str]:
        return list(self.arrays)

    def take(self, key: str, ndim: int | None = None) -> Any:
        """The array `key`, marked as used; a ConversionError names a missing key or a wrong number of dimensions."""
        if key not in self.arrays:
            raise ConversionError(f"{self.what} is missing the key {key!r}.")
        array = self.arrays[key]
        if ndim is not None and len(array.shape) != ndim:
            raise ConversionError(f"{self.what}: {key!r} has shape {shape_of(array)}, expected {ndim} dimensions.")
        self.used.add(key)
        return array

    def skip(self, key: str) -> None:
        """Mark `key` as deliberately unused."""
        self.used.add(key)

    def finish(self) -> None:
        """Fail if any key was not used: weights the architecture has no place for must not vanish silently."""
        unused = set(self.arrays) - self.used
        if unused:
            raise ConversionError(
                f"{self.what} has unexpected keys that hf_vit's architecture has no place for: {format_keys(unused)}."
            )


def make_config(fields: dict[str, Any], preset: str | None, what: str) -> VisionTransformerConfig:
    """Our config from the fields read off a checkpoint, checked against `preset` when one is named.

    The preset must agree on the architecture; it contributes the dropout rates, which weights cannot show.
    """
    hybrid = "resnet_layers" in fields
    if preset is not None:
        try:
            reference = create_config(preset)
        except ValueError as error:
            raise ConversionError(str(error)) from None
        if hasattr(reference, "resnet_layers") != hybrid:
            kind = "a hybrid" if hybrid else "a plain ViT"
            raise ConversionError(f"{what} is {kind} but preset {preset!r} is not.")
        for name in ARCHITECTURE_FIELDS:
            if name in fields and hasattr(reference, name):
                ours, theirs = _comparable(name, fields[name]), _comparable(name, getattr(reference, name))
                if ours != theirs:
                    raise ConversionError(
                        f"{what} does not match preset {preset!r}: {name} is {ours} in the checkpoint but "
                        f"{theirs} in the preset."
                    )
        fields = {**{name: getattr(reference, name) for name in PRESET_ONLY_FIELDS}, **fields}
    config_class = HybridVisionTransformerConfig if hybrid else VisionTransformerConfig
    try:
        return config_class(**fields)
    except ValueError as error:
        raise ConversionError(f"{what} does not make a valid model: {error}") from None


def _comparable(name: str, value: Any) -> Any:
    """Values in one spelling: patch sizes as (height, width), lists as tuples."""
    if name == "patch_size":
        return to_pair(value)
    return tuple(value) if isinstance(value, list | tuple) else value


def geometry_fields(
    fields: dict[str, Any], grid: tuple[int, int], patch: tuple[int, int], token: bool
) -> dict[str, Any]:
    """Patch size, image size and pooling read off a checkpoint: the image is the token grid times the token stride."""
    (grid_h, grid_w), (patch_h, patch_w) = grid, patch
    stride = resnet_stride(fields["resnet_layers"]) if "resnet_layers" in fields else 1
    height, width = grid_h * patch_h * stride, grid_w * patch_w * stride
    return {
        "patch_size": patch_h if patch_h == patch_w else [patch_h, patch_w],
        "image_size": height if height == width else [height, width],
        "classifier": "token" if token else "gap",
    }


def is_square(number: int) -> bool:
    return number > 0 and int(round(number**0.5)) ** 2 == number


def square_grid(num_tokens: int, what: str) -> tuple[int, int]:
    """The (side, side) grid of `num_tokens` position embeddings; checkpoints do not store non-square grids' shape."""
    if not is_square(num_tokens):
        raise ConversionError(
            f"{what} has {num_tokens} patch position embeddings, which is not a square grid; only square grids "
            "can be read off a checkpoint."
        )
    side = int(round(num_tokens**0.5))
    return side, side


def adapt(
    converted: Converted,
    image_size: int | tuple[int, int] | None = None,
    interpolation: str | None = None,
    num_labels: int | None = None,
    drop_head: bool = False,
    labels: list[str] | None = None,
) -> Converted:
    """Resize for `image_size`, replace the head (`num_labels` / `drop_head`), and name the classes.

    A new head is zero-initialised and the representation (pre-logits) layer is dropped, as for fine-tuning;
    with `labels` and no `num_labels`, the new head has one output per label.
    """
    config = copy.deepcopy(converted.config)
    state = dict(converted.state_dict)
    if interpolation is not None:
        if interpolation not in ("official", "bicubic"):
            raise ConversionError(f"interpolation must be 'official' or 'bicubic', got {interpolation!r}.")
        config.pos_embed_interpolation = interpolation
    if image_size is not None and to_pair(image_size) != to_pair(config.image_size):
        try:
            # In float64, so the only error left is the final rounding (scipy's zoom is float64 too).
            resize_to(config, state, image_size, precision=torch.float64)
        except ValueError as error:
            raise ConversionError(f"Cannot resize to {image_size}: {error}") from None
    has_head = "classifier.weight" in state
    new_head = drop_head or num_labels is not None or (not has_head and labels is not None)
    if new_head:
        count = num_labels if num_labels is not None else len(labels) if labels is not None else config.num_labels
        if count < 1:
            raise ConversionError(f"num_labels must be positive, got {count}.")
        replace_head(config, state, {index: f"LABEL_{index}" for index in range(count)})
    elif not has_head:
        raise ConversionError(
            f"{converted.source} has no classification head; pass num_labels (--num-labels K) to add a new one."
        )
    if labels is not None:
        if len(labels) != config.num_labels:
            raise ConversionError(
                f"{len(labels)} labels were given but the head has {config.num_labels} classes; pass as many labels "
                "as classes (or --num-labels with a new head)."
            )
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: index for index, label in enumerate(labels)}
    notes = converted.notes + weight_changes(converted.config, config, new_head)
    return Converted(config, state, converted.source, notes, converted.preprocessing)


def build_model(converted: Converted) -> PreTrainedModel:
    """Our model with the converted weights, after checking every name and shape against it."""
    model = AutoModelForImageClassification.from_config(converted.config)
    expected = model.state_dict()
    given = converted.state_dict
    missing, unexpected = set(expected) - set(given), set(given) - set(expected)
    if missing:
        raise ConversionError(f"{converted.source} lacks weights the model needs: {format_keys(missing)}.")
    if unexpected:
        raise ConversionError(f"{converted.source} has weights the model has no place for: {format_keys(unexpected)}.")
    wrong = [
        f"{key} {shape_of(given[key])} (model: {shape_of(expected[key])})"
        for key in sorted(given)
        if shape_of(given[key]) != shape_of(expected[key])
    ]
    if wrong:
        raise ConversionError(
            f"{converted.source} has shapes that fit no single architecture: {'; '.join(wrong[:6])}"
            + (f"; ... ({len(wrong)} in all)" if len(wrong) > 6 else "")
        )
    model.load_state_dict(given, strict=True)
    return model.eval()


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a JSON list, a JSON {index: name} dict, or a text file with one name per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"Cannot read the labels file {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return [str(label) for label in data]
    if isinstance(data, dict):
        try:
            by_index = {int(index): str(label) for index, label in data.items()}
        except ValueError:
            raise ConversionError(f"Labels file {path} must map class indices (0, 1, ...) to names.") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise ConversionError(f"Labels file {path} must number its classes 0 to {len(by_index) - 1} without gaps.")
        return [by_index[index] for index in range(len(by_index))]
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ConversionError(f"Labels file {path} holds no labels.")
    return lines


def check_output(output: str | os.PathLike) -> Path:
    """Refuse an output folder that already holds something, before any work is done."""
    output = Path(output)
    if output.exists() and not (output.is_dir() and not any(output.iterdir())):
        raise ConversionError(f"Output {output} already exists and is not an empty folder; choose another.")
    return output


def cached_repo_id(path: str | os.PathLike) -> str | None:
    """The Hub repo a checkpoint was downloaded from, when it lies in the Hugging Face cache, else None.

    The cache keeps `org/name` under a folder `models--org--name` (Hub ids cannot contain "--").
    """
    for part in Path(path).absolute().parts:
        if part.startswith("models--") and len(part) > len("models--"):
            return "/".join(part.removeprefix("models--").split("--"))
    return None


def conversion_card(
    model: PreTrainedModel,
    converted: Converted,
    source: str,
    checkpoint: str | os.PathLike,
    model_id: str | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    preprocessing: tuple[str, str] | None = None,
) -> ModelCard:
    """The converted folder's card: from which checkpoint, and what changed on the way (a resize, a new head).

    `preprocessing` is (what the image processor does, a sentence saying whose preprocessing it is).
    """
    described = f"{SOURCE_DESCRIPTIONS.get(source, source)} checkpoint `{Path(checkpoint).name}`"
    text = f"Converted with hf_vit's `scripts/convert_checkpoint.py` from the {described}"
    text += "." if converted.notes else "; the weights are as in the checkpoint, under hf_vit's names."
    steps, origin = preprocessing or (None, "")
    return render_model_card(
        model,
        source=f"{text} {origin}".strip(),
        changes=converted.notes,
        model_id=model_id,
        base_model=base_model,
        license=license,
        preprocessing=steps,
    )


def save_folder(
    model: PreTrainedModel, card: ModelCard, output: Path, processor: BaseImageProcessor | None = None
) -> Path:
    """Write weights, config, code, image processor (hf_vit's unless `processor` is given) and model card into a
    temporary folder, then move it in place.

    A failure part-way leaves `output` as it was: the temporary folder sits next to it and is removed.
    """
    output = check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model.save_pretrained(staging)
        (processor or create_image_processor(model.config)).save_pretrained(staging)
        card.save(staging / "README.md")
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
