"""The ResNet+ViT hybrid: the ViT classes of `modeling.py` with a ResNet in front of the patch projection.

Only the tokeniser differs from plain ViT; encoder, heads, attention and outputs are inherited, not copied. This file
travels to the Hub with saved weights, so it uses relative imports only.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.output_capturing import OutputRecorder

from .configuration import HybridVisionTransformerConfig, to_pair
from .modeling import (
    VisionTransformerForImageClassification,
    VisionTransformerForMaskedPatchPrediction,
    VisionTransformerModel,
    VisionTransformerPreTrainedModel,
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

    def forward(self, pixel_values: torch.Tensor, *args, **kwargs) -> HybridModelOutput:
        if kwargs.get("output_hidden_states", self.config.output_hidden_states):
            kwargs.setdefault("output_backbone_hidden_states", True)
        return super().forward(pixel_values, *args, **kwargs)


HybridVisionTransformerPreTrainedModel.encoder_class = HybridVisionTransformerModel


class HybridVisionTransformerForImageClassification(
    HybridVisionTransformerPreTrainedModel, VisionTransformerForImageClassification
):
    """The hybrid with a linear head on the pooled feature."""


class HybridVisionTransformerForMaskedPatchPrediction(
    HybridVisionTransformerPreTrainedModel, VisionTransformerForMaskedPatchPrediction
):
    """The hybrid trained with the paper's masked patch prediction."""
