"""Checkpoint conversion: official JAX (.npz), timm and transformers ViT weights into hf_vit folders.

Each source has a module that reads its layout into a `Converted` (our config, weights and the source's
preprocessing); `common` resizes, replaces the head, checks every name and shape against our model, and writes the
folder atomically; `preprocessing` builds the folder's image processor.

    from hf_vit.tools.convert import convert_checkpoint
    convert_checkpoint("jax", "ViT-B_16.npz", "vit-b16", image_size=384)

Names load lazily, as in `hf_vit`: importing the package (for `SOURCES`, say) imports neither torch nor transformers.
"""

from ...lazy import lazy_names

SOURCES = ("jax", "timm", "transformers")
# Whose preprocessing a converted folder gets: its source's, or hf_vit's (the paper's resize and [-1, 1] scaling).
PREPROCESSING = ("source", "paper")

_EXPORTS = {
    "conversion": ["convert_checkpoint", "load_checkpoint"],
    "common": ["ConversionError", "Converted", "adapt", "build_model", "conversion_card", "read_labels", "save_folder"],
    "jax": ["convert_jax_params", "load_jax"],
    "timm": ["convert_timm_state_dict", "load_timm"],
    "transformers": ["convert_transformers_folder", "load_transformers"],
    "preprocessing": ["Preprocessing"],
}
__getattr__, __dir__, _names = lazy_names(__name__, globals(), _EXPORTS)
__all__ = sorted(["PREPROCESSING", "SOURCES", *_names])
