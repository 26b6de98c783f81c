"""Configurations of the Vision Transformer and the ResNet+ViT hybrid.

This file travels to the Hub next to saved weights, so it imports nothing from hf_vit.
"""

import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin

CLASSIFIERS = ("token", "gap")
POS_EMBED_INTERPOLATIONS = ("official", "bicubic")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_positive_int(value: object) -> bool:
    return _is_int(value) and value > 0


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool, not a string that reads as one)."""
    return _is_int(value) or (isinstance(value, numbers.Real) and math.isfinite(value))


def _is_size(value: object) -> bool:
    return _is_positive_int(value) or (
        isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_positive_int(side) for side in value)
    )


def _one_of(choices: tuple[str, ...]) -> tuple[Callable[[object], bool], str]:
    return (lambda value: value in choices), f"be one of {choices}"


POSITIVE_INT = (_is_positive_int, "be a positive integer")
PROBABILITY = (lambda value: _is_number(value) and 0 <= value < 1, "be in [0, 1)")
SIZE = (_is_size, "be a positive integer or a [height, width] pair of them")
# field -> (test, what the value must be): every field a config.json or a keyword argument can set wrongly.
FIELD_RULES = {
    "hidden_size": POSITIVE_INT,
    "num_hidden_layers": POSITIVE_INT,
    "num_attention_heads": POSITIVE_INT,
    "intermediate_size": POSITIVE_INT,
    "hidden_act": (
        lambda value: isinstance(value, str) and value in ACT2FN,
        "be a transformers activation: 'gelu' (exact) or 'gelu_pytorch_tanh' (the official JAX models)",
    ),
    "hidden_dropout_prob": PROBABILITY,
    "attention_probs_dropout_prob": PROBABILITY,
    "drop_path_rate": PROBABILITY,
    "initializer_range": (lambda value: _is_number(value) and value >= 0, "be a number >= 0"),
    "layer_norm_eps": (lambda value: _is_number(value) and value > 0, "be a number > 0"),
    "image_size": SIZE,
    "patch_size": SIZE,
    "num_channels": POSITIVE_INT,
    "qkv_bias": (lambda value: isinstance(value, bool), "be true or false"),
    "classifier": _one_of(CLASSIFIERS),
    "representation_size": (lambda value: value is None or _is_positive_int(value), "be a positive integer or None"),
    "pos_embed_interpolation": _one_of(POS_EMBED_INTERPOLATIONS),
}
HYBRID_FIELD_RULES = {
    "resnet_layers": (
        lambda value: isinstance(value, (list, tuple)) and all(_is_positive_int(units) for units in value),
        "hold positive unit counts per stage, e.g. [3, 4, 9] ([] for the stem only)",
    ),
    "resnet_width_factor": POSITIVE_INT,
}


def to_pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return `value` as a (height, width) pair; configs accept one int for square sizes."""
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    height, width = value
    return int(height), int(width)


def resnet_stride(resnet_layers: list[int] | tuple[int, ...]) -> int:
    """Pixels per feature-map cell of the hybrid's ResNet: 4 from the stem, then 2 for every stage after the first."""
    return 4 * 2 ** max(len(resnet_layers) - 1, 0)


def is_hybrid(config: PretrainedConfig) -> bool:
    """Whether `config` describes a hybrid; by field, so it also holds for configs loaded as remote code."""
    return getattr(config, "resnet_layers", None) is not None


class VisionTransformerConfig(BackboneConfigMixin, PretrainedConfig):
    r"""Configuration of a plain ViT ("An Image is Worth 16x16 Words").

    Defaults are ViT-B/16 with the official numerics: LayerNorm eps 1e-6, zero-initialised head.

    Args:
        hidden_size: width D of the token embeddings.
        num_hidden_layers: number of encoder blocks.
        num_attention_heads: heads per attention layer; must divide `hidden_size`.
        intermediate_size: hidden width of the MLP.
        hidden_act: MLP activation; `"gelu"` is exact, `"gelu_pytorch_tanh"` is the tanh approximation that the
            official JAX checkpoints were trained with.
        hidden_dropout_prob: dropout after the position embeddings, the attention output and in the MLP.
        attention_probs_dropout_prob: dropout on the attention weights.
        drop_path_rate: stochastic depth rate of the last block (linearly increasing from 0).
        initializer_range: std of the position-embedding initialisation.
        layer_norm_eps: LayerNorm epsilon.
        image_size: training resolution, an int or (height, width).
        patch_size: side of the square patches, an int or (height, width).
        num_channels: input channels.
        qkv_bias: whether the query/key/value projections have a bias.
        classifier: `"token"` (prepend a class token and read it out) or `"gap"` (mean of all tokens).
        representation_size: width of the pre-logits Dense+tanh layer, or None for no such layer.
        pos_embed_interpolation: how position embeddings are resized for other resolutions: `"official"`
            (bilinear with aligned corners, as `scipy.ndimage.zoom(order=1)` in the official code) or `"bicubic"`
            (as timm and transformers).
        out_features: for the backbone, the `stage_names` whose features it returns; default the last.
        out_indices: the same stages by index into `stage_names` (give one or the other).
        apply_layernorm: whether the backbone passes the encoder's features through its final LayerNorm.
        reshape_hidden_states: whether the backbone returns (batch, hidden, height, width) maps without prefix
            tokens (`True`), or the token sequences (batch, tokens, hidden) with the class token first, as DPT's
            neck reads them (`False`).
    """

    model_type = "hf_vit"
    field_rules = FIELD_RULES
    # Every Auto class the models of this config load with, as `auto_map` references ("module.Class"). hf_vit fills
    # it when it registers the classes (`hf_vit/models/__init__.py`); each new config starts its `auto_map` from it,
    # so a folder saved from any of the models lists all of them. Where this file runs as remote code it stays empty
    # and the `auto_map` of config.json is kept as it is.
    default_auto_map: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-6,
        image_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        num_channels: int = 3,
        qkv_bias: bool = True,
        classifier: str = "token",
        representation_size: int | None = None,
        pos_embed_interpolation: str = "official",
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        apply_layernorm: bool = True,
        reshape_hidden_states: bool = True,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.image_size = list(image_size) if isinstance(image_size, tuple) else image_size
        self.patch_size = list(patch_size) if isinstance(patch_size, tuple) else patch_size
        self.num_channels = num_channels
        self.qkv_bias = qkv_bias
        self.classifier = classifier
        self.representation_size = representation_size
        self.pos_embed_interpolation = pos_embed_interpolation
        self.apply_layernorm = apply_layernorm
        self.reshape_hidden_states = reshape_hidden_states
        auto_map = {**(kwargs.pop("auto_map", None) or {}), **self.default_auto_map}
        super().__init__(**kwargs, **({"auto_map": auto_map} if auto_map else {}))
        self.check()  # first: the backbone's stage names come from the fields it checks
        self.set_output_features_output_indices(out_features, out_indices)

    @property
    def stage_names(self) -> list[str]:
        """The backbone's stages: `"stem"` (the embedded tokens), then `"stage{i}"` after encoder block i."""
        return ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]

    @property
    def token_stride(self) -> tuple[int, int]:
        """Pixels per token along (height, width); the hybrid multiplies in its ResNet stride."""
        return to_pair(self.patch_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The token grid at the configured `image_size`."""
        (height, width), (step_h, step_w) = to_pair(self.image_size), self.token_stride
        return height // step_h, width // step_w

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """As transformers' `from_dict`, then checked: it sets keyword overrides (`from_pretrained(path, key=value)`)
        after `__init__` has checked the fields."""
        loaded = super().from_dict(config_dict, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).check()
        return loaded

    def check(self) -> None:
        """Raise a ValueError that names the field to change when the fields do not make a model."""
        for name, (is_valid, requirement) in self.field_rules.items():
            if not is_valid(getattr(self, name)):
                raise ValueError(f"{name} must {requirement}, got {getattr(self, name)!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}): change one of them."
            )
        height, width = to_pair(self.image_size)
        step_h, step_w = self.token_stride
        if height % step_h or width % step_w:
            raise ValueError(
                f"image_size ({height}x{width}) must be divisible by the token stride ({step_h}x{step_w} pixels per "
                "token): change image_size or patch_size."
            )


class HybridVisionTransformerConfig(VisionTransformerConfig):
    r"""Configuration of the ResNet+ViT hybrid: a BiT ResNet turns the image into the feature map that is tokenised.

    Takes every field of `VisionTransformerConfig`; `patch_size` now cuts the ResNet's feature map (1 for the paper's
    hybrids), so one token covers `token_stride` = ResNet stride × patch size pixels.

    Args:
        resnet_layers: bottleneck units per ResNet stage, e.g. (3, 4, 9) for the R50 trunk of R50+ViT-B/16;
            `()` keeps only the stem (7×7 convolution and max-pool, stride 4).
        resnet_width_factor: multiplies every ResNet width (64 channels in the stem).

    Its `stage_names` start with the ResNet's: `"resnet_stem"` and `"resnet_stage{i}"`.
    """

    model_type = "hf_vit_hybrid"
    field_rules = FIELD_RULES | HYBRID_FIELD_RULES

    def __init__(
        self,
        resnet_layers: tuple[int, ...] | list[int] = (3, 4, 9),
        resnet_width_factor: int = 1,
        patch_size: int | tuple[int, int] = 1,
        **kwargs,
    ):
        self.resnet_layers = list(resnet_layers) if isinstance(resnet_layers, tuple) else resnet_layers
        self.resnet_width_factor = resnet_width_factor
        super().__init__(patch_size=patch_size, **kwargs)

    @property
    def resnet_stride(self) -> int:
        return resnet_stride(self.resnet_layers)

    @property
    def stage_names(self) -> list[str]:
        resnet = ["resnet_stem"] + [f"resnet_stage{index}" for index in range(1, len(self.resnet_layers) + 1)]
        return resnet + super().stage_names

    @property
    def resnet_channels(self) -> int:
        """Channels of the feature map that the ResNet hands to the patch projection."""
        width = 64 * self.resnet_width_factor
        return 4 * width * 2 ** (len(self.resnet_layers) - 1) if self.resnet_layers else width

    @property
    def token_stride(self) -> tuple[int, int]:
        patch_h, patch_w = to_pair(self.patch_size)
        return patch_h * self.resnet_stride, patch_w * self.resnet_stride
