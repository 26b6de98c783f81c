"""A reference forward of the official JAX ViT (and ResNet hybrid) in NumPy, on checkpoints in the released layout.

Written from the paper and the official code's semantics, independently of hf_vit: float64 throughout, tanh GELU,
LayerNorm eps 1e-6, weight-standardised convolutions ((w - mean) / (std + 1e-5)), GroupNorm (32 groups, eps 1e-6)
and TF "SAME" padding. `make_params` builds random parameters under the released (pre-Linen) names; the
`to_*` helpers rewrite them into the other layouts a converter must read.
"""

import math
import re

import numpy as np


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF SAME: output ceil(size / stride); the odd pixel of padding goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x: np.ndarray, kernel: np.ndarray, stride: int, padding: str, pad_value: float = 0.0) -> np.ndarray:
    """x (N, H, W, C) with kernel (kh, kw, C, O): a correlation, as Flax's Conv."""
    kh, kw = kernel.shape[:2]
    if padding == "SAME":
        pads = [(0, 0), same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride), (0, 0)]
        x = np.pad(x, pads, constant_values=pad_value)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel)


def max_pool_same(x: np.ndarray, size: int = 3, stride: int = 2) -> np.ndarray:
    pads = [(0, 0), same_padding(x.shape[1], size, stride), same_padding(x.shape[2], size, stride), (0, 0)]
    x = np.pad(x, pads, constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    return windows.max(axis=(-2, -1))


def standardize(kernel: np.ndarray) -> np.ndarray:
    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
    std = kernel.std(axis=(0, 1, 2), keepdims=True)
    return (kernel - mean) / (std + 1e-5)


def group_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, groups: int = 32, eps: float = 1e-6):
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, groups, c // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    normed = ((grouped - mean) / np.sqrt(var + eps)).reshape(n, h, w, c)
    return normed * scale.reshape(-1) + bias.reshape(-1)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def residual_unit(x: np.ndarray, p: dict, prefix: str, stride: int) -> np.ndarray:
    def conv_gn(y, name, gn, step, padding="SAME"):
        return group_norm(conv2d(y, standardize(p[f"{prefix}{name}/kernel"]), step, padding), *gn_params(gn))

    def gn_params(name):
        return p[f"{prefix}{name}/scale"], p[f"{prefix}{name}/bias"]

    residual = x
    if f"{prefix}conv_proj/kernel" in p:
        residual = conv_gn(x, "conv_proj", "gn_proj", stride)
    y = relu(conv_gn(x, "conv1", "gn1", 1))
    y = relu(conv_gn(y, "conv2", "gn2", stride))
    y = conv_gn(y, "conv3", "gn3", 1)
    return relu(residual + y)


def resnet(x: np.ndarray, p: dict) -> np.ndarray:
    x = conv2d(x, standardize(p["conv_root/kernel"]), 2, "SAME")
    x = max_pool_same(relu(group_norm(x, p["gn_root/scale"], p["gn_root/bias"])))
    stages = sorted({int(m.group(1)) for key in p if (m := re.match(r"block(\d+)/", key))})
    for stage in stages:
        units = sorted({int(m.group(1)) for key in p if (m := re.match(rf"block{stage}/unit(\d+)/", key))})
        for unit in units:
            stride = 2 if stage > 1 and unit == 1 else 1
            x = residual_unit(x, p, f"block{stage}/unit{unit}/", stride)
    return x


def attention(x: np.ndarray, p: dict, prefix: str) -> np.ndarray:
    q, k, v = (
        np.einsum("btd,dhk->bthk", x, p[f"{prefix}{name}/kernel"]) + p[f"{prefix}{name}/bias"]
        for name in ("query", "key", "value")
    )
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    weights = scores / scores.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", weights, v)
    return np.einsum("bqhk,hkd->bqd", out, p[f"{prefix}out/kernel"]) + p[f"{prefix}out/bias"]


def forward(p: dict, images: np.ndarray, pos_before_cls: bool = False) -> np.ndarray:
    """Logits of `images` (N, H, W, 3) under parameters `p` in the released layout.

    `pos_before_cls`: big_vision's order (position embeddings added to the patches, then the class token
    prepended); the released vit_jax order prepends first.
    """
    x = images.astype(np.float64)
    if "conv_root/kernel" in p:
        x = resnet(x, p)
    patch = p["embedding/kernel"].shape[0]
    x = conv2d(x, p["embedding/kernel"], patch, "VALID") + p["embedding/bias"]
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    pos = p["Transformer/posembed_input/pos_embedding"]
    if pos_before_cls:
        x = x + pos
    if "cls" in p:
        x = np.concatenate([np.broadcast_to(p["cls"], (n, 1, d)), x], axis=1)
    if not pos_before_cls:
        x = x + pos
    layers = sorted({int(m.group(1)) for key in p if (m := re.match(r"Transformer/encoderblock_(\d+)/", key))})
    for index in layers:
        block = f"Transformer/encoderblock_{index}/"
        y = layer_norm(x, p[block + "LayerNorm_0/scale"], p[block + "LayerNorm_0/bias"])
        x = x + attention(y, p, block + "MultiHeadDotProductAttention_1/")
        y = layer_norm(x, p[block + "LayerNorm_2/scale"], p[block + "LayerNorm_2/bias"])
        y = gelu_tanh(y @ p[block + "MlpBlock_3/Dense_0/kernel"] + p[block + "MlpBlock_3/Dense_0/bias"])
        x = x + y @ p[block + "MlpBlock_3/Dense_1/kernel"] + p[block + "MlpBlock_3/Dense_1/bias"]
    x = layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
    x = x[:, 0] if "cls" in p else x.mean(axis=1)
    if "pre_logits/kernel" in p:
        x = np.tanh(x @ p["pre_logits/kernel"] + p["pre_logits/bias"])
    return x @ p["head/kernel"] + p["head/bias"]


def make_params(
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    mlp: int = 64,
    patch: int = 8,
    grid: int = 4,
    num_classes: int = 5,
    token: bool = True,
    representation: int | None = None,
    resnet_layers: tuple[int, ...] | None = None,
    pos_slot_for_cls: bool = True,
) -> dict[str, np.ndarray]:
    """Random parameters under the released names; every tensor non-trivial so that a swap would show."""
    rng = np.random.default_rng(seed)

    def dense(*shape, fan_in=None):
        return rng.normal(0, 1 / math.sqrt(fan_in or shape[0]), shape).astype(np.float32)

    def small(*shape, scale=0.1):
        return rng.normal(0, scale, shape).astype(np.float32)

    p: dict[str, np.ndarray] = {}
    channels = 3
    if resnet_layers is not None:
        width = 64
        p["conv_root/kernel"] = dense(7, 7, 3, width, fan_in=147)
        p["gn_root/scale"], p["gn_root/bias"] = 1 + small(width), small(width)
        channels = width
        for stage, units in enumerate(resnet_layers, 1):
            nout = width * 2 ** (stage - 1)
            for unit in range(1, units + 1):
                prefix = f"block{stage}/unit{unit}/"
                for name, (k, cin, cout) in {
                    "conv1": (1, channels, nout),
                    "conv2": (3, nout, nout),
                    "conv3": (1, nout, 4 * nout),
                }.items():
                    p[f"{prefix}{name}/kernel"] = dense(k, k, cin, cout, fan_in=k * k * cin)
                for index, size in ((1, nout), (2, nout), (3, 4 * nout)):
                    p[f"{prefix}gn{index}/scale"], p[f"{prefix}gn{index}/bias"] = 1 + small(size), small(size)
                if unit == 1:
                    p[f"{prefix}conv_proj/kernel"] = dense(1, 1, channels, 4 * nout, fan_in=channels)
                    p[f"{prefix}gn_proj/scale"], p[f"{prefix}gn_proj/bias"] = 1 + small(4 * nout), small(4 * nout)
                channels = 4 * nout
    p["embedding/kernel"] = dense(patch, patch, channels, hidden, fan_in=patch * patch * channels)
    p["embedding/bias"] = small(hidden)
    if token:
        p["cls"] = small(1, 1, hidden, scale=0.5)
    slots = grid * grid + (1 if token and pos_slot_for_cls else 0)
    p["Transformer/posembed_input/pos_embedding"] = small(1, slots, hidden, scale=0.5)
    head_dim = hidden // heads
    for index in range(layers):
        block = f"Transformer/encoderblock_{index}/"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            p[f"{block}{norm}/scale"], p[f"{block}{norm}/bias"] = 1 + small(hidden), small(hidden)
        attention_prefix = block + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            p[f"{attention_prefix}{name}/kernel"] = dense(hidden, heads, head_dim, fan_in=hidden)
            p[f"{attention_prefix}{name}/bias"] = small(heads, head_dim)
        p[f"{attention_prefix}out/kernel"] = dense(heads, head_dim, hidden, fan_in=hidden)
        p[f"{attention_prefix}out/bias"] = small(hidden)
        p[f"{block}MlpBlock_3/Dense_0/kernel"], p[f"{block}MlpBlock_3/Dense_0/bias"] = dense(hidden, mlp), small(mlp)
        p[f"{block}MlpBlock_3/Dense_1/kernel"], p[f"{block}MlpBlock_3/Dense_1/bias"] = dense(mlp, hidden), small(hidden)
    p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"] = 1 + small(hidden), small(hidden)
    features = hidden
    if representation is not None:
        p["pre_logits/kernel"], p["pre_logits/bias"] = dense(hidden, representation), small(representation)
        features = representation
    p["head/kernel"], p["head/bias"] = dense(features, num_classes), small(num_classes)
    return p


LINEN_NAMES = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1"}


def to_linen(p: dict) -> dict:
    """Names as current Flax (Linen) numbers them: _0 per module type."""
    renamed = {}
    for key, value in p.items():
        for old, new in LINEN_NAMES.items():
            key = key.replace(f"/{old}/", f"/{new}/")
        renamed[key.replace("/MlpBlock_3/", "/MlpBlock_0/")] = value
    return renamed


def to_big_vision(p: dict, scanned: bool = False) -> dict:
    """big_vision's layout: Linen names under `params/`, a top-level `pos_embedding`, optionally scanned blocks."""
    p = to_linen(p)
    p["pos_embedding"] = p.pop("Transformer/posembed_input/pos_embedding")
    if scanned:
        blocks: dict[str, list] = {}
        for key in sorted(k for k in p if k.startswith("Transformer/encoderblock_")):
            index, rest = re.match(r"Transformer/encoderblock_(\d+)/(.*)", key).groups()
            blocks.setdefault(rest, []).append((int(index), p.pop(key)))
        for rest, layers in blocks.items():
            p[f"Transformer/encoderblock/{rest}"] = np.stack([value for _, value in sorted(layers)])
    return {f"params/{key}": value for key, value in p.items()}


def with_old_group_norm(p: dict) -> dict:
    """Old hybrid files store GroupNorm scale and bias as (1, 1, 1, C)."""
    return {
        key: value.reshape(1, 1, 1, -1) if re.search(r"gn\w*/(scale|bias)$", key) else value for key, value in p.items()
    }
