"""hf_vit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021), plain and hybrid, as Hugging Face models.

Importing the package registers the configs and models with the transformers Auto classes and marks them to be
saved with their code (`auto_map`), so saved folders load anywhere with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .models.configuration import HybridVisionTransformerConfig, VisionTransformerConfig
from .models.modeling import (
    VisionTransformerForImageClassification,
    VisionTransformerForMaskedPatchPrediction,
    VisionTransformerModel,
    VisionTransformerPreTrainedModel,
)
from .models.modeling_hybrid import (
    HybridVisionTransformerForImageClassification,
    HybridVisionTransformerForMaskedPatchPrediction,
    HybridVisionTransformerModel,
    HybridVisionTransformerPreTrainedModel,
)
from .models.pos_embed import resize_pos_embed
from .models.presets import create_config, create_model, list_presets
from .models.processing import create_image_processor

__version__ = "0.1.0"


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
