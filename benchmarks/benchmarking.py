"""Throughput, peak memory and model FLOP utilisation of hf_vit against transformers and timm.

Every implementation is built with the same shapes from one preset and measured in the same process,
interleaved (the implementations take turns within each repeat, the first one rotating), so that a machine that
gets busier or hotter during the run slows all of them alike. Each repeat times `iters` steps; the report gives
the median over repeats and ratios ours / peer.

FLOPs are counted analytically from the config as 2 × multiply-accumulates of the matmuls (patch embedding,
query/key/value, attention scores and values, output projection, MLP, head); norms, softmax and activations are
left out, as in the paper and in timm's tables. A training step counts 3 × the forward. MFU divides the achieved
FLOP/s by the peak that a large matmul reaches on the same device, in the same dtype, in the same run: measured
before the first model and again in every repeat, the best of them, so that a busy moment cannot lower it.
"""

import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageClassification, PretrainedConfig

from hf_vit.models.configuration import is_hybrid, to_pair
from hf_vit.models.presets import create_config, resolve_preset

OURS = "hf_vit"
PEERS = ("transformers", "timm")
IMPLEMENTATIONS = (OURS, *PEERS)
MODES = ("infer", "train")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# A model small enough that a smoke run of every implementation takes seconds on one CPU core.
SMOKE_FIELDS = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
)


class PeerUnavailable(Exception):
    """A peer that cannot be built here (not installed, or no such model); the message is the report's note."""


@dataclass
class Settings:
    """What to measure and how; `None` fields get per-device defaults from `resolve()`."""

    device: str = "cpu"
    dtype: str | None = None
    batch_size: int | None = None
    compile: bool = False
    compile_backend: str = "inductor"  # "eager" traces with dynamo but skips code generation (smoke runs)
    attn_implementation: str = "sdpa"
    channels_last: bool = False
    modes: tuple[str, ...] = MODES
    warmup: int | None = None
    iters: int | None = None
    repeats: int | None = None
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    cpu_memory: bool = False
    smoke: bool = False
    threads: int | None = None
    peak_matmul_size: int | None = None
    profile_dir: str | None = None
    seed: int = 0

    def resolve(self) -> "Settings":
        """Fill the defaults (bf16 and big batches on GPU, fp32 and small ones on CPU) and check every field."""
        cuda = self.device.startswith("cuda")
        defaults: dict[str, Any]
        if self.smoke:
            defaults = dict(dtype="fp32", batch_size=2, warmup=0, iters=1, repeats=1, peak_matmul_size=512)
        elif cuda:
            defaults = dict(dtype="bf16", batch_size=256, warmup=5, iters=20, repeats=5, peak_matmul_size=8192)
        else:
            defaults = dict(dtype="fp32", batch_size=8, warmup=1, iters=2, repeats=3, peak_matmul_size=2048)
        values = {name: value if value is not None else defaults.get(name) for name, value in asdict(self).items()}
        settings = Settings(**{**values, "modes": tuple(self.modes), "implementations": tuple(self.implementations)})
        settings.check()
        return settings

    def check(self) -> None:
        """Raise a ValueError naming the field when the settings cannot run."""
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        for name in ("batch_size", "iters", "repeats", "peak_matmul_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise ValueError(f"warmup must be at least 0, got {self.warmup}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}.")
        if not self.modes or set(self.modes) - set(MODES):
            raise ValueError(f"modes must be among {', '.join(MODES)}, got {', '.join(self.modes) or 'none'}.")
        if OURS not in self.implementations or set(self.implementations) - set(IMPLEMENTATIONS):
            raise ValueError(
                f"implementations must include {OURS!r} and be among {', '.join(IMPLEMENTATIONS)}, "
                f"got {', '.join(self.implementations)}."
            )
        try:
            device = torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"device {self.device!r} is not a torch device: {error}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} was asked for but CUDA is not available here.")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}.")
        if self.cpu_memory and device.type == "cpu" and not os.path.exists("/proc/self/clear_refs"):
            raise ValueError("--cpu-memory reads the peak resident size from /proc (Linux); leave it off here.")


# --- FLOPs -------------------------------------------------------------------------------------------------------


def num_tokens(config: PretrainedConfig) -> int:
    """Sequence length at the configured resolution: the patch grid plus the class token if there is one."""
    grid_h, grid_w = config.grid_size
    return grid_h * grid_w + (1 if config.classifier == "token" else 0)


def forward_flops(config: PretrainedConfig, embedding: nn.Module | None = None) -> dict[str, int]:
    """Forward FLOPs per image (2 × MACs of every matmul and convolution), by part.

    The encoder and head are counted from the config. A plain ViT's patch embedding is one matmul per patch; a
    hybrid's ResNet is counted by running `embedding` (its token embedding module) once under FlopCounterMode.
    """
    hidden, mlp = config.hidden_size, config.intermediate_size
    tokens, layers = num_tokens(config), config.num_hidden_layers
    grid_h, grid_w = config.grid_size
    if is_hybrid(config):
        if embedding is None:
            raise ValueError("A hybrid's token embedding FLOPs are counted on the module: pass `embedding`.")
        height, width = to_pair(config.image_size)
        sample = torch.zeros(1, config.num_channels, height, width, device=next(embedding.parameters()).device)
        patch_embedding = count_flops(embedding, sample)
    else:
        patch_h, patch_w = to_pair(config.patch_size)
        patch_embedding = 2 * grid_h * grid_w * (config.num_channels * patch_h * patch_w) * hidden
    width = hidden
    head = 0
    if config.representation_size:
        head += 2 * hidden * config.representation_size
        width = config.representation_size
    head += 2 * width * config.num_labels
    return {
        "patch_embedding": patch_embedding,
        "qkv": layers * 2 * tokens * hidden * 3 * hidden,
        "attention_scores": layers * 2 * tokens * tokens * hidden,
        "attention_values": layers * 2 * tokens * tokens * hidden,
        "attention_proj": layers * 2 * tokens * hidden * hidden,
        "mlp": layers * 2 * 2 * tokens * hidden * mlp,
        "head": head,
    }


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward of `module`, as torch's FlopCounterMode counts them (2 × MACs)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 3) -> float:
    """FLOP/s of the fastest of `repeats` (size × size) @ (size × size) matmuls: the ceiling that MFU divides by."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# --- The implementations -----------------------------------------------------------------------------------------


def benchmark_config(preset: str, smoke: bool = False) -> PretrainedConfig:
    """The preset's config; with `smoke`, shrunk to a tiny model of the same kind.

    A hybrid keeps its ResNet and gets patch size 1 and a 2 × 2 token grid, the smallest image its stride allows.
    """
    if not smoke:
        return create_config(preset)
    if not is_hybrid(create_config(preset)):
        return create_config(preset, **SMOKE_FIELDS)
    stride_h, stride_w = create_config(preset, patch_size=1).token_stride
    return create_config(preset, **{**SMOKE_FIELDS, "patch_size": 1, "image_size": (2 * stride_h, 2 * stride_w)})


def build_ours(config: PretrainedConfig, attn_implementation: str) -> nn.Module:
    """hf_vit's classification model for `config`, through the Auto class as users build it."""
    return AutoModelForImageClassification.from_config(config, attn_implementation=attn_implementation)


def build_transformers(config: PretrainedConfig, attn_implementation: str) -> nn.Module:
    """transformers' ViTForImageClassification with our shapes and numerics (LayerNorm eps, activation)."""
    if is_hybrid(config):
        raise PeerUnavailable("transformers has no ViT-Hybrid (deprecated, then deleted in transformers v5)")
    if config.classifier != "token":
        raise PeerUnavailable(f"transformers' ViT only classifies the class token, not {config.classifier!r}")
    if config.representation_size:
        raise PeerUnavailable("transformers' ViTForImageClassification has no pre-logits layer")
    try:
        from transformers import ViTConfig, ViTForImageClassification
    except ImportError:
        raise PeerUnavailable("this transformers has no ViT") from None
    peer_config = ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps,
        image_size=to_pair(config.image_size),
        patch_size=to_pair(config.patch_size),
        num_channels=config.num_channels,
        qkv_bias=config.qkv_bias,
        num_labels=config.num_labels,
        attn_implementation=attn_implementation,
    )
    return ViTForImageClassification(peer_config)


def build_timm(config: PretrainedConfig, attn_implementation: str) -> nn.Module:
    """timm's VisionTransformer with our shapes: plain, or with a BiT ResNet embedding for hybrids."""
    if config.representation_size:
        raise PeerUnavailable("timm's VisionTransformer has no pre-logits layer")
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise PeerUnavailable("timm is not installed") from None
    act_layers = {"gelu": nn.GELU, "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh")}
    if config.hidden_act not in act_layers:
        raise PeerUnavailable(f"no timm activation set up for hidden_act {config.hidden_act!r}")
    token = config.classifier == "token"
    fields: dict[str, Any] = dict(
        img_size=to_pair(config.image_size),
        patch_size=to_pair(config.patch_size),
        in_chans=config.num_channels,
        num_classes=config.num_labels,
        global_pool="token" if token else "avg",
        class_token=token,
        fc_norm=False,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        qkv_bias=config.qkv_bias,
        pos_drop_rate=config.hidden_dropout_prob,
        proj_drop_rate=config.hidden_dropout_prob,
        attn_drop_rate=config.attention_probs_dropout_prob,
        drop_path_rate=config.drop_path_rate,
        act_layer=act_layers[config.hidden_act],
    )
    if is_hybrid(config):
        fields["embed_layer"] = timm_hybrid_embedding(config)
    model = VisionTransformer(**fields)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = attn_implementation != "eager"
    return model


def timm_hybrid_embedding(config: PretrainedConfig) -> Callable[..., nn.Module]:
    """timm's hybrid token embedding: a BiT ResNetV2 (standardised convs, TF-SAME padding) as in its R50+ViT.

    `resnet_layers` gives the units per stage (empty: the root alone, as R+ViT-Ti), `resnet_width_factor` the width.
    """
    layers = getattr(config, "resnet_layers", None)
    if layers is None:
        raise PeerUnavailable("the hybrid config has no resnet_layers to build timm's ResNetV2 from")
    from timm.layers import StdConv2dSame
    from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem
    from timm.models.vision_transformer_hybrid import HybridEmbed

    conv_layer = partial(StdConv2dSame, eps=1e-8)
    if layers:
        backbone = ResNetV2(
            layers=tuple(layers),
            width_factor=getattr(config, "resnet_width_factor", 1),
            num_classes=0,
            global_pool="",
            in_chans=config.num_channels,
            preact=False,
            stem_type="same",
            conv_layer=conv_layer,
        )
    else:
        backbone = create_resnetv2_stem(config.num_channels, stem_type="same", preact=False, conv_layer=conv_layer)
    return partial(HybridEmbed, backbone=backbone)


BUILDERS: dict[str, Callable[[PretrainedConfig, str], nn.Module]] = {
    OURS: build_ours,
    "transformers": build_transformers,
    "timm": build_timm,
}


def logits_of(output: Any) -> torch.Tensor:
    """timm returns logits; the transformers-style models return an output with `.logits`."""
    return output if isinstance(output, torch.Tensor) else output.logits


# --- Measuring ---------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class Contender:
    """One implementation, ready to run steps of one mode; `runs` collects images/s per repeat."""

    name: str
    model: nn.Module
    step: Callable[[], None]
    parameters: int
    runs: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None


def make_step(
    model: nn.Module, mode: str, settings: Settings, pixel_values: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    """One inference forward, or one training step (forward, cross-entropy, backward, plain SGD update).

    bf16/fp16 run under torch.autocast with fp32 weights (mixed precision, as users train); fp16 has no loss scaler,
    which changes no timing.
    """
    device = pixel_values.device
    autocast = partial(
        torch.autocast, device_type=device.type, dtype=DTYPES[settings.dtype], enabled=settings.dtype != "fp32"
    )
    runner = torch.compile(model, backend=settings.compile_backend) if settings.compile else model
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast():
                logits_of(runner(pixel_values))

        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def train() -> None:
        with autocast():
            loss = F.cross_entropy(logits_of(runner(pixel_values)).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train


def time_steps(step: Callable[[], None], iters: int, device: torch.device) -> float:
    """Seconds for `iters` steps, the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return time.perf_counter() - start


def cuda_peak_memory(contender: Contender, device: torch.device) -> int:
    """Peak bytes one step needs: what it allocates beyond what is resident before it, plus its own weights.

    All implementations stay resident together, so the raw high-water mark would include the others' weights.
    """
    synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    contender.step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - resident + parameter_bytes(contender.model)


def read_status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


# glibc would keep freed blocks in its heap (and raise its mmap threshold as it goes), so resident memory would
# follow the history of the process rather than the live tensors; with a fixed threshold and no trim threshold every
# large tensor is its own mapping, returned on free, and resident memory tracks the tensors alive.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def cpu_peak_rss_growth(preset: str, implementation: str, mode: str, settings: Settings) -> int:
    """Peak resident-memory growth of two steps, plus the model's weights, in bytes (Linux only).

    Measured in a fresh process per implementation with `MALLOC_ENV`, after one untimed step (one-off caches):
    the kernel's high-water mark is reset, two more steps run. Checked against torch.profiler's memory timeline:
    for ViT-Ti/16 training at batch 8 both give 251 MiB for every implementation.
    """
    saved = {name: os.environ.get(name) for name in MALLOC_ENV}
    os.environ.update(MALLOC_ENV)  # a spawned child takes the environment at its start, which glibc reads
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_child_peak_rss_growth, (preset, implementation, mode, asdict(settings)))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _child_peak_rss_growth(preset: str, implementation: str, mode: str, settings_fields: dict[str, Any]) -> int:
    settings = Settings(**settings_fields)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config = benchmark_config(preset, settings.smoke)
    model = BUILDERS[implementation](config, settings.attn_implementation)
    pixel_values, labels = make_inputs(config, settings, torch.device("cpu"))
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = make_step(model, mode, settings, pixel_values, labels)
    step()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    before = read_status_kib("VmRSS")
    step()
    step()
    return (read_status_kib("VmHWM") - before) * 1024 + parameter_bytes(model)


def write_profile(contender: Contender, preset: str, mode: str, device: torch.device, folder: str) -> Path:
    """torch.profiler's top operators of two steps, by self time, overall and by input shape: where time goes."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with profile(activities=activities, record_shapes=True) as profiler:
        for _ in range(2):
            contender.step()
        synchronize(device)
    averages = profiler.key_averages()
    by_shape = profiler.key_averages(group_by_input_shape=True)
    path = Path(folder) / f"{preset.replace('/', '-')}_{mode}_{contender.name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"{contender.name} {preset} {mode}, two steps\n\n"
        + averages.table(sort_by=sort_by, row_limit=25, max_name_column_width=50)
        + "\n\nby input shape\n\n"
        + by_shape.table(sort_by=sort_by, row_limit=25, max_name_column_width=40, max_shapes_column_width=80)
    )
    return path


def make_inputs(
    config: PretrainedConfig, settings: Settings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels, the same for every implementation."""
    generator = torch.Generator().manual_seed(settings.seed)
    height, width = to_pair(config.image_size)
    pixel_values = torch.randn(settings.batch_size, config.num_channels, height, width, generator=generator)
    labels = torch.randint(0, config.num_labels, (settings.batch_size,), generator=generator)
    if settings.channels_last:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    return pixel_values.to(device), labels.to(device)


def run_benchmark(
    presets: Sequence[str], settings: Settings, log: Callable[[str], None] = lambda message: None
) -> dict[str, Any]:
    """Measure every preset in every mode for every implementation; the report is plain JSON-able data."""
    settings = settings.resolve()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    presets = [resolve_preset(name) for name in presets]
    log(f"measuring the peak: {settings.peak_matmul_size}² {settings.dtype} matmuls on {device}")
    peaks = [measure_peak_flops(device, DTYPES[settings.dtype], settings.peak_matmul_size)]
    results = []
    for preset in presets:
        results.extend(benchmark_preset(preset, settings, device, peaks, log))
    peak = max(peaks)
    for result in results:
        for measured in result["implementations"].values():
            measured["mfu"] = measured["images_per_s"] * result["flops_per_step_per_image"] / peak
    return {
        "settings": asdict(settings),
        "environment": environment(device),
        "peak_flops": peak,
        "peak_flops_samples": peaks,
        "peak_flops_source": f"best {settings.peak_matmul_size}x{settings.peak_matmul_size} {settings.dtype} matmul "
        f"on {device}, measured {len(peaks)} times during the run",
        "results": results,
    }


def benchmark_preset(
    preset: str, settings: Settings, device: torch.device, peaks: list[float], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Build every implementation of `preset` and time them in turns; appends peak-FLOP/s samples to `peaks`."""
    config = benchmark_config(preset, settings.smoke)
    models: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name in settings.implementations:
        try:
            models[name] = BUILDERS[name](config, settings.attn_implementation).to(device)
        except PeerUnavailable as reason:
            skipped[name] = str(reason)
            log(f"{preset}: skipping {name}: {reason}")
    if settings.channels_last:
        models = {name: model.to(memory_format=torch.channels_last) for name, model in models.items()}
    embedding = models[OURS].vit.embeddings.patch_embeddings if is_hybrid(config) else None
    flops = forward_flops(config, embedding)
    flops_per_image = sum(flops.values())
    pixel_values, labels = make_inputs(config, settings, device)
    results = []
    for mode in settings.modes:
        contenders = [
            Contender(
                name,
                model,
                make_step(model, mode, settings, pixel_values, labels),
                sum(p.numel() for p in model.parameters()),
            )
            for name, model in models.items()
        ]
        for contender in contenders:
            log(f"{preset} {mode}: warming up {contender.name}")
            for _ in range(settings.warmup):
                contender.step()
        for repeat in range(settings.repeats):
            turn = repeat % len(contenders)
            for contender in contenders[turn:] + contenders[:turn]:
                seconds = time_steps(contender.step, settings.iters, device)
                contender.runs.append(settings.batch_size * settings.iters / seconds)
            peaks.append(measure_peak_flops(device, DTYPES[settings.dtype], settings.peak_matmul_size))
            log(f"{preset} {mode}: repeat {repeat + 1}/{settings.repeats}")
        if settings.profile_dir:
            for contender in contenders:
                path = write_profile(contender, preset, mode, device, settings.profile_dir)
                log(f"{preset} {mode}: top ops of {contender.name} in {path}")
        for contender in contenders:
            if device.type == "cuda":
                contender.peak_memory_bytes = cuda_peak_memory(contender, device)
            elif settings.cpu_memory:
                log(f"{preset} {mode}: peak memory of {contender.name} in a fresh process")
                contender.peak_memory_bytes = cpu_peak_rss_growth(preset, contender.name, mode, settings)
        results.append(summarise(preset, mode, contenders, skipped, flops, flops_per_image, settings, device))
    return results


def summarise(
    preset: str,
    mode: str,
    contenders: list[Contender],
    skipped: dict[str, str],
    flops: dict[str, int],
    flops_per_image: int,
    settings: Settings,
    device: torch.device,
) -> dict[str, Any]:
    """One (preset, mode) row group: medians and ratios ours / each peer (MFU is added once the peak is known)."""
    step_flops = flops_per_image * (3 if mode == "train" else 1)
    implementations = {}
    for contender in contenders:
        median = statistics.median(contender.runs)
        implementations[contender.name] = {
            "images_per_s": median,
            "runs_images_per_s": contender.runs,
            "mfu": None,
            "peak_memory_bytes": contender.peak_memory_bytes,
            "parameters": contender.parameters,
        }
    ours = implementations[OURS]
    ratios = {}
    for name, result in implementations.items():
        if name == OURS:
            continue
        memory = None
        if ours["peak_memory_bytes"] and result["peak_memory_bytes"]:
            memory = ours["peak_memory_bytes"] / result["peak_memory_bytes"]
        ratios[name] = {"throughput": ours["images_per_s"] / result["images_per_s"], "peak_memory": memory}
    memory_method = "n/a on CPU (pass --cpu-memory for peak RSS growth in a fresh process)"
    if device.type == "cuda":
        memory_method = "torch.cuda.max_memory_allocated during one step, beyond resident, plus own weights"
    elif settings.cpu_memory:
        memory_method = (
            "peak RSS growth (VmHWM) of two steps in a fresh process with glibc caching off, plus own weights"
        )
    return {
        "model": preset + (" (smoke)" if settings.smoke else ""),
        "mode": mode,
        "flops_per_image": flops_per_image,
        "flops_per_image_by_part": flops,
        "flops_per_step_per_image": step_flops,
        "memory_method": memory_method,
        "implementations": implementations,
        "ratios": ratios,
        "skipped": skipped,
    }


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, so that a table can be traced to where it was measured."""
    versions = {}
    for package in ("torch", "transformers", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "device": hardware,
        "torch_threads": torch.get_num_threads(),
    }


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- Reporting ---------------------------------------------------------------------------------------------------


def format_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (ratios are ours / peer: above 1 is faster for throughput, or more memory)."""
    settings, env = report["settings"], report["environment"]
    lines = [
        f"device: {env['device']} ({settings['device']}, {env['torch_threads']} threads), dtype {settings['dtype']}, "
        f"batch {settings['batch_size']}, attention {settings['attn_implementation']}, "
        f"compile {settings['compile']}, channels_last {settings['channels_last']}; "
        f"median of {settings['repeats']} repeats × {settings['iters']} iters; "
        f"peak {report['peak_flops'] / 1e12:.3f} TFLOP/s ({report['peak_flops_source']})",
        "",
        "| model | mode | GFLOPs/img | implementation | images/s | ours / peer | peak memory (MiB) | ours / peer "
        "| MFU | params (M) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for result in report["results"]:
        for name, measured in result["implementations"].items():
            ratio = result["ratios"].get(name, {})
            memory = measured["peak_memory_bytes"]
            lines.append(
                f"| {result['model']} | {result['mode']} | {result['flops_per_image'] / 1e9:.3g} | {name} "
                f"| {measured['images_per_s']:.2f} | {format_ratio(ratio.get('throughput'))} "
                f"| {f'{memory / 2**20:.0f}' if memory else 'n/a'} | {format_ratio(ratio.get('peak_memory'))} "
                f"| {measured['mfu']:.1%} | {measured['parameters'] / 1e6:.2f} |"
            )
        for name, reason in result["skipped"].items():
            note = f"- {result['model']}: {name} skipped: {reason}."
            if note not in notes:
                notes.append(note)
    if report["results"]:
        lines += ["", f"memory: {report['results'][0]['memory_method']}"]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def format_ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "–"


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")


def settings_from(settings_class: type, args: Any, **overrides: Any) -> Any:
    """A suite's settings dataclass from its parsed flags: every field with a flag of the same name, then
    `overrides` for the fields whose flags need converting."""
    values = {item.name: getattr(args, item.name) for item in fields(settings_class) if hasattr(args, item.name)}
    return settings_class(**{**values, **overrides})


def report_suite(
    run: Callable[..., dict[str, Any]],
    settings: Any,
    format_markdown: Callable[[dict[str, Any]], str],
    json_path: str | None = None,
    markdown_path: str | None = None,
) -> int:
    """What every suite's command line does with its run: progress on stderr, the Markdown table on stdout, the
    report in the files asked for. A ValueError (a setting this machine cannot run) is one `error:` line, status 2."""
    try:
        report = run(settings, log=lambda message: print(message, file=sys.stderr, flush=True))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    markdown = format_markdown(report)
    print(markdown, end="")
    if json_path:
        write_json(report, json_path)
    if markdown_path:
        Path(markdown_path).write_text(markdown)
    return 0


__all__ = [
    "BUILDERS",
    "IMPLEMENTATIONS",
    "PeerUnavailable",
    "Settings",
    "count_flops",
    "format_markdown",
    "forward_flops",
    "measure_peak_flops",
    "report_suite",
    "settings_from",
    "run_benchmark",
    "write_json",
]
