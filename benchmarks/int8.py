"""int8 against float32 inference of one trained classifier: held-out accuracy of both, and images/s on the CPU.

The int8 model is `hf_vit.tools.quantize.quantize_int8` of the float one (int8 Linear weights, inputs quantised per
batch). Accuracy: both evaluated by `hf_vit.training.evaluation.evaluate_classifier` on the split that
scripts/pretrain.py and finetune.py hold out (for the default digits: the same 180 images). Speed: forward passes
of one batch of held-out images under `torch.inference_mode`, the two models taking turns within every repeat (the
first one rotating) so that a machine that gets busier slows both alike; the medians over repeats, and int8 / fp32.

python scripts/benchmark.py --suite int8                            # the README's model (outputs/pretrain)
python scripts/benchmark.py --suite int8 --model outputs/finetune --batch-size 32 --threads 1
"""

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.benchmarking import cpu_model, report_suite, settings_from

VARIANTS = ("fp32", "int8")


@dataclass
class Int8Settings:
    """What to measure; `smoke` shrinks it to a check that it runs (on an untrained tiny model without `model`)."""

    model: str | None = "outputs/pretrain"
    batch_size: int = 64
    warmup: int = 2
    iters: int = 5
    repeats: int = 5
    threads: int | None = None
    smoke: bool = False

    def resolve(self) -> "Int8Settings":
        settings = Int8Settings(**asdict(self))
        if self.smoke:
            settings.batch_size, settings.warmup, settings.iters, settings.repeats = 4, 1, 1, 1
        for name in ("batch_size", "iters", "repeats"):
            if getattr(settings, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(settings, name)}.")
        if settings.warmup < 0 or (settings.threads is not None and settings.threads < 1):
            raise ValueError("--warmup must be non-negative and --threads at least 1.")
        return settings


def tiny_model_folder(folder: Path) -> str:
    """An untrained tiny ViT for the 10 digits at 32 px, saved in `folder` (what --smoke measures by default)."""
    import hf_vit

    overrides = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8)
    model = hf_vit.create_model("ViT-Ti/16", num_labels=10, image_size=32, **overrides)
    model.save_pretrained(folder)
    hf_vit.create_image_processor(model.config).save_pretrained(folder)
    return str(folder)


def held_out_batch(model_name: str, processor, batch_size: int) -> torch.Tensor:
    """`batch_size` held-out images (repeated if the split is smaller), as the model's processor prepares them."""
    from hf_vit.training.arguments import EvaluationArguments
    from hf_vit.training.augmentation import ProcessorTransform
    from hf_vit.training.data import load_image_data
    from hf_vit.training.evaluation import make_loader

    data = load_image_data(EvaluationArguments(model=model_name))
    loader = make_loader(data.eval, ProcessorTransform(processor), data, 256)
    pixels = torch.cat([batch["pixel_values"] for batch in loader])
    return pixels[torch.arange(batch_size) % len(pixels)]


def images_per_second(model: torch.nn.Module, pixels: torch.Tensor, iters: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(iters):
            model(pixel_values=pixels)
    return iters * len(pixels) / (time.perf_counter() - start)


def run_int8(settings: Int8Settings, log=lambda message: None) -> dict[str, Any]:
    """Accuracy and speed of the float and int8 models; the report is plain JSON-able data."""
    from hf_vit.tools.quantize import quantize_int8
    from hf_vit.training.evaluation import evaluate_classifier, load_classifier

    settings = settings.resolve()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory() as scratch:
        name = settings.model or tiny_model_folder(Path(scratch))
        if not Path(name).is_dir():
            raise ValueError(f"--model {name}: no such folder; train it first (python scripts/pretrain.py).")
        accuracy = {}
        for variant in VARIANTS:
            results = evaluate_classifier(model=name, device="cpu", int8=variant == "int8")
            accuracy[variant] = results["eval_accuracy"]
            log(f"{variant}: held-out accuracy {accuracy[variant]:.4f} on {results['eval_samples']} images")
        model, processor, _ = load_classifier(name)
        models = {"fp32": model, "int8": quantize_int8(model)}
        pixels = held_out_batch(name, processor, settings.batch_size)
    for variant in VARIANTS:
        for _ in range(settings.warmup):
            images_per_second(models[variant], pixels, 1)
    speed: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    load_before = os.getloadavg()[0]
    for repeat in range(settings.repeats):
        order = VARIANTS[repeat % 2 :] + VARIANTS[: repeat % 2]
        for variant in order:
            speed[variant].append(images_per_second(models[variant], pixels, settings.iters))
        log(f"repeat {repeat + 1}: " + ", ".join(f"{v} {speed[v][-1]:.1f} images/s" for v in VARIANTS))
    medians = {variant: statistics.median(values) for variant, values in speed.items()}
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {
        "settings": asdict(settings) | {"model": settings.model or "untrained tiny ViT (smoke)"},
        "environment": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "engine": torch.backends.quantized.engine,
            "load_average": [load_before, os.getloadavg()[0]],
        },
        "linear_weight_share": linear / sum(p.numel() for p in model.parameters()),
        "accuracy": accuracy,
        "accuracy_difference": accuracy["int8"] - accuracy["fp32"],
        "images_per_s": medians,
        "speed_ratio": medians["int8"] / medians["fp32"],
        "runs": speed,
    }


def format_markdown(report: dict[str, Any]) -> str:
    settings, env = report["settings"], report["environment"]
    lines = [
        f"cpu: {env['cpu']}, {env['cores']} cores, {env['threads']} threads, torch {env['torch']} ({env['engine']}); "
        f"{settings['model']}, batch {settings['batch_size']}, median of {settings['repeats']} interleaved repeats of "
        f"{settings['iters']} passes; load average {min(env['load_average']):.1f}-{max(env['load_average']):.1f}; "
        f"Linear layers hold {report['linear_weight_share']:.1%} of the weights",
        "",
        "| weights | held-out accuracy | images/s | int8 / fp32 |",
        "|---|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        ratio = f"{report['speed_ratio']:.2f}x" if variant == "int8" else ""
        lines.append(
            f"| {variant} | {report['accuracy'][variant]:.4f} | {report['images_per_s'][variant]:.1f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmark.py --suite int8", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="A trained classifier folder. Default: outputs/pretrain.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="Untimed passes per model.")
    parser.add_argument("--iters", type=int, default=5, help="Timed passes per model and repeat.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads. Default: torch's.")
    parser.add_argument("--json", default=None, metavar="PATH", help="Also write the full report here.")
    parser.add_argument(
        "--smoke", action="store_true", help="Batch 4, one pass: checks it runs (an untrained tiny model by default)."
    )
    args = parser.parse_args(argv)
    settings = settings_from(Int8Settings, args, model=args.model or (None if args.smoke else "outputs/pretrain"))
    return report_suite(run_int8, settings, format_markdown, args.json)
