"""Official JAX/Flax checkpoints (.npz) of google-research/vision_transformer and big_vision.

Understands the released files (pre-Linen module names: `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
`MlpBlock_3`), Linen names (`_0`, `_1`, `_0`), the `opt/target/` prefix of the AugReg files, big_vision's `params/`
layout (a top-level `pos_embedding` added before the class token is prepended, optionally scanned layers), the
ResNet of the hybrids (with old GroupNorm shapes), cls-token or GAP pooling and the representation layer.
The whole architecture is read off the names and shapes; a preset only adds dropout rates and a consistency check.
"""

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    BACKBONE,
    ConversionError,
    Converted,
    KeyReader,
    geometry_fields,
    is_square,
    make_config,
    shape_of,
    square_grid,
    to_tensor,
)
from .preprocessing import official_preprocessing

PREFIXES = ("opt/target/", "params/")
BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/([^/]+)/")
UNIT = re.compile(r"^block(\d+)/unit(\d+)/")
SCANNED = "Transformer/encoderblock/"


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz file, without unpickling anything."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"JAX checkpoint {path} does not exist or is not a file.")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise ConversionError(f"{path} is not a NumPy .npz checkpoint ({error}).") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ConversionError(f"{path} holds a single array of shape {shape_of(data)}, not an .npz checkpoint.")
    with data:
        try:
            return {key: data[key] for key in data.files}
        except (ValueError, OSError, zipfile.BadZipFile) as error:
            raise ConversionError(f"{path} is not a readable .npz checkpoint ({error}).") from None


def normalise_keys(params: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """Strip the `opt/target/` and `params/` prefixes and unstack big_vision's scanned encoder blocks."""
    flat: dict[str, np.ndarray] = {}
    for key, value in params.items():
        name = key
        while name.startswith(PREFIXES):
            name = name[len(next(prefix for prefix in PREFIXES if name.startswith(prefix))) :]
        if name in flat:
            raise ConversionError(f"{what} holds {name!r} twice (with and without a prefix).")
        flat[name] = value
    scanned = [key for key in flat if key.startswith(SCANNED)]
    for key in scanned:
        stacked = flat.pop(key)
        for index, layer in enumerate(stacked):
            flat[f"Transformer/encoderblock_{index}/{key[len(SCANNED) :]}"] = layer
    return flat


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """Flax conv kernels are (height, width, in, out); PyTorch wants (out, in, height, width)."""
    return np.transpose(kernel, (3, 2, 0, 1))


def encoder_modules(reader: KeyReader, index: int, what: str) -> tuple[str, str, str, str]:
    """Names of (first LayerNorm, attention, second LayerNorm, MLP) in block `index`, whatever the Flax numbering."""
    modules = {match.group(2) for key in reader.names() if (match := BLOCK.match(key)) and int(match.group(1)) == index}

    def numbered(kind: str) -> list[str]:
        return sorted((name for name in modules if name.startswith(kind + "_")), key=lambda n: int(n.rsplit("_", 1)[1]))

    norms, attention, mlp = numbered("LayerNorm"), numbered("MultiHeadDotProductAttention"), numbered("MlpBlock")
    if len(norms) != 2 or len(attention) != 1 or len(mlp) != 1 or len(modules) != 4:
        raise ConversionError(
            f"{what}: Transformer/encoderblock_{index} holds {sorted(modules)}; a ViT block has two LayerNorm, one "
            "MultiHeadDotProductAttention and one MlpBlock."
        )
    return norms[0], attention[0], norms[1], mlp[0]


def convert_encoder(reader: KeyReader, state: dict[str, Any], what: str) -> dict[str, int]:
    """Map the encoder blocks and final norm; return the sizes read off them."""
    indices = sorted({int(match.group(1)) for key in reader.names() if (match := BLOCK.match(key))})
    if not indices:
        raise ConversionError(
            f"{what} has no Transformer/encoderblock_N keys, so it is not a ViT checkpoint "
            f"(its first keys: {', '.join(sorted(reader.names())[:5]) or 'none'})."
        )
    if indices != list(range(len(indices))):
        raise ConversionError(f"{what}: encoder blocks are numbered {indices}, expected 0 to {len(indices) - 1}.")
    heads = intermediate = None
    for index in indices:
        block = f"Transformer/encoderblock_{index}/"
        norm1, attention, norm2, mlp = (block + name for name in encoder_modules(reader, index, what))
        ours = f"vit.layers.{index}."
        query = reader.take(f"{attention}/query/kernel", ndim=3)
        dim, num_heads, head_dim = shape_of(query)
        if num_heads * head_dim != dim:
            raise ConversionError(
                f"{what}: {attention}/query/kernel has shape {shape_of(query)}; hf_vit needs heads x head_dim "
                f"= hidden size ({num_heads} x {head_dim} != {dim})."
            )
        kernels, biases = [], []
        for name in ("query", "key", "value"):
            kernel = reader.take(f"{attention}/{name}/kernel", ndim=3)
            bias = reader.take(f"{attention}/{name}/bias", ndim=2)
            if shape_of(kernel) != shape_of(query) or shape_of(bias) != (num_heads, head_dim):
                raise ConversionError(
                    f"{what}: {attention}/{name} has kernel {shape_of(kernel)} and bias {shape_of(bias)}; expected "
                    f"{shape_of(query)} and {(num_heads, head_dim)} as the query."
                )
            kernels.append(kernel.reshape(dim, dim).T)
            biases.append(bias.reshape(dim))
        state[ours + "attention.qkv.weight"] = np.concatenate(kernels, axis=0)
        state[ours + "attention.qkv.bias"] = np.concatenate(biases, axis=0)
        out = reader.take(f"{attention}/out/kernel", ndim=3)
        state[ours + "attention.proj.weight"] = out.reshape(-1, out.shape[-1]).T
        state[ours + "attention.proj.bias"] = reader.take(f"{attention}/out/bias")
        for norm, name in ((norm1, "norm1"), (norm2, "norm2")):
            state[ours + name + ".weight"] = reader.take(f"{norm}/scale")
            state[ours + name + ".bias"] = reader.take(f"{norm}/bias")
        for dense, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            state[ours + f"mlp.{name}.weight"] = reader.take(f"{mlp}/{dense}/kernel", ndim=2).T
            state[ours + f"mlp.{name}.bias"] = reader.take(f"{mlp}/{dense}/bias")
        if heads not in (None, num_heads):
            raise ConversionError(f"{what}: block {index} has {num_heads} heads, block 0 has {heads}.")
        heads = num_heads
        intermediate = intermediate or state[ours + "mlp.fc1.weight"].shape[0]
    state["vit.norm.weight"] = reader.take("Transformer/encoder_norm/scale")
    state["vit.norm.bias"] = reader.take("Transformer/encoder_norm/bias")
    return {"num_hidden_layers": len(indices), "num_attention_heads": heads, "intermediate_size": intermediate}


def convert_resnet(reader: KeyReader, state: dict[str, Any], what: str) -> dict[str, Any]:
    """Map the hybrid's BiT ResNet (root, then `block{s}/unit{u}`); return the stage layout read off it."""

    def norm(source: str, target: str) -> None:
        # Old files store GroupNorm parameters as (1, 1, 1, C).
        state[target + ".weight"] = reader.take(source + "/scale").reshape(-1)
        state[target + ".bias"] = reader.take(source + "/bias").reshape(-1)

    root = reader.take("conv_root/kernel", ndim=4)
    width = root.shape[-1]
    if width % 64:
        raise ConversionError(f"{what}: conv_root/kernel has shape {shape_of(root)}; the root width must be 64 x k.")
    state[BACKBONE + "stem.conv.weight"] = hwio_to_oihw(root)
    norm("gn_root", BACKBONE + "stem.norm")
    units: dict[int, set[int]] = {}
    for key in reader.names():
        if match := UNIT.match(key):
            units.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if sorted(units) != list(range(1, len(units) + 1)):
        raise ConversionError(f"{what}: ResNet stages are numbered {sorted(units)}, expected 1 to {len(units)}.")
    layers = []
    for stage in sorted(units):
        if sorted(units[stage]) != list(range(1, len(units[stage]) + 1)):
            raise ConversionError(
                f"{what}: block{stage} has units {sorted(units[stage])}, expected 1 to {len(units[stage])}."
            )
        layers.append(len(units[stage]))
        for unit in sorted(units[stage]):
            source, target = f"block{stage}/unit{unit}/", f"{BACKBONE}stages.{stage - 1}.{unit - 1}."
            for index in (1, 2, 3):
                state[f"{target}conv{index}.weight"] = hwio_to_oihw(reader.take(f"{source}conv{index}/kernel", ndim=4))
                norm(f"{source}gn{index}", f"{target}norm{index}")
            if f"{source}conv_proj/kernel" in reader:
                state[target + "downsample.conv.weight"] = hwio_to_oihw(reader.take(f"{source}conv_proj/kernel"))
                norm(f"{source}gn_proj", target + "downsample.norm")
    return {"resnet_layers": layers, "resnet_width_factor": width // 64}


def convert_jax_params(params: dict[str, np.ndarray], preset: str | None = None, what: str = "JAX checkpoint"):
    """Convert a flat {name: array} of Flax parameters (names joined by '/') into our config and weights."""
    reader = KeyReader(normalise_keys(params, what), what)
    if any(key.startswith("MAPHead") for key in reader.names()):
        raise ConversionError(f"{what} pools with a MAP head (MAPHead_*), which hf_vit does not implement.")
    state: dict[str, Any] = {}
    fields: dict[str, Any] = convert_encoder(reader, state, what)
    embedding = reader.take("embedding/kernel", ndim=4)
    patch_h, patch_w, _, hidden = shape_of(embedding)
    state["vit.embeddings.patch_embeddings.projection.weight"] = hwio_to_oihw(embedding)
    state["vit.embeddings.patch_embeddings.projection.bias"] = reader.take("embedding/bias")
    if "conv_root/kernel" in reader:
        fields.update(convert_resnet(reader, state, what))
    token = "cls" in reader
    if token:
        state["vit.embeddings.cls_token"] = reader.take("cls", ndim=3)
    pos_key = next(
        (key for key in ("Transformer/posembed_input/pos_embedding", "pos_embedding") if key in reader), None
    )
    if pos_key is None:
        raise ConversionError(
            f"{what} has no learned position embeddings (Transformer/posembed_input/pos_embedding or "
            "pos_embedding); fixed sin-cos embeddings are not supported."
        )
    pos_embed = reader.take(pos_key, ndim=3)
    num_tokens = pos_embed.shape[1]
    if token and is_square(num_tokens) and not is_square(num_tokens - 1):
        # big_vision adds position embeddings before prepending the class token: its slot gets zeros.
        pos_embed = np.concatenate([np.zeros_like(pos_embed[:, :1]), pos_embed], axis=1)
    grid_h, grid_w = square_grid(pos_embed.shape[1] - int(token), what)
    state["vit.embeddings.position_embeddings"] = pos_embed
    if "pre_logits/kernel" in reader:
        state["vit.pre_logits.0.weight"] = reader.take("pre_logits/kernel", ndim=2).T
        state["vit.pre_logits.0.bias"] = reader.take("pre_logits/bias")
        fields["representation_size"] = state["vit.pre_logits.0.weight"].shape[0]
    if "head/kernel" in reader:
        state["classifier.weight"] = reader.take("head/kernel", ndim=2).T
        state["classifier.bias"] = reader.take("head/bias")
        fields["num_labels"] = state["classifier.weight"].shape[0]
    reader.finish()
    fields.update(
        hidden_size=hidden,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        pos_embed_interpolation="official",
        **geometry_fields(fields, (grid_h, grid_w), (patch_h, patch_w), token),
    )
    config = make_config(fields, preset, what)
    return Converted(config, {key: to_tensor(value) for key, value in state.items()}, what)


def load_jax(path: str | os.PathLike, preset: str | None = None) -> Converted:
    """Convert the official .npz checkpoint at `path`, with the official eval preprocessing."""
    converted = convert_jax_params(load_npz(path), preset, what=f"JAX checkpoint {Path(path).name}")
    converted.preprocessing = official_preprocessing(converted.config.num_channels)
    return converted
