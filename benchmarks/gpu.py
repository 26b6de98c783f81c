"""Every GPU figure in one command: `python scripts/benchmark.py --suite gpu` (under 8 minutes on one H100/H200).

Sections, most important first; a section starts only while the run is within `--budget-s` (default 270 s), so
the whole suite ends within that plus one section (about 3 minutes for the longest, compiling ViT-B/16's three
implementations for inference and training):

1. bf16 against fp32: hf_vit's ViT-B/16 and R50+ViT-B/16 logits under bf16 autocast against fp32, on the same
   random images (the zero-initialised head replaced by a random one): relative L2 error of the logits at most
   `BF16_TOLERANCE` (0.007 measured on a CPU) and the same top-1 class for at least 90% of the images.
2. The data pipeline's device side: a batch of 224x224 images copied to the device and normalised there, as uint8
   from pinned memory (hf_vit's pipeline: `Normalize` on the device) against float32 normalised on the CPU, from
   pinned and from pageable memory. Images/s and GB/s of the copy.
3. ViT-B/16 and R50+ViT-B/16 against timm and transformers (benchmarks.benchmarking: same shapes, interleaved,
   MFU against a bf16 matmul peak measured in the run), bf16 autocast, inference and training, eager, SDPA.
4. The same with flash attention (transformers' `flash_attention_2`, hf_vit and transformers only), where
   flash-attn is installed.
5. The same under `torch.compile`: ViT-B/16 (all three), then R50+ViT-B/16 (hf_vit and timm).

It writes the JSON report and a markdown table per section. `--smoke` runs every section on the CPU with tiny
models, one step and `torch.compile(backend="eager")`, which is what the tests check.
"""

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from benchmarks import benchmarking
from benchmarks.benchmarking import (
    Settings,
    benchmark_config,
    environment,
    report_suite,
    run_benchmark,
    settings_from,
    synchronize,
)
from hf_vit.models.configuration import to_pair
from hf_vit.training.transforms import Normalize

PRESETS = ("ViT-B/16", "R50+ViT-B/16")
SMOKE_PRESETS = ("ViT-B/16", "R+ViT-Ti/16")  # a hybrid with the ResNet stem only: seconds on a CPU
BF16_TOLERANCE = 0.02  # relative L2 error of bf16-autocast logits against fp32
BF16_TOP1_AGREEMENT = 0.9


@dataclass
class GpuSettings:
    device: str = "cuda"
    batch_size: int = 256
    warmup: int = 5
    iters: int = 10
    repeats: int = 3
    budget_s: float = 270.0
    presets: tuple[str, str] = PRESETS  # a plain ViT, then a hybrid
    smoke: bool = False

    def resolve(self) -> "GpuSettings":
        settings = GpuSettings(**asdict(self))
        if self.smoke:
            settings.device, settings.batch_size, settings.warmup, settings.iters, settings.repeats = "cpu", 2, 0, 1, 1
            if tuple(self.presets) == PRESETS:
                settings.presets = SMOKE_PRESETS
        elif not torch.cuda.is_available():
            raise ValueError("the GPU suite needs CUDA; --smoke runs it on the CPU with tiny models.")
        for name in ("batch_size", "iters", "repeats"):
            if getattr(settings, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(settings, name)}.")
        return settings


def flash_attention_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


# --- Sections ----------------------------------------------------------------------------------------------------


def bf16_against_fp32(settings: GpuSettings) -> dict[str, Any]:
    """Logits of hf_vit under bf16 autocast against fp32, for each preset."""
    device = torch.device(settings.device)
    results = {}
    for preset in settings.presets:
        config = benchmark_config(preset, settings.smoke)
        model = benchmarking.build_ours(config, "sdpa").to(device).eval()
        generator = torch.Generator(device="cpu").manual_seed(0)
        with torch.no_grad():
            model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator) * 0.5)
        height, width = to_pair(config.image_size)
        pixels = (torch.rand(32, 3, height, width, generator=generator) * 2 - 1).to(device)
        with torch.inference_mode():
            reference = model(pixels).logits.float()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                low = model(pixels).logits.float()
        error = ((low - reference).norm() / reference.norm()).item()
        agreement = (low.argmax(-1) == reference.argmax(-1)).float().mean().item()
        results[preset] = {
            "relative_l2_error": error,
            "top1_agreement": agreement,
            "passed": error <= BF16_TOLERANCE and agreement >= BF16_TOP1_AGREEMENT,
        }
        del model
    return {"tolerance": {"relative_l2_error": BF16_TOLERANCE, "top1_agreement": BF16_TOP1_AGREEMENT}, **results}


def device_side_data(settings: GpuSettings) -> dict[str, Any]:
    """Images/s of getting a batch onto the device ready for the model: uint8 + normalise there, or float32."""
    device = torch.device(settings.device)
    size = 32 if settings.smoke else 224
    batch = torch.randint(0, 256, (settings.batch_size, 3, size, size), dtype=torch.uint8)
    normalize = Normalize()
    host_float = normalize(batch)
    pin = device.type == "cuda"
    uint8_pinned = batch.pin_memory() if pin else batch
    float_pinned = host_float.pin_memory() if pin else host_float
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "uint8, pinned, normalised on the device": lambda: normalize(
            uint8_pinned.to(device, non_blocking=True), torch.bfloat16
        ),
        "float32 normalised on the CPU, pinned": lambda: float_pinned.to(device, non_blocking=True),
        "float32 normalised on the CPU, pageable": lambda: host_float.to(device),
    }
    results = {}
    for name, step in variants.items():
        step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(settings.iters * 5):
            step()
        synchronize(device)
        seconds = (time.perf_counter() - start) / (settings.iters * 5)
        copied = (batch if name.startswith("uint8") else host_float).nbytes
        results[name] = {"images_per_s": settings.batch_size / seconds, "copy_gb_per_s": copied / seconds / 1e9}
    return {"image_size": size, "batch_size": settings.batch_size, "results": results}


def model_section(
    settings: GpuSettings, presets: tuple[str, ...], implementations: tuple[str, ...], **fields: Any
) -> dict[str, Any]:
    """benchmarks.benchmarking's interleaved comparison with the suite's sizes, bf16 autocast."""
    model_settings = Settings(
        device=settings.device,
        dtype="bf16",
        batch_size=settings.batch_size,
        warmup=settings.warmup,
        iters=settings.iters,
        repeats=settings.repeats,
        implementations=implementations,
        smoke=settings.smoke,
        compile_backend="eager" if settings.smoke else "inductor",
        **fields,
    )
    return run_benchmark(list(presets), model_settings)


def plan(settings: GpuSettings) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """(name, kind, run) of every section, most important first."""
    everyone = benchmarking.IMPLEMENTATIONS
    presets = tuple(settings.presets)
    plain, hybrid = presets[:1], presets[1:]
    # Smoke runs trace hf_vit's inference only under torch.compile: dynamo's tracing is most of their time.
    compiled: dict[str, Any] = {"compile": True, "modes": ("infer",) if settings.smoke else benchmarking.MODES}
    compiled_plain = ("hf_vit",) if settings.smoke else everyone
    compiled_hybrid = ("hf_vit",) if settings.smoke else ("hf_vit", "timm")
    sections: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("bf16 against fp32 (hf_vit)", "bf16", lambda: bf16_against_fp32(settings)),
        ("data pipeline, device side", "data", lambda: device_side_data(settings)),
        ("eager, sdpa", "models", lambda: model_section(settings, presets, everyone)),
    ]
    if flash_attention_available():
        sections.append(
            (
                "eager, flash_attention_2",
                "models",
                lambda: model_section(
                    settings, presets, ("hf_vit", "transformers"), attn_implementation="flash_attention_2"
                ),
            )
        )
    sections += [
        (
            f"torch.compile, sdpa: {plain[0]}",
            "models",
            lambda: model_section(settings, plain, compiled_plain, **compiled),
        ),
        (
            f"torch.compile, sdpa: {hybrid[0]}",
            "models",
            lambda: model_section(settings, hybrid, compiled_hybrid, **compiled),
        ),
    ]
    return sections


def run_gpu_suite(settings: GpuSettings, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    settings = settings.resolve()
    start = time.monotonic()
    sections, skipped = [], []
    if not flash_attention_available():
        skipped.append("flash_attention_2: flash-attn is not installed")
    for name, kind, run in plan(settings):
        elapsed = time.monotonic() - start
        if elapsed > settings.budget_s:
            skipped.append(f"{name}: not started, {elapsed:.0f} s were spent of the {settings.budget_s:.0f} s budget")
            continue
        log(f"{name} (at {elapsed:.0f} s)")
        section_start = time.monotonic()
        report = run()
        sections.append({"name": name, "kind": kind, "seconds": time.monotonic() - section_start, "report": report})
        if settings.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {
        "settings": asdict(settings),
        "environment": environment(torch.device(settings.device)),
        "sections": sections,
        "skipped": skipped,
        "seconds": time.monotonic() - start,
    }


# --- Reporting ---------------------------------------------------------------------------------------------------


def format_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"device: {env['device']}; torch {env['versions']['torch']}; {report['seconds']:.0f} s in all", ""]
    for section in report["sections"]:
        lines += [f"### {section['name']} ({section['seconds']:.0f} s)", ""]
        body = section["report"]
        if section["kind"] == "models":
            lines.append(benchmarking.format_markdown(body))
        elif section["kind"] == "bf16":
            tolerance = body["tolerance"]
            lines += [
                f"tolerance: relative L2 error <= {tolerance['relative_l2_error']}, top-1 agreement >= "
                f"{tolerance['top1_agreement']:.0%}",
                "",
                "| model | relative L2 error | top-1 agreement | within tolerance |",
                "|---|---:|---:|---|",
            ]
            for preset, result in body.items():
                if preset == "tolerance":
                    continue
                lines.append(
                    f"| {preset} | {result['relative_l2_error']:.4f} | {result['top1_agreement']:.0%} "
                    f"| {'yes' if result['passed'] else 'NO'} |"
                )
            lines.append("")
        else:
            lines += [
                f"batch {body['batch_size']} of {body['image_size']}x{body['image_size']}",
                "",
                "| batch to the device | images/s | copy GB/s |",
                "|---|---:|---:|",
            ]
            for name, result in body["results"].items():
                lines.append(f"| {name} | {result['images_per_s']:.0f} | {result['copy_gb_per_s']:.1f} |")
            lines.append("")
    lines += [f"- skipped: {reason}." for reason in report["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmark.py --suite gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=270.0, help="No section starts after this many seconds.")
    parser.add_argument("--json", default="gpu_suite.json", metavar="PATH", help="The full report (JSON).")
    parser.add_argument("--markdown", default="gpu_suite.md", metavar="PATH", help="The tables (markdown).")
    parser.add_argument("--smoke", action="store_true", help="Every section on the CPU, tiny models, one step.")
    args = parser.parse_args(argv)
    settings = settings_from(GpuSettings, args)
    return report_suite(run_gpu_suite, settings, format_markdown, args.json, args.markdown)
