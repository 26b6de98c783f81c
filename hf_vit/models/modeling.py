"""The Vision Transformer: patch embeddings, the pre-LN encoder and the task heads.

One encoder serves plain ViT and the hybrid: they differ only in the module that turns pixels into tokens
(`patch_embeddings_class`). This file travels to the Hub with saved weights, so it uses relative imports only.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    MaskedLMOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs
from typing_extensions import Unpack

from .configuration import VisionTransformerConfig, to_pair
from .pos_embed import resize_pos_embed


def check_pixel_values(
    pixel_values: torch.Tensor,
    num_channels: int,
    image_size: tuple[int, int],
    token_stride: tuple[int, int],
    interpolate: bool,
) -> None:
    """Fail early, naming the problem, instead of deep inside a convolution or an addition."""
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}."
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels but the model expects {num_channels} channels."
        )
    height, width = pixel_values.shape[-2:]
    step_h, step_w = token_stride
    if not interpolate and (height, width) != image_size:
        expected = "x".join(map(str, image_size))
        raise ValueError(
            f"Input image size ({height}x{width}) doesn't match model image size ({expected}); "
            "pass interpolate_pos_encoding=True to run at another resolution."
        )
    if height % step_h or width % step_w:
        raise ValueError(
            f"Input image size ({height}x{width}) must be divisible by the token stride ({step_h}x{step_w})."
        )


class PatchEmbeddings(nn.Module):
    """Cuts the image into non-overlapping patches and projects each to `hidden_size` (a strided convolution)."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        patch = to_pair(config.patch_size)
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=patch, stride=patch)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the token map (batch, hidden, grid_h, grid_w)."""
        return self.projection(pixel_values)


class VisionTransformerEmbeddings(nn.Module):
    """Tokens from pixels, the class token (for `classifier="token"`) and learned 1-D position embeddings."""

    def __init__(self, config: VisionTransformerConfig, patch_embeddings: nn.Module, use_mask_token: bool = False):
        super().__init__()
        # The geometry, read once: config properties are slow to query on every forward.
        self.num_channels = config.num_channels
        self.image_size = to_pair(config.image_size)
        self.token_stride = config.token_stride
        self.grid_size = config.grid_size
        self.pos_embed_interpolation = config.pos_embed_interpolation
        self.patch_embeddings = patch_embeddings
        self.num_prefix_tokens = 1 if config.classifier == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if self.num_prefix_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_mask_token else None
        grid_h, grid_w = self.grid_size
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + grid_h * grid_w, config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
        source_patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed `pixel_values`, corrupting patch tokens for masked patch prediction.

        `source_patches` (batch, tokens) picks, for each position, the patch of the same image whose embedding it gets
        (the identity leaves tokens unchanged); then positions set in `bool_masked_pos` get the mask token. Both keep
        every shape fixed, so the corruption compiles once under XLA.
        """
        check_pixel_values(
            pixel_values, self.num_channels, self.image_size, self.token_stride, interpolate_pos_encoding
        )
        tokens = self.patch_embeddings(pixel_values)
        grid = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        if source_patches is not None:
            tokens = tokens.gather(1, source_patches.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs a model built with use_mask_token=True.")
            tokens = torch.where(bool_masked_pos.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        pos_embed = resize_pos_embed(
            self.position_embeddings, self.grid_size, tuple(grid), self.num_prefix_tokens, self.pos_embed_interpolation
        )
        return self.dropout(tokens + pos_embed)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention written out, so that the weights can be returned; output is (batch, tokens, heads, dim)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2), weights


class VisionTransformerAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection, dispatched to the configured kernel."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, tokens, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        output_attentions = kwargs.get("output_attentions")
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        attention: Callable = eager_attention_forward
        if not output_attentions:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(
            self,
            query,
            key,
            value,
            None,
            scaling=self.scaling,
            dropout=self.attention_dropout if self.training else 0.0,
        )
        output = self.proj(output.reshape(batch, tokens, -1))
        return self.dropout(output), weights


class VisionTransformerMLP(nn.Module):
    """Dense → activation → dropout → Dense → dropout, as the official MlpBlock."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples, scaling the kept ones."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return branch
        keep = 1.0 - self.rate
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep)
        return branch * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class VisionTransformerLayer(GradientCheckpointingLayer):
    """One pre-LN block: x + Attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: VisionTransformerConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = VisionTransformerAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionTransformerMLP(config)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attended, _ = self.attention(self.norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + self.drop_path(attended)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


FEATURE_FORMATS = ("NCHW", "NLC")


def feature_indices(indices: int | Sequence[int] | None, count: int, name: str) -> list[int]:
    """`indices` into `count` positions as non-negative ints: an int n is the last n (not position 0), None all."""
    if indices is None:
        indices = count - 1
    if isinstance(indices, int):
        if not 0 < indices < count:
            raise ValueError(f"{name}={indices} takes the last {indices} of {count - 1}: use 1 to {count - 1}.")
        return list(range(count - indices, count))
    for index in indices:
        if not -count <= index < count:
            raise ValueError(f"{name} has {index}, out of range for {count} positions ({-count} to {count - 1}).")
    return [index % count for index in indices]


@dataclass
class IntermediateFeatures(ModelOutput):
    r"""What `forward_intermediates` returns.

    resnet_features: the hybrid's ResNet maps chosen with `resnet_indices`, (batch, channels, height, width).
    features: one per requested index, (batch, hidden, grid_h, grid_w) or (batch, grid_h * grid_w, hidden).
    prefix_tokens: with `return_prefix_tokens=True`, each feature's prefix tokens (batch, num_prefix_tokens, hidden).
    hidden_states, attentions, backbone_hidden_states: as `forward` returns them when asked, for what ran.
    """

    # Not `features` first: ModelOutput drops a first field that is an empty tuple (the hybrid asked for ResNet maps).
    resnet_features: tuple[torch.FloatTensor, ...] | None = None
    features: tuple[torch.FloatTensor, ...] | None = None
    prefix_tokens: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    backbone_hidden_states: tuple[torch.FloatTensor, ...] | None = None


def passed_on(outputs: ModelOutput, output_class: type[ModelOutput]) -> dict:
    """The encoder's optional outputs (hidden states, attentions, the hybrid's ResNet maps) that a task output has."""
    return {key: value for key, value in outputs.items() if key in output_class.__dataclass_fields__}


class VisionTransformerPreTrainedModel(PreTrainedModel):
    """Weight initialisation as the official code, and the switches transformers reads off a model class."""

    config_class = VisionTransformerConfig
    config: VisionTransformerConfig
    patch_embeddings_class: type[nn.Module] = PatchEmbeddings
    # The bare encoder the task models wrap; set below, once it is defined (the hybrid sets its own).
    encoder_class: type[PreTrainedModel]
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VisionTransformerEmbeddings", "VisionTransformerLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # The losses are per-batch means. Without this the Trainer takes `**kwargs` in forward for a loss that sums over
    # `num_items_in_batch`, and stops dividing by the gradient-accumulation steps: updates grow with the accumulation.
    accepts_loss_kwargs = False
    _can_record_outputs = {"hidden_states": VisionTransformerLayer, "attentions": VisionTransformerAttention}

    def no_weight_decay(self) -> set[str]:
        """Suffixes of parameter names that weight decay leaves alone (besides biases and norms), as timm declares."""
        return {"position_embeddings", "cls_token", "mask_token"}

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """Initialise through `_init_weights` even as remote code.

        transformers skips modules without parameters of their own in custom code, which would skip the head and the
        attention/MLP initialisation below; `_init_weights` only uses `transformers.initialization`, which already
        leaves loaded tensors alone.
        """
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Xavier-uniform kernels, tiny MLP biases, LeCun-normal patch projection, zero head (vit_jax)."""
        if isinstance(module, VisionTransformerEmbeddings):
            init.normal_(module.position_embeddings, std=self.config.initializer_range)
            for token in (module.cls_token, module.mask_token):
                if token is not None:
                    init.zeros_(token)
        elif isinstance(module, PatchEmbeddings):
            init.lecun_normal_(module.projection.weight)
            init.zeros_(module.projection.bias)
        elif isinstance(module, VisionTransformerAttention):
            # q, k and v are separate (D, D) kernels in the official code: the same bound as xavier on each.
            bound = (6.0 / (2 * self.config.hidden_size)) ** 0.5
            init.uniform_(module.qkv.weight, -bound, bound)
            init.xavier_uniform_(module.proj.weight)
            for bias in (module.qkv.bias, module.proj.bias):
                if bias is not None:
                    init.zeros_(bias)
        elif isinstance(module, VisionTransformerMLP):
            for linear in (module.fc1, module.fc2):
                init.xavier_uniform_(linear.weight)
                init.normal_(linear.bias, std=1e-6)
        elif isinstance(module, VisionTransformerModel) and module.pre_logits is not None:
            init.lecun_normal_(module.pre_logits[0].weight)
            init.zeros_(module.pre_logits[0].bias)
        elif isinstance(module, VisionTransformerForImageClassification) and isinstance(module.classifier, nn.Linear):
            init.zeros_(module.classifier.weight)
            init.zeros_(module.classifier.bias)
        elif isinstance(module, VisionTransformerForMaskedPatchPrediction):
            init.zeros_(module.head.weight)
            init.zeros_(module.head.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class VisionTransformerModel(VisionTransformerPreTrainedModel):
    """The bare encoder: `last_hidden_state` after the final norm, `pooler_output` the pooled (pre-logits) feature."""

    output_class = BaseModelOutputWithPooling

    def __init__(self, config: VisionTransformerConfig, use_mask_token: bool = False):
        super().__init__(config)
        self.embeddings = VisionTransformerEmbeddings(config, self.patch_embeddings_class(config), use_mask_token)
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList([VisionTransformerLayer(config, rate) for rate in rates])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pre_logits = None
        if config.representation_size is not None:
            self.pre_logits = nn.Sequential(nn.Linear(config.hidden_size, config.representation_size), nn.Tanh())
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """The image feature: the class token, or the mean of all tokens for `classifier="gap"`."""
        if self.config.classifier == "token":
            return sequence_output[:, 0]
        return sequence_output.mean(dim=1)

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
        source_patches: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""Encode `pixel_values` (batch, channels, height, width).

        `interpolate_pos_encoding=True` runs any resolution divisible by the token stride. `bool_masked_pos` and
        `source_patches` (batch, tokens) corrupt patch tokens before the encoder (see the embeddings).
        """
        dtype = self.embeddings.position_embeddings.dtype
        hidden_states = self.embeddings(
            pixel_values.to(dtype), interpolate_pos_encoding, bool_masked_pos, source_patches
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        sequence_output = self.norm(hidden_states)
        pooled = self.pool(sequence_output)
        if self.pre_logits is not None:
            pooled = self.pre_logits(pooled)
        return self.output_class(last_hidden_state=sequence_output, pooler_output=pooled)

    @capture_outputs(tie_last_hidden_states=False)
    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        output_fmt: str = "NCHW",
        return_prefix_tokens: bool = False,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> IntermediateFeatures:
        r"""The features of chosen layers, for dense prediction; blocks after the last chosen one are not run.

        Modelled on timm's `forward_intermediates`, with the positions of `hidden_states` as indices.

        Args:
            indices: positions in `hidden_states`: 0 is the embedded tokens, i the output of block i, negative ones
                count from the end (-1 is the last block); an int n takes the last n blocks, None all blocks. timm
                counts blocks from 0, so its index i is i + 1 here. Features come back in the order asked.
            norm: pass each feature through the final LayerNorm (index -1 with `norm=True` is `last_hidden_state`).
            output_fmt: `"NCHW"` for (batch, hidden, grid_h, grid_w) maps, `"NLC"` for (batch, grid_h * grid_w,
                hidden) sequences. The prefix (class) token is in neither.
            return_prefix_tokens: also return each layer's prefix tokens, (batch, num_prefix_tokens, hidden).
            interpolate_pos_encoding: as in `forward`.
            kwargs: `output_hidden_states` and `output_attentions` as in `forward`, for the blocks that ran.
        """
        if output_fmt not in FEATURE_FORMATS:
            raise ValueError(f"output_fmt must be one of {FEATURE_FORMATS}, got {output_fmt!r}.")
        take = feature_indices(indices, len(self.layers) + 1, "indices")
        dtype = self.embeddings.position_embeddings.dtype
        hidden_states = self.embeddings(pixel_values.to(dtype), interpolate_pos_encoding)
        kept = {0: hidden_states}
        for number, layer in enumerate(self.layers[: max(take, default=0)], start=1):
            hidden_states = layer(hidden_states, **kwargs)
            if number in take:
                kept[number] = hidden_states
        prefix = self.embeddings.num_prefix_tokens
        step_h, step_w = self.embeddings.token_stride
        grid = (pixel_values.shape[-2] // step_h, pixel_values.shape[-1] // step_w)
        features, prefix_tokens = [], []
        for index in take:
            tokens = self.norm(kept[index]) if norm else kept[index]
            prefix_tokens.append(tokens[:, :prefix])
            tokens = tokens[:, prefix:]
            if output_fmt == "NCHW":
                tokens = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
            features.append(tokens)
        return IntermediateFeatures(
            features=tuple(features), prefix_tokens=tuple(prefix_tokens) if return_prefix_tokens else None
        )


VisionTransformerPreTrainedModel.encoder_class = VisionTransformerModel


class VisionTransformerForImageClassification(VisionTransformerPreTrainedModel):
    """ViT with a linear head on the pooled feature (zero-initialised, as the official code)."""

    output_class = ImageClassifierOutput

    def __init__(self, config: VisionTransformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = self.encoder_class(config)
        width = config.representation_size or config.hidden_size
        self.classifier = nn.Linear(width, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""Classify `pixel_values`; `labels` (class indices, or multi-hot floats) give the loss."""
        outputs = self.vit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return self.output_class(loss=loss, logits=logits, **passed_on(outputs, self.output_class))


def mean_colour_classes(pixel_values: torch.Tensor, token_stride: tuple[int, int], bits: int = 3) -> torch.Tensor:
    """Each token's mean colour, quantised to `bits` per channel, as one class id (512 classes for 3-bit RGB).

    `pixel_values` are in [-1, 1]; the result is (batch, tokens) in row-major token order.
    """
    levels = 2**bits
    means = nn.functional.avg_pool2d(pixel_values.float(), kernel_size=token_stride, stride=token_stride)
    bins = ((means + 1) / 2 * levels).floor().clamp(0, levels - 1).long()
    weights = levels ** torch.arange(bins.shape[1] - 1, -1, -1, device=bins.device)
    return (bins * weights.view(1, -1, 1, 1)).sum(1).flatten(1)


class VisionTransformerForMaskedPatchPrediction(VisionTransformerPreTrainedModel):
    """The paper's self-supervised objective: corrupt half of the patch embeddings, predict their mean colour.

    Of the corrupted patches 80% become a learnable mask token, 10% another patch of the image, 10% stay as they
    are; the head predicts each corrupted patch's 3-bit mean colour (512 classes).
    """

    output_class = MaskedLMOutput

    def __init__(
        self,
        config: VisionTransformerConfig,
        mask_ratio: float = 0.5,
        colour_bits: int = 3,
    ):
        super().__init__(config)
        self.mask_ratio = mask_ratio
        self.colour_bits = colour_bits
        self.vit = self.encoder_class(config, use_mask_token=True)
        self.head = nn.Linear(config.hidden_size, 2 ** (colour_bits * config.num_channels))
        self.post_init()

    def corrupt(
        self, batch: int, tokens: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Sample which positions are predicted, masked, or given another patch: fixed shapes, no host sync.

        A `generator` (on `device`) makes the draw repeatable; without one it comes from torch's global state.
        """
        ranks = torch.rand(batch, tokens, device=device, generator=generator).argsort(1).argsort(1)
        predicted = ranks < round(self.mask_ratio * tokens)
        kind = torch.rand(batch, tokens, device=device, generator=generator)
        masked = predicted & (kind < 0.8)
        swapped = predicted & (kind >= 0.8) & (kind < 0.9)
        identity = torch.arange(tokens, device=device).expand(batch, tokens)
        others = torch.randint(0, tokens, (batch, tokens), device=device, generator=generator)
        return predicted, masked, torch.where(swapped, others, identity)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        predicted_pos: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        source_patches: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        generator: torch.Generator | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""Corrupt, encode and predict. With no `predicted_pos` the corruption is sampled here, from `generator`.

        `predicted_pos` (batch, tokens) marks the positions whose colour is predicted (and scored); `bool_masked_pos`
        and `source_patches` say how they were corrupted (see `VisionTransformerEmbeddings.forward`). A seeded
        `generator` gives the same corruption on every call, e.g. for a repeatable evaluation loss.
        """
        batch, _, height, width = pixel_values.shape
        step_h, step_w = self.config.token_stride
        num_tokens = (height // step_h) * (width // step_w)
        if predicted_pos is None:
            predicted_pos, bool_masked_pos, source_patches = self.corrupt(
                batch, num_tokens, pixel_values.device, generator
            )
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            bool_masked_pos=bool_masked_pos,
            source_patches=source_patches,
            **kwargs,
        )
        patch_tokens = outputs.last_hidden_state[:, self.vit.embeddings.num_prefix_tokens :]
        logits = self.head(patch_tokens)
        targets = mean_colour_classes(pixel_values, (step_h, step_w), self.colour_bits)
        per_token = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        weights = predicted_pos.flatten().float()
        loss = (per_token * weights).sum() / weights.sum().clamp(min=1)
        return self.output_class(loss=loss, logits=logits, **passed_on(outputs, self.output_class))


class VisionTransformerBackbone(BackboneMixin, VisionTransformerPreTrainedModel):
    """The encoder as a transformers backbone, for the dense-prediction models that build theirs with `load_backbone`.

    `feature_maps` holds the features of `config.out_features` (of `stage_names`: "stem" is the embedded tokens,
    "stage{i}" the output of block i), each `hidden_size` channels at the token stride, after the final LayerNorm
    (`config.apply_layernorm`); (batch, hidden, height, width) maps, or with `config.reshape_hidden_states=False` the
    token sequences with the class token first, as DPT's neck reads them. Blocks after the last stage asked for do
    not run, and any input size divisible by the token stride does (the position embeddings are resized).
    """

    def __init__(self, config: VisionTransformerConfig):
        super().__init__(config)
        self.vit = self.encoder_class(config)
        self.num_features = [config.hidden_size] * len(config.stage_names)
        self.post_init()

    def stage_indices(self) -> dict[str, list[int]]:
        """`forward_intermediates` arguments that pick the `out_features`."""
        return {"indices": [self.stage_names.index(name) for name in self.out_features]}

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        reshape = self.config.reshape_hidden_states
        output = self.vit.forward_intermediates(
            pixel_values,
            **self.stage_indices(),
            norm=self.config.apply_layernorm,
            output_fmt="NCHW" if reshape else "NLC",
            return_prefix_tokens=not reshape,
            interpolate_pos_encoding=True,
            **kwargs,
        )
        features = output.features
        if not reshape:
            features = tuple(torch.cat(pair, dim=1) for pair in zip(output.prefix_tokens, features, strict=True))
        return BackboneOutput(
            feature_maps=(output.resnet_features or ()) + features,
            hidden_states=output.hidden_states,
            attentions=output.attentions,
        )
