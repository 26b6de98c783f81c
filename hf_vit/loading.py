"""One way to get a model by name: a preset, a saved folder or a Hub repo.

Names that look local (paths, existing folders) or like a preset get an answer at once, without the network: only
a name that can only be a repo id goes to the Hub. Every failure is a ValueError whose message names the model
and the problem (a folder with no model, an unknown preset or model type, an unreadable weights file).
"""

import ast
import json
import os
import re
from pathlib import Path
from typing import Any

from .models.configuration import HybridVisionTransformerConfig
from .models.presets import PRESETS, create_config, resolve_preset

TASKS = ("image-classification", "feature-extraction", "masked-patch", "auto")
PRESET_LIKE = re.compile(r"(r\d*\+)?vit[-_/]", re.IGNORECASE)
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+|[\w.-]+")
HF_VIT_MODEL_TYPES = ("hf_vit", "hf_vit_hybrid")


def is_preset(name: str) -> bool:
    try:
        resolve_preset(name)
    except ValueError:
        return False
    return True


def model_source(name: str) -> str:
    """ "folder", "preset" or "hub" for a --model value; a ValueError when it can be none of them."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"--model {name!r}: the folder holds no model (no config.json); train or convert one into it, or "
                "point at the folder that has the model."
            )
        return "folder"
    if is_preset(name):
        return "preset"
    if PRESET_LIKE.match(name):
        raise ValueError(f"--model {name!r}: unknown preset. Available presets: {', '.join(PRESETS)}.")
    first = Path(name.split("/")[0]).expanduser()
    local = name.startswith((".", "/", "~")) or path.exists() or (first.is_dir() and "/" in name)
    if local or not REPO_ID.fullmatch(name):
        raise ValueError(f"--model {name!r}: no such folder.")
    return "hub"


def parse_overrides(text: str) -> dict[str, Any]:
    """Parse "k=v,k2=v2" with Python literals (never eval): numbers, booleans, None, tuples, strings."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _split_top_level(text))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config-overrides item {item!r} is not key=value.")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return overrides


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so "resnet_layers=(3,4,9),hidden_size=64" has two items."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def check_overrides(config_class: type, overrides: dict[str, Any]) -> None:
    """Refuse fields the config does not have (a typo would be stored silently) and the ones set from the data."""
    from_data = sorted({"num_labels", "id2label", "label2id"} & set(overrides))
    if from_data:
        raise ValueError(f"--config-overrides: {', '.join(from_data)} come from the dataset's classes; remove them.")
    known = set(config_class().to_dict())
    unknown = sorted(key for key in overrides if key not in known)
    if unknown:
        raise ValueError(
            f"--config-overrides: {', '.join(unknown)} {'is not a field' if len(unknown) == 1 else 'are not fields'} "
            f"of {config_class.__name__}."
        )


def label_fields(labels: list[str]) -> dict[str, Any]:
    """The config fields that name a classifier's classes."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: index for index, label in enumerate(labels)},
    }


def _read_config(folder: Path, name: str) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {name!r}: config.json is not readable JSON ({error}).") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in HF_VIT_MODEL_TYPES:
        return config
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING and "auto_map" not in config:
        raise ValueError(
            f"--model {name!r}: config.json has model_type {model_type!r}, which is neither an hf_vit model "
            f"({', '.join(HF_VIT_MODEL_TYPES)}) nor one transformers knows."
        )
    return config


def _model_class(task: str, config) -> Any:
    from transformers import AutoModel, AutoModelForImageClassification

    if task == "auto":
        architectures = getattr(config, "architectures", None) or []
        task = "masked-patch" if any("MaskedPatch" in a for a in architectures) else "image-classification"
        if architectures and not any(
            a.endswith(("ForImageClassification", "MaskedPatchPrediction")) for a in architectures
        ):
            task = "feature-extraction"
    if task == "masked-patch":
        from .models.modeling import VisionTransformerForMaskedPatchPrediction
        from .models.modeling_hybrid import HybridVisionTransformerForMaskedPatchPrediction

        hybrid = isinstance(config, HybridVisionTransformerConfig)
        return HybridVisionTransformerForMaskedPatchPrediction if hybrid else VisionTransformerForMaskedPatchPrediction
    return AutoModel if task == "feature-extraction" else AutoModelForImageClassification


def load_model(
    name: str,
    task: str = "image-classification",
    *,
    config_overrides: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    trust_remote_code: bool = False,
    output_loading_info: bool = False,
):
    """The model `name` names, as the model class for `task`: a fresh preset, or saved weights.

    `task` is "image-classification", "feature-extraction" (the bare encoder), "masked-patch" or "auto" (what the
    folder was saved as). `config_overrides` change config fields (checked: a field the config lacks is an error);
    `labels` give a classifier these classes (a saved head of another size is replaced by a new one). With
    `output_loading_info`, returns (model, info) where info["missing_keys"] lists weights the checkpoint lacked.
    """
    from transformers import AutoConfig

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    overrides = dict(config_overrides or {})
    new_labels = label_fields(labels) if labels is not None else {}
    source = model_source(name)
    if source == "preset":
        check_overrides(PRESETS[resolve_preset(name)][0], overrides)
        config = create_config(name, **overrides, **new_labels)
        model_class = _model_class(task, config)
        model = model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)
        return (model, {"missing_keys": []}) if output_loading_info else model
    if source == "folder":
        _read_config(Path(name).expanduser(), name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        if overrides or new_labels:
            check_overrides(type(config), overrides)
            config = type(config).from_dict({**config.to_dict(), **overrides, **new_labels})
        model, info = _model_class(task, config).from_pretrained(
            name,
            config=config,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            ignore_mismatched_sizes=bool(new_labels),
        )
    except OSError as error:
        where = "the folder" if source == "folder" else "not a local folder, and the Hub"
        raise ValueError(f"--model {name!r}: {where} gave no loadable model ({_first_line(error)}).") from None
    except Exception as error:
        if type(error).__name__ != "SafetensorError":
            raise
        files = ", ".join(sorted(str(p) for p in Path(name).glob("*.safetensors"))) or name
        raise ValueError(f"--model {name!r}: the weights are not readable safetensors ({files}: {error}).") from None
    return (model, info) if output_loading_info else model


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_image_processor(name: str, config, trust_remote_code: bool = False):
    """The image processor saved with `name`, or the paper's preprocessing for an hf_vit `config`."""
    from transformers import AutoImageProcessor

    from .models.processing import create_image_processor

    saved = Path(name).expanduser() / "preprocessor_config.json"
    if model_source_is_local(name) and not saved.is_file():
        return create_image_processor(config)
    try:
        return AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError:
        if not hasattr(config, "grid_size"):
            raise ValueError(f"--model {name!r} has no image processor (preprocessor_config.json).") from None
        return create_image_processor(config)


def model_source_is_local(name: str) -> bool:
    return os.path.isdir(os.path.expanduser(name)) or is_preset(name)
