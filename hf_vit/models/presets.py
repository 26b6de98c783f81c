"""The paper's model table: the one place that names presets and builds configs and models from them."""

from typing import Any

from transformers import AutoModelForImageClassification, PretrainedConfig, PreTrainedModel

from .configuration import HybridVisionTransformerConfig, VisionTransformerConfig

# Widths from Table 1 of the paper; "-Ti" and "-S" from the AugReg follow-up that the official repo ships.
WIDTHS: dict[str, dict[str, int]] = {
    "Ti": {"hidden_size": 192, "intermediate_size": 768, "num_attention_heads": 3, "num_hidden_layers": 12},
    "S": {"hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 6, "num_hidden_layers": 12},
    "B": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12},
    "L": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24},
    "H": {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16, "num_hidden_layers": 32},
}

# name -> (config class, fields). Dropout is the pre-training value of the official configs.
PRESETS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {}


def register_preset(name: str, config_class: type[PretrainedConfig], **fields: Any) -> None:
    """Add a preset; ImageNet's 1000 classes and 224 px unless `fields` say otherwise."""
    PRESETS[name] = (config_class, {"num_labels": 1000, "image_size": 224, **fields})


for _width, _patch, _dropout in [
    ("Ti", 16, 0.0),
    ("S", 16, 0.0),
    ("S", 32, 0.0),
    ("B", 8, 0.0),
    ("B", 16, 0.0),
    ("B", 32, 0.0),
    ("L", 16, 0.1),
    ("L", 32, 0.0),
    ("H", 14, 0.1),
]:
    register_preset(
        f"ViT-{_width}/{_patch}",
        VisionTransformerConfig,
        patch_size=_patch,
        hidden_dropout_prob=_dropout,
        **WIDTHS[_width],
    )

# The paper's hybrids (Table 6) and the AugReg R+Ti/16: a ResNet stride times a patch size of 1 (8 for the stem-only
# R+Ti, whose tokens cover 32 pixels).
for _name, _width, _layers, _patch, _dropout in [
    ("R50+ViT-B/16", "B", (3, 4, 9), 1, 0.1),
    ("R26+ViT-B/32", "B", (2, 2, 2, 2), 1, 0.0),
    ("R26+ViT-S/32", "S", (2, 2, 2, 2), 1, 0.0),
    ("R50+ViT-L/32", "L", (3, 4, 6, 3), 1, 0.1),
    ("R+ViT-Ti/16", "Ti", (), 8, 0.0),
]:
    register_preset(
        _name,
        HybridVisionTransformerConfig,
        resnet_layers=_layers,
        patch_size=_patch,
        hidden_dropout_prob=_dropout,
        **WIDTHS[_width],
    )


def _canonical(name: str) -> str:
    """Match names case-insensitively and with '-' or '_' for '/' ("vit-b-16", "ViT_B_16")."""
    return name.lower().replace("_", "-").replace("/", "-")


def resolve_preset(name: str) -> str:
    """The registered spelling of `name`, or a ValueError that lists the presets."""
    by_key = {_canonical(preset): preset for preset in PRESETS}
    if _canonical(name) not in by_key:
        raise ValueError(f"Unknown preset {name!r}. Available presets: {', '.join(PRESETS)}.")
    return by_key[_canonical(name)]


def list_presets() -> list[str]:
    """Names of all presets, as in the paper."""
    return list(PRESETS)


def create_config(name: str, **overrides: Any) -> PretrainedConfig:
    """The config of preset `name`, with any field overridden (e.g. `num_labels=10, image_size=384`)."""
    config_class, fields = PRESETS[resolve_preset(name)]
    return config_class(**{**fields, **overrides})


def create_model(name: str, attn_implementation: str | None = None, **overrides: Any) -> PreTrainedModel:
    """A freshly initialised image-classification model of preset `name`."""
    config = create_config(name, **overrides)
    return AutoModelForImageClassification.from_config(config, attn_implementation=attn_implementation)
