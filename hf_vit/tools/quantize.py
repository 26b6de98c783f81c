"""int8 inference on the CPU: every Linear layer's weights stored as int8, its inputs quantised batch by batch.

This is dynamic quantisation with PyTorch's own `torch.ao.quantization.quantize_dynamic`: no calibration data, no
extra dependency, and fbgemm's (x86) or QNNPACK's (ARM) int8 kernels. The Linear layers hold nearly all of a ViT's
weights and FLOPs (attention's projections, the MLP, the head); the patch embedding, a hybrid's ResNet, LayerNorm
and the attention product itself stay in float32. torch marks `torch.ao.quantization` deprecated in favour of the
torchao package, which would be one more dependency and logs a line to stderr when imported (into every script's
output); this module keeps the in-tree version and silences exactly its deprecation messages (`quantize_int8`).
"""

import warnings

import torch

# What torch says when `quantize_dynamic` runs: the module's deprecation (DeprecationWarning) and that of the
# quantized tensor types it creates (UserWarning). Both are about torch's roadmap, not the model being quantised.
DEPRECATION_MESSAGES = (
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation functions",
)


def int8_engine() -> str:
    """The quantised kernels' engine of this CPU (fbgemm on x86, qnnpack on ARM), or a ValueError if it has none."""
    supported = torch.backends.quantized.supported_engines
    engines = [engine for engine in ("fbgemm", "x86", "qnnpack") if engine in supported]
    if not engines:
        raise ValueError(
            f"--int8: this PyTorch build has no int8 CPU kernels (engines {supported}); run without --int8."
        )
    return engines[0]


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose Linear layers hold int8 weights (per-tensor scale) and quantise their inputs at run
    time; for inference on the CPU. The copy cannot be trained or saved with `save_pretrained`: keep the float
    model, and quantise after loading."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        raise ValueError(f"--int8 runs on the CPU; the model is on {parameter.device}: load it on the CPU.")
    if parameter.dtype != torch.float32:
        raise ValueError(f"--int8 quantises float32 weights; the model is in {parameter.dtype}.")
    torch.backends.quantized.engine = int8_engine()
    with warnings.catch_warnings():
        for message in DEPRECATION_MESSAGES:
            warnings.filterwarnings("ignore", message)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
