"""hf_vit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021), plain and hybrid, as Hugging Face models.

The package loads lazily, as transformers does: `import hf_vit` imports nothing heavy, and each name below is
imported when first used (so the scripts answer --help without loading torch). The first use of a model, config or
preset (anything from `hf_vit.models`) registers hf_vit with the transformers Auto classes.
"""

from .lazy import lazy_names

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
__getattr__, __dir__, _names = lazy_names(__name__, globals(), _EXPORTS)
__all__ = sorted(_names)
