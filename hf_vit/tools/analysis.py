"""The paper's analyses of what a ViT learns (Section 4.5, Figures 6 and 7), as plain tensors.

The computations take tensors plus the token stride in pixels (`config.token_stride`), never a particular embedding
module, so the same code serves plain ViT and the hybrid (whose tokens are ResNet features with a larger stride);
only the filter PCA needs pixel filters and is skipped for the hybrid. Pictures are drawn by
`hf_vit.plotting`; nothing here imports matplotlib.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..models.configuration import to_pair

# Patch-to-patch attention weights are renormalised to sum to one per query (the weight on the class token is dropped),
# so that a head that parks most of its attention on the class token still reports where its patch attention goes.
PREFIX_HANDLING = "prefix (class) token rows and columns dropped; patch-to-patch weights renormalised per query"


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each input token.

    Per layer the heads are averaged, the identity is added for the residual connection and rows are renormalised;
    the layers are then multiplied in order. `attentions` are (batch, heads, tokens, tokens) per layer; the result
    is (batch, tokens, tokens) with rows summing to one.
    """
    if not attentions:
        raise ValueError("attention_rollout needs the attention weights of at least one layer.")
    rollout = None
    for weights in attentions:
        if weights.ndim != 4 or weights.shape[-1] != weights.shape[-2]:
            raise ValueError(f"attention weights must be (batch, heads, tokens, tokens), got {tuple(weights.shape)}.")
        mixed = weights.double().mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout.float()


def rollout_map(rollout: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """The image-level rollout over the patch grid, (batch, grid_h, grid_w), summing to one per image.

    With a class token its row is read (what the classifier sees); without one (`classifier="gap"`) the pooled
    feature is the mean of all tokens, so the rows are averaged. The map is all zeros when the read-out draws on no
    patch at all (identity attention with a class token).
    """
    grid_h, grid_w = grid
    if rollout.shape[-1] != num_prefix_tokens + grid_h * grid_w:
        raise ValueError(
            f"rollout has {rollout.shape[-1]} tokens but {num_prefix_tokens} prefix tokens and a {grid_h}x{grid_w} "
            f"grid make {num_prefix_tokens + grid_h * grid_w}."
        )
    readout = rollout[:, 0] if num_prefix_tokens else rollout.mean(dim=1)
    patches = readout[:, num_prefix_tokens:]
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(patches.dtype).tiny)
    return patches.reshape(-1, grid_h, grid_w)


def patch_distances(grid: tuple[int, int], token_stride: int | tuple[int, int]) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every pair of patches, (grid_h*grid_w, grid_h*grid_w)."""
    step_h, step_w = to_pair(token_stride)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten() * step_h, cols.flatten() * step_w], dim=-1).double()
    return torch.cdist(centres, centres)


def mean_attention_distance(
    attentions: Sequence[torch.Tensor],
    grid: tuple[int, int],
    token_stride: int | tuple[int, int],
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Mean attention distance in pixels per layer and head (Figure 7, right): (layers, heads).

    For each query patch, the attention-weighted distance to the key patches, averaged over query patches and over
    the batch; the "receptive field size" of a head. See `PREFIX_HANDLING` for the class token.
    """
    distances = patch_distances(grid, token_stride)
    num_patches = distances.shape[0]
    result = []
    for weights in attentions:
        if weights.shape[-1] != num_prefix_tokens + num_patches:
            raise ValueError(
                f"attention over {weights.shape[-1]} tokens does not match {num_prefix_tokens} prefix tokens and a "
                f"{grid[0]}x{grid[1]} grid."
            )
        patch_weights = weights[..., num_prefix_tokens:, num_prefix_tokens:].double()
        patch_weights = patch_weights / patch_weights.sum(dim=-1, keepdim=True).clamp(
            min=torch.finfo(torch.double).tiny
        )
        per_query = (patch_weights * distances.to(patch_weights.device)).sum(dim=-1)
        result.append(per_query.mean(dim=(0, 2)))
    return torch.stack(result).float()


def position_embedding_similarity(
    position_embeddings: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0
) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other one (Figure 7, centre).

    `position_embeddings` is (prefix + grid_h*grid_w, D), optionally with a leading batch dimension of one; the
    result is (grid_h, grid_w, grid_h, grid_w): entry [i, j] is the similarity map of patch (i, j).
    """
    embeddings = position_embeddings.detach().reshape(-1, position_embeddings.shape[-1]).double()
    grid_h, grid_w = grid
    if embeddings.shape[0] != num_prefix_tokens + grid_h * grid_w:
        raise ValueError(
            f"{embeddings.shape[0]} position embeddings do not match {num_prefix_tokens} prefix tokens and a "
            f"{grid_h}x{grid_w} grid."
        )
    patches = nn.functional.normalize(embeddings[num_prefix_tokens:], dim=-1)
    return (patches @ patches.T).reshape(grid_h, grid_w, grid_h, grid_w).float()


@dataclass
class FilterComponents:
    """Principal components of the patch-embedding filters, shaped as filters (components, channels, ph, pw)."""

    components: torch.Tensor
    explained_variance_ratio: torch.Tensor
    singular_values: torch.Tensor = field(repr=False)


def filter_principal_components(weight: torch.Tensor, num_components: int = 28) -> FilterComponents:
    """The leading principal components of the linear patch embedding (Figure 7, left).

    Each of the D rows of the (D, C, ph, pw) kernel is one sample; rows are centred and the right singular vectors
    of the centred matrix are the components, unit-norm and orthogonal. The sign of each is fixed so that its
    largest-magnitude entry is positive, which makes the result deterministic.
    """
    if weight.ndim != 4:
        raise ValueError(
            f"patch-embedding filters must be (hidden, channels, height, width), got {tuple(weight.shape)}."
        )
    samples = weight.detach().flatten(1).double()
    samples = samples - samples.mean(dim=0, keepdim=True)
    _, singular, right = torch.linalg.svd(samples, full_matrices=False)
    count = min(num_components, right.shape[0])
    components = right[:count]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * signs
    variance = singular**2
    ratio = variance[:count] / variance.sum().clamp(min=torch.finfo(torch.double).tiny)
    return FilterComponents(
        components=components.reshape(count, *weight.shape[1:]).float(),
        explained_variance_ratio=ratio.float(),
        singular_values=singular[:count].float(),
    )


def base_model(model: nn.Module) -> nn.Module:
    """The encoder (a `VisionTransformerModel`) of any hf_vit model, or the model itself if it is one."""
    encoder = getattr(model, "vit", model)
    if not hasattr(encoder, "embeddings") or not hasattr(encoder.embeddings, "num_prefix_tokens"):
        raise ValueError(f"{type(model).__name__} is not an hf_vit model: it has no ViT embeddings to analyse.")
    return encoder


def pixel_filters(model: nn.Module) -> torch.Tensor:
    """The patch-embedding kernel (D, C, ph, pw) when it acts on pixels; a ValueError saying why when it does not."""
    patch_embeddings = base_model(model).embeddings.patch_embeddings
    if hasattr(patch_embeddings, "backbone"):
        raise ValueError(
            "the patch-embedding filters are not shown for a hybrid model: its projection sees ResNet features, "
            "not pixels."
        )
    projection = getattr(patch_embeddings, "projection", None)
    if not isinstance(projection, nn.Conv2d):
        raise ValueError(f"{type(patch_embeddings).__name__} has no convolutional projection of pixels to show.")
    return projection.weight.detach()


def _rounded(tensor: torch.Tensor, decimals: int = 6) -> list:
    """Nested lists rounded to `decimals`: float32 holds no more, and the JSON stays a third of the size."""
    return np.round(tensor.double().numpy(), decimals).tolist()


@dataclass
class AnalysisResult:
    """Everything the analysis computes for one model and a batch of images."""

    grid: tuple[int, int]
    token_stride: tuple[int, int]
    num_prefix_tokens: int
    rollout_maps: torch.Tensor
    attention_distance: torch.Tensor
    position_similarity: torch.Tensor
    filters: FilterComponents | None
    filters_note: str | None

    def to_json(self) -> dict:
        """Plain lists and numbers, for `json.dump`."""
        filters: dict = {"skipped": self.filters_note}
        if self.filters is not None:
            filters = {
                "shape": list(self.filters.components.shape),
                "components": _rounded(self.filters.components),
                "explained_variance_ratio": _rounded(self.filters.explained_variance_ratio),
            }
        layers, heads = self.attention_distance.shape
        return {
            "grid": list(self.grid),
            "token_stride": list(self.token_stride),
            "num_prefix_tokens": self.num_prefix_tokens,
            "attention_rollout": _rounded(self.rollout_maps),
            "mean_attention_distance": {
                "pixels": _rounded(self.attention_distance),
                "layers": layers,
                "heads": heads,
                "prefix_handling": PREFIX_HANDLING,
            },
            "position_embedding_similarity": _rounded(self.position_similarity),
            "patch_embedding_filters": filters,
        }


@torch.no_grad()
def analyze(model: nn.Module, pixel_values: torch.Tensor, num_components: int = 28) -> AnalysisResult:
    """Run `model` on `pixel_values` (batch, channels, height, width) and compute all of the paper's analyses."""
    encoder = base_model(model)
    config = encoder.config
    stride = to_pair(config.token_stride)
    height, width = pixel_values.shape[-2:]
    if height % stride[0] or width % stride[1]:
        raise ValueError(f"image size {height}x{width} is not divisible by the token stride {stride[0]}x{stride[1]}.")
    grid = (height // stride[0], width // stride[1])
    prefix = encoder.embeddings.num_prefix_tokens
    was_training = model.training
    model.eval()
    try:
        dtype = encoder.embeddings.position_embeddings.dtype
        outputs = encoder(pixel_values.to(dtype), interpolate_pos_encoding=True, output_attentions=True)
    finally:
        model.train(was_training)
    attentions = outputs.attentions
    if not attentions:
        raise ValueError(f"{type(model).__name__} returned no attention weights with output_attentions=True.")
    try:
        filters, note = filter_principal_components(pixel_filters(model).cpu(), num_components), None
    except ValueError as error:
        filters, note = None, str(error)
    return AnalysisResult(
        grid=grid,
        token_stride=stride,
        num_prefix_tokens=prefix,
        rollout_maps=rollout_map(attention_rollout(attentions), prefix, grid).cpu(),
        attention_distance=mean_attention_distance(attentions, grid, stride, prefix).cpu(),
        position_similarity=position_embedding_similarity(
            encoder.embeddings.position_embeddings, config.grid_size, prefix
        ).cpu(),
        filters=filters,
        filters_note=note,
    )
