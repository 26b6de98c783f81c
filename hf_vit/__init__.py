"""hf_vit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021), plain and hybrid, as Hugging Face models.

The package loads lazily, as transformers does: `import hf_vit` imports nothing heavy, and each name below is
imported when first used (so the scripts answer --help without loading torch). The first use of a model, config or
preset (anything from `hf_vit.models`) registers hf_vit with the transformers Auto classes.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "models": [
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
    ],
    "loading": ["load_model", "load_image_processor"],
    "tools.hub": ["push_model"],
    "training.arguments": [
        "EvaluationArguments",
        "FewshotArguments",
        "FinetuningArguments",
        "PretrainingArguments",
    ],
    "training.pretraining": ["pretrain"],
    "training.finetuning": ["finetune", "prepare_for_finetuning"],
    "training.evaluation": ["evaluate_classifier"],
    "training.fewshot": ["run_fewshot"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hf_vit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
