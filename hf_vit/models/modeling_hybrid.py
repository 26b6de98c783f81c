"""The ResNet+ViT hybrid: the ViT classes of `modeling.py` with a ResNet in front of the patch projection.

Only the tokeniser differs from plain ViT; encoder, heads, attention and outputs are inherited, not copied. This file
travels to the Hub with saved weights, so it uses relative imports only.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput, MaskedLMOutput
from transformers.utils import TransformersKwargs
from transformers.utils.output_capturing import OutputRecorder
from typing_extensions import Unpack

from .configuration import HybridVisionTransformerConfig, to_pair
from .modeling import (
    IntermediateFeatures,
    VisionTransformerBackbone,
    VisionTransformerForImageClassification,
    VisionTransformerForMaskedPatchPrediction,
    VisionTransformerModel,
    VisionTransformerPreTrainedModel,
    feature_indices,
)
from .resnet import BottleneckUnit, ResNetBackbone, ResNetStage, ResNetStem, StdConv2d


class HybridPatchEmbeddings(nn.Module):
    """ResNet feature map, cut into `patch_size` patches (1×1 in the paper) and projected to `hidden_size`."""

    def __init__(self, config: HybridVisionTransformerConfig):
        super().__init__()
        patch = to_pair(config.patch_size)
        self.backbone = ResNetBackbone(config)
        self.projection = nn.Conv2d(config.resnet_channels, config.hidden_size, kernel_size=patch, stride=patch)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the token map (batch, hidden, grid_h, grid_w)."""
        return self.projection(self.backbone(pixel_values))


@dataclass
class HybridModelOutput(BaseModelOutputWithPooling):
    r"""backbone_hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
    the ResNet's stem output (stride 4) and each stage's output, (batch, channels, height, width), for dense tasks.
    """

    backbone_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class HybridImageClassifierOutput(ImageClassifierOutput):
    r"""backbone_hidden_states: the ResNet's stem and stage outputs, as `HybridModelOutput`."""

    backbone_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class HybridMaskedLMOutput(MaskedLMOutput):
    r"""backbone_hidden_states: the ResNet's stem and stage outputs, as `HybridModelOutput`."""

    backbone_hidden_states: tuple[torch.FloatTensor, ...] | None = None


class HybridVisionTransformerPreTrainedModel(VisionTransformerPreTrainedModel):
    """The ViT base class with the hybrid's config, tokeniser and ResNet initialisation."""

    config_class = HybridVisionTransformerConfig
    config: HybridVisionTransformerConfig
    patch_embeddings_class = HybridPatchEmbeddings

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """LeCun-normal convolutions, unit GroupNorms except the last of each unit, which starts at zero."""
        super()._init_weights(module)
        if isinstance(module, StdConv2d):
            init.lecun_normal_(module.weight)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BottleneckUnit):
            init.zeros_(module.norm3.weight)
        elif isinstance(module, HybridPatchEmbeddings):
            init.lecun_normal_(module.projection.weight)
            init.zeros_(module.projection.bias)


class HybridVisionTransformerModel(HybridVisionTransformerPreTrainedModel, VisionTransformerModel):
    """The bare hybrid encoder; `output_hidden_states=True` also returns the ResNet's stage outputs."""

    output_class = HybridModelOutput
    _can_record_outputs = {
        **VisionTransformerModel._can_record_outputs,
        "backbone_hidden_states": [
            OutputRecorder(ResNetStem, capture_initial_hidden_state=False),
            OutputRecorder(ResNetStage, capture_initial_hidden_state=False),
        ],
    }

    def forward(self, pixel_values: torch.Tensor, *args, **kwargs: Unpack[TransformersKwargs]) -> HybridModelOutput:
        if kwargs.get("output_hidden_states", self.config.output_hidden_states):
            kwargs.setdefault("output_backbone_hidden_states", True)
        return super().forward(pixel_values, *args, **kwargs)

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        resnet_indices: int | Sequence[int] = (),
        **kwargs: Unpack[TransformersKwargs],
    ) -> IntermediateFeatures:
        r"""`VisionTransformerModel.forward_intermediates`, and ResNet maps as features too (`resnet_features`).

        `resnet_indices` picks them as `indices` picks tokens: 0 is the stem (stride 4), i the output of stage i,
        negative ones count from the end, an int n takes the last n stages. The whole ResNet always runs.
        """
        resnet = self.embeddings.patch_embeddings.backbone
        units = [resnet.stem, *resnet.stages]
        take = feature_indices(resnet_indices, len(units), "resnet_indices")
        if kwargs.get("output_hidden_states", self.config.output_hidden_states):
            kwargs.setdefault("output_backbone_hidden_states", True)
        # Hooks for this call only: the output-capturing hooks can be installed twice when a model that captures
        # outputs itself (DPT) holds the backbone, and would then return every map twice.
        maps: dict[int, torch.Tensor] = {}
        hooks = [
            units[index].register_forward_hook(lambda _, __, output, index=index: maps.__setitem__(index, output))
            for index in set(take)
        ]
        try:
            output = super().forward_intermediates(pixel_values, indices, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        return replace(output, resnet_features=tuple(maps[index] for index in take)) if take else output


HybridVisionTransformerPreTrainedModel.encoder_class = HybridVisionTransformerModel


class HybridVisionTransformerForImageClassification(
    HybridVisionTransformerPreTrainedModel, VisionTransformerForImageClassification
):
    """The hybrid with a linear head on the pooled feature."""

    output_class = HybridImageClassifierOutput


class HybridVisionTransformerForMaskedPatchPrediction(
    HybridVisionTransformerPreTrainedModel, VisionTransformerForMaskedPatchPrediction
):
    """The hybrid trained with the paper's masked patch prediction."""

    output_class = HybridMaskedLMOutput


class HybridVisionTransformerBackbone(HybridVisionTransformerPreTrainedModel, VisionTransformerBackbone):
    """The hybrid as a transformers backbone: `VisionTransformerBackbone` whose stages start with the ResNet's.

    "resnet_stem" (stride 4) and "resnet_stage{i}" are the ResNet's maps (never normalised or flattened), then come
    the token stages "stem", "stage1", ... With only ResNet stages asked for, no encoder block runs.
    """

    def __init__(self, config: HybridVisionTransformerConfig):
        super().__init__(config)
        width = 64 * config.resnet_width_factor
        resnet = [width] + [4 * width * 2**index for index in range(len(config.resnet_layers))]
        self.num_features = resnet + self.num_features[len(resnet) :]

    def stage_indices(self) -> dict[str, list[int]]:
        count = len(self.config.resnet_layers) + 1
        chosen = super().stage_indices()["indices"]
        return {
            "resnet_indices": [index for index in chosen if index < count],
            "indices": [index - count for index in chosen if index >= count],
        }
