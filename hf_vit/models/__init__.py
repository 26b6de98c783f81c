"""The model half of hf_vit: configs, models, presets and preprocessing.

Importing it registers the configs and models with the transformers Auto classes and marks them to be saved with
their code (`auto_map`), so saved folders load anywhere with `trust_remote_code=True`, and here without it.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration import HybridVisionTransformerConfig, VisionTransformerConfig
from .modeling import (
    VisionTransformerForImageClassification,
    VisionTransformerForMaskedPatchPrediction,
    VisionTransformerModel,
    VisionTransformerPreTrainedModel,
)
from .modeling_hybrid import (
    HybridVisionTransformerForImageClassification,
    HybridVisionTransformerForMaskedPatchPrediction,
    HybridVisionTransformerModel,
    HybridVisionTransformerPreTrainedModel,
)
from .pos_embed import resize_pos_embed
from .presets import create_config, create_model, list_presets
from .processing import create_image_processor


def _register(config_class, model_class, classification_class) -> None:
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForImageClassification.register(config_class, classification_class, exist_ok=True)
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModel")
    classification_class.register_for_auto_class("AutoModelForImageClassification")


_register(VisionTransformerConfig, VisionTransformerModel, VisionTransformerForImageClassification)
_register(HybridVisionTransformerConfig, HybridVisionTransformerModel, HybridVisionTransformerForImageClassification)

__all__ = [
    "HybridVisionTransformerConfig",
    "HybridVisionTransformerForImageClassification",
    "HybridVisionTransformerForMaskedPatchPrediction",
    "HybridVisionTransformerModel",
    "HybridVisionTransformerPreTrainedModel",
    "VisionTransformerConfig",
    "VisionTransformerForImageClassification",
    "VisionTransformerForMaskedPatchPrediction",
    "VisionTransformerModel",
    "VisionTransformerPreTrainedModel",
    "create_config",
    "create_image_processor",
    "create_model",
    "list_presets",
    "resize_pos_embed",
]
