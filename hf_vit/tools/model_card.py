"""Model cards (README.md) for saved and shared models, rendered from the templates in `hf_vit/tools/model_cards/`.

The pre-training, fine-tuning and conversion code call `render_model_card` to write README.md next to the weights;
`hf_vit.hub.push_model` writes one when a folder has none.
"""

import html
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModel, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel

from ..models.configuration import is_hybrid, to_pair
from ..models.presets import PRESETS

TEMPLATES = Path(__file__).parent / "model_cards"
TAGS = ["vision-transformer", "image-classification", "hf_vit", "custom_code"]
ACTIVATIONS = {"gelu": "exact GELU", "gelu_pytorch_tanh": "GELU (tanh approximation, as the official JAX models)"}
RESIZES = {"official": "bilinearly with aligned corners (the official code)", "bicubic": "bicubically (as timm)"}
# Preset fields that are not architecture: a fine-tuned ViT-B/16 at 384 px with 10 classes is still "ViT-B/16".
NOT_ARCHITECTURE = {"num_labels", "image_size", "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"}
# What a card says instead of a dataset's local path, which would publish the layout of the machine it was trained on.
LOCAL_DATASET = "local dataset"
MARKDOWN_MARKUP = re.compile(r"([\\`*\[\]|])")


def is_repo_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repo id ("org/name" or "name", without `..`, `--` or a leading dot)."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_id(name: str) -> str | None:
    """`name` when it reads as a Hub repo id ("org/name" or "name") and is not a local path, else None.

    Only Hub ids belong in a card's `base_model` and `datasets` metadata; a local folder of the same shape
    (e.g. "outputs/pretrain") is what the scripts loaded when it exists, so it is not one.
    """
    return name if is_repo_id(name) and not os.path.exists(name) else None


def is_local_path(name: str) -> bool:
    """Whether `name` is a path on this machine (it exists, or it has a path separator or `~` and is no Hub id)."""
    return os.path.exists(name) or (hub_id(name) is None and (name.startswith("~") or "/" in name or "\\" in name))


def public_dataset_name(name: str) -> str:
    """`name` as a card may publish it: Hub ids and plain names as they are, local paths as LOCAL_DATASET."""
    return LOCAL_DATASET if is_local_path(name) else name


def table_text(text: Any) -> str:
    """`text` as literal text in one cell of a Markdown table: one line, its Markdown markup and HTML escaped.

    Label names and split names come from datasets; raw, a `|` or a newline breaks the table and a `<script>` is HTML
    in the README.
    """
    return html.escape(MARKDOWN_MARKUP.sub(r"\\\1", " ".join(str(text).splitlines())), quote=False)


def card_name(model_id: str) -> str:
    """The card's title: the name of a Hub repo or of a local folder, not the path of the machine that wrote the card
    (`# /tmp/run/ft`)."""
    name = re.split(r"[\\/]", model_id.rstrip("/\\"))[-1]
    return Path(model_id).expanduser().resolve().name if name in ("", ".", "..", "~") else name


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal after this (configs store pairs as lists once saved)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def find_preset(config: PretrainedConfig) -> str | None:
    """The paper's name of the architecture (e.g. "ViT-B/16"), or None for a custom one."""
    for name, (config_class, fields) in PRESETS.items():
        if type(config) is not config_class:
            continue
        architecture = {k: v for k, v in fields.items() if k not in NOT_ARCHITECTURE}
        if all(_plain(getattr(config, k, None)) == _plain(v) for k, v in architecture.items()):
            return name
    return None


def is_classifier(model_or_config: PreTrainedModel | PretrainedConfig) -> bool:
    """Whether it is (or its saved `architectures` name) an image classifier rather than a bare encoder."""
    if isinstance(model_or_config, PreTrainedModel):
        return type(model_or_config).__name__.endswith("ForImageClassification")
    architectures = getattr(model_or_config, "architectures", None) or ["ForImageClassification"]
    return architectures[0].endswith("ForImageClassification")


def count_parameters(model_or_config: PreTrainedModel | PretrainedConfig) -> int:
    """Parameters of the model, or of the model a config builds (on the meta device: no memory, no init)."""
    if isinstance(model_or_config, PreTrainedModel):
        return sum(p.numel() for p in model_or_config.parameters())
    auto_class = AutoModelForImageClassification if is_classifier(model_or_config) else AutoModel
    with torch.device("meta"):
        model = auto_class.from_config(model_or_config)
    return sum(p.numel() for p in model.parameters())


def _size(value) -> str:
    height, width = to_pair(value)
    return f"{height}×{width}"


def weight_changes(before: PretrainedConfig, after: PretrainedConfig, new_head: bool) -> list[str]:
    """The card's `changes` when a model is adapted from `before` to `after` (fine-tuning or conversion)."""
    changes = []
    if tuple(before.grid_size) != tuple(after.grid_size):
        changes.append(
            f"Position embeddings resized from {_size(before.image_size)} px ({_size(before.grid_size)} tokens) to "
            f"{_size(after.image_size)} px ({_size(after.grid_size)} tokens) with the "
            f"{after.pos_embed_interpolation} interpolation."
        )
    if new_head:
        dropped = "; the representation (pre-logits) layer dropped" if before.representation_size else ""
        changes.append(f"New zero-initialised head with {after.num_labels} classes{dropped}.")
    return changes


def _eval_results(results: Mapping[str, float], dataset: str, split: str) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric,
            metric_name=metric,
            metric_value=float(value),
        )
        for metric, value in results.items()
    ]


def render_model_card(
    model_or_config: PreTrainedModel | PretrainedConfig,
    *,
    source: str,
    changes: list[str] | None = None,
    model_id: str | None = None,
    datasets: str | list[str] | None = None,
    base_model: str | None = None,
    results: Mapping[str, float] | None = None,
    results_dataset: str | None = None,
    results_split: str = "validation",
    license: str = "apache-2.0",
    preprocessing: str | None = None,
    adapter_base: str | None = None,
) -> ModelCard:
    """The model card of a ViT or hybrid: Hub metadata, architecture, origin, evaluation, usage, limits, citation.

    Args:
        model_or_config: the model (its parameters are counted) or its config (counted on the meta device).
        source: one or more sentences on where the weights come from, e.g. "Pre-trained from scratch on ... for
            N steps with hf_vit's scripts/pretrain.py" or "Converted from the official checkpoint ...".
        changes: what was done to the weights on the way, one sentence each (position embeddings resized, a new
            head), listed under the source.
        model_id: the Hub repo id (or folder) that the loading examples use.
        datasets: Hub dataset ids (or names) the model was trained on; only Hub ids go into the metadata, and local
            paths are published as "local dataset".
        base_model: the Hub id of the model it was fine-tuned or converted from.
        results: metric name -> value (e.g. {"accuracy": 0.81}), written as the card's `model-index`.
        results_dataset: the dataset those results are on; defaults to the first of `datasets`. A local path is
            published as "local dataset".
        results_split: the split those results are on.
        license: an SPDX-style license id for the weights.
        preprocessing: what the image processor does to an image, when it is not hf_vit's (a resize to the
            model's size and scaling to [-1, 1]).
        adapter_base: makes the card a PEFT LoRA adapter's: the subfolder holding the model it adapts (whose
            architecture the card describes).
    """
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    results = dict(results or {})
    results_dataset = results_dataset or (datasets[0] if datasets else None)
    if results and results_dataset is None:
        raise ValueError("results need the dataset they were measured on: pass datasets=[...] or results_dataset=.")
    results_dataset = results_dataset and public_dataset_name(results_dataset)
    classifier = is_classifier(model_or_config)
    task = "image-classification" if classifier else "image-feature-extraction"
    preset = find_preset(config)
    family = "ResNet+ViT hybrid" if is_hybrid(config) else "ViT"
    architecture_name = preset or f"Custom {family}"
    model_name = card_name(model_id) if model_id else architecture_name
    card_data = ModelCardData(
        library_name="peft" if adapter_base else "transformers",
        pipeline_tag=task,
        tags=TAGS
        + (["hybrid", "resnet"] if is_hybrid(config) else [])
        + ([] if classifier else [task])
        + (["lora", "peft"] if adapter_base else []),
        license=license,
        datasets=[name for name in datasets if hub_id(name)] or None,
        base_model=base_model,
        model_name=model_name if results else None,
        eval_results=_eval_results(results, results_dataset, results_split) if results else None,
        metrics=list(results) or None,
    )
    params = count_parameters(model_or_config)
    grid = config.grid_size
    labels = [table_text(config.id2label[i]) for i in sorted(config.id2label)] if classifier else []
    facts = {
        "title": model_name,
        "model_id": model_id or "path/to/model",
        "architecture_name": architecture_name,
        "task": task,
        "auto_class": "AutoModelForImageClassification" if classifier else "AutoModel",
        "params": params,
        "params_text": f"{params / 1e6:.1f} M" if params >= 100_000 else f"{params:,}",
        "image_size": _size(config.image_size),
        "patch_size": _size(config.patch_size),
        "token_stride": _size(config.token_stride),
        "grid": f"{grid[0]}×{grid[1]}",
        "num_tokens": grid[0] * grid[1] + (1 if config.classifier == "token" else 0),
        "num_labels": len(labels),
        "labels_preview": ", ".join(labels[:10]) + (f", … ({len(labels)} in all)" if len(labels) > 10 else ""),
        "results": [
            {"dataset": table_text(results_dataset), "split": table_text(results_split), "metric": table_text(k)}
            | {"value": f"{v:.4g}"}
            for k, v in results.items()
        ],
        "source": source.strip(),
        "changes": list(changes or []),
        "datasets": [public_dataset_name(name) for name in datasets],
        "base_model": base_model,
        **{k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers")},
        **{k: getattr(config, k) for k in ("num_attention_heads", "num_channels", "classifier")},
        "representation_size": config.representation_size,
        "activation": ACTIVATIONS.get(config.hidden_act, config.hidden_act),
        "pos_embed_resize": RESIZES[config.pos_embed_interpolation],
        "preprocessing": preprocessing or "scaled to [-1, 1]",
        "adapter_base": adapter_base,
    }
    if is_hybrid(config):
        facts |= {
            "resnet_layers": "/".join(map(str, config.resnet_layers)),
            "resnet_width_factor": config.resnet_width_factor,
            "resnet_stride": config.resnet_stride,
        }
    template = TEMPLATES / ("hybrid.md" if is_hybrid(config) else "vit.md")
    return ModelCard.from_template(card_data, template_path=str(template), **facts)
