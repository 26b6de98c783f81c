"""The model half of hf_vit: configs, models, presets and preprocessing.

Importing it registers the configs and models with the transformers Auto classes and marks them to be saved with
their code (`auto_map` listing every Auto class), so saved folders load anywhere with `trust_remote_code=True`, and
here without it; `model.push_to_hub` writes hf_vit's card.
"""

import transformers
from transformers import PretrainedConfig, PreTrainedModel

from .configuration import HybridVisionTransformerConfig, VisionTransformerConfig
from .modeling import (
    VisionTransformerBackbone,
    VisionTransformerForImageClassification,
    VisionTransformerForMaskedPatchPrediction,
    VisionTransformerModel,
    VisionTransformerPreTrainedModel,
)
from .modeling_hybrid import (
    HybridVisionTransformerBackbone,
    HybridVisionTransformerForImageClassification,
    HybridVisionTransformerForMaskedPatchPrediction,
    HybridVisionTransformerModel,
    HybridVisionTransformerPreTrainedModel,
)
from .pos_embed import resize_pos_embed
from .presets import create_config, create_model, list_presets
from .processing import create_image_processor


def _reference(cls: type) -> str:
    """How `auto_map` names a class: the file it is saved in (without .py) and the class name."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def _register(config_class: type[PretrainedConfig], **model_classes: type[PreTrainedModel]) -> None:
    """Register `model_classes` with the Auto classes that name them, and write all of them into every `auto_map`.

    transformers' `save_pretrained` copies the saving class's code and adds that class alone to `auto_map`; every
    config of `config_class` starts from the complete map instead (`default_auto_map`), so a folder saved from any of
    these models loads with every Auto class through remote code.
    """
    transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    config_class.register_for_auto_class()
    auto_map = {"AutoConfig": _reference(config_class)}
    for auto_name, model_class in model_classes.items():
        getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)
        auto_map[auto_name] = _reference(model_class)
    config_class.default_auto_map = auto_map


# The masked-patch model goes with AutoModelForMaskedImageModeling: like ViTForMaskedImageModeling it takes
# `pixel_values` and `bool_masked_pos` and swaps masked patch embeddings for a learnt mask token inside the encoder;
# AutoModelForPreTraining holds MAE-style models that drop the masked tokens and decode pixels.
_register(
    VisionTransformerConfig,
    AutoModel=VisionTransformerModel,
    AutoModelForImageClassification=VisionTransformerForImageClassification,
    AutoModelForMaskedImageModeling=VisionTransformerForMaskedPatchPrediction,
    AutoBackbone=VisionTransformerBackbone,
)
_register(
    HybridVisionTransformerConfig,
    AutoModel=HybridVisionTransformerModel,
    AutoModelForImageClassification=HybridVisionTransformerForImageClassification,
    AutoModelForMaskedImageModeling=HybridVisionTransformerForMaskedPatchPrediction,
    AutoBackbone=HybridVisionTransformerBackbone,
)


# `model.push_to_hub(repo_id)` writes hf_vit's model card with the weights, code and processor. Set here because the
# modeling files travel to the Hub and must not import the rest of hf_vit.
def _push_to_hub(self: PreTrainedModel, repo_id: str, **kwargs) -> "CommitInfo":  # noqa: F821
    """`hf_vit.tools.hub.push_model(self, repo_id, ...)`: weights, config with code, processor and hf_vit's card."""
    from ..tools.hub import push_model  # here, not above: the Hub tools import the models

    return push_model(self, repo_id, **kwargs)


VisionTransformerPreTrainedModel.push_to_hub = _push_to_hub

__all__ = [
    "HybridVisionTransformerBackbone",
    "HybridVisionTransformerConfig",
    "HybridVisionTransformerForImageClassification",
    "HybridVisionTransformerForMaskedPatchPrediction",
    "HybridVisionTransformerModel",
    "HybridVisionTransformerPreTrainedModel",
    "VisionTransformerBackbone",
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
