"""Moving pre-trained weights to a new resolution or a new label set: what fine-tuning and conversion share.

Both work on a config and a state dict, in place, so conversion can do it before any model exists.
"""

import torch
from transformers import PretrainedConfig

from .models.configuration import to_pair
from .models.pos_embed import resize_pos_embed

POS_EMBED_KEY = "vit.embeddings.position_embeddings"
HEAD_PREFIXES = ("classifier.", "vit.pre_logits.")


def resize_to(
    config: PretrainedConfig,
    state: dict[str, torch.Tensor],
    image_size: int | tuple[int, int] | list[int],
    precision: torch.dtype | None = None,
) -> None:
    """Set `config.image_size` and resize the position embeddings to its token grid with the config's method.

    `config.check()` raises a ValueError for a size the token stride does not divide. `precision` (e.g. float64)
    interpolates in that dtype before casting back, for results that match the official float64 resize.
    """
    old_grid = config.grid_size
    config.image_size = image_size if isinstance(image_size, int) else list(to_pair(image_size))
    config.check()
    pos_embed = state[POS_EMBED_KEY]
    prefix = 1 if config.classifier == "token" else 0
    resized = resize_pos_embed(
        pos_embed.to(precision or pos_embed.dtype), old_grid, config.grid_size, prefix, config.pos_embed_interpolation
    )
    state[POS_EMBED_KEY] = resized.to(pos_embed.dtype)


def replace_head(config: PretrainedConfig, state: dict[str, torch.Tensor], id2label: dict[int, str]) -> None:
    """Drop the head and the representation layer; a zero-initialised head with one output per `id2label` class."""
    dtype = state[POS_EMBED_KEY].dtype
    for key in [key for key in state if key.startswith(HEAD_PREFIXES)]:
        del state[key]
    config.representation_size = None
    config.num_labels = len(id2label)
    config.id2label = dict(id2label)
    config.label2id = {name: index for index, name in id2label.items()}
    state["classifier.weight"] = torch.zeros(len(id2label), config.hidden_size, dtype=dtype)
    state["classifier.bias"] = torch.zeros(len(id2label), dtype=dtype)
