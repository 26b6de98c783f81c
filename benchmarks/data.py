"""Images/s per CPU core of training input pipelines on a corpus of real photos, side by side in one run.

The corpus: real photos that ship with scikit-learn (china, flower) and scikit-image (astronaut, chelsea, coffee,
rocket, hubble_deep_field, retina, the two stereo_motorcycle views), cut into ImageNet-like JPEGs. Image i takes
photo i mod 10, a window of the 4:3 aspect ratio (3:4 for every fourth image, as ImageNet's portraits) covering
60-100% of the largest such window at a random place, resized with Lanczos to 500x375 (375x500), flipped
horizontally at random, and saved at JPEG quality 90 (PIL's default 4:2:0 chroma subsampling). Seeded: the same
corpus on every machine.

Each pipeline turns a batch of those JPEG bytes into a batch for the model: decode, the paper's inception crop
(area 5-100%) and a random flip at the output size, collate. Normalisation happens where each pipeline puts it:
hf_vit and timm (with its prefetcher) hand uint8 batches to the device and normalise there, so it is not CPU
work; torchvision's usual float pipeline (hf_vit's before) and transformers' image processor normalise on the CPU.
transformers' processor has no random crop or flip: it resizes the whole image (what users run it for).

Per core: one process, one thread (torch.set_num_threads(1); PIL is single-threaded). The pipelines take turns
within every repeat (the first one rotating) on the same images, so a machine that gets busier slows all alike;
the report gives medians over repeats of images per second of wall time and per second of the process's CPU time
(which a shared machine disturbs less), and ratios hf_vit / pipeline.
"""

import argparse
import io
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.benchmarking import cpu_model, report_suite, settings_from
from hf_vit.training.transforms import RandomResizedCrop

OURS = "hf_vit"
PIPELINES = (OURS, "hf_vit-fast-decode", "torchvision", "timm", "transformers")
CORPUS_SIZE = (500, 375)


@dataclass
class DataSettings:
    """What to measure; `smoke` shrinks everything to a check that it runs."""

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.05, 1.0)
    corpus_size: int = 256
    batch_size: int = 32
    batches: int = 2
    repeats: int = 5
    seed: int = 0
    pipelines: tuple[str, ...] = PIPELINES
    smoke: bool = False

    def resolve(self) -> "DataSettings":
        settings = DataSettings(**asdict(self))
        if self.smoke:
            settings.corpus_size, settings.batch_size, settings.batches, settings.repeats = 4, 2, 1, 1
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("image_size", "corpus_size", "batch_size", "batches", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop-scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}.")
        if OURS not in self.pipelines or set(self.pipelines) - set(PIPELINES):
            raise ValueError(
                f"pipelines must include {OURS!r} and be among {', '.join(PIPELINES)}, got {', '.join(self.pipelines)}."
            )


# --- The corpus --------------------------------------------------------------------------------------------------


def _sample_image(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _skimage(name: str, view: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        photo = getattr(data, name)()
        return photo if view is None else photo[view]

    return load


# The ten colour photos that scikit-learn and scikit-image ship (no download), loaded when first needed.
SOURCE_PHOTOS = (
    _sample_image("china.jpg"),
    _sample_image("flower.jpg"),
    _skimage("astronaut"),
    _skimage("chelsea"),
    _skimage("coffee"),
    _skimage("rocket"),
    _skimage("hubble_deep_field"),
    _skimage("retina"),
    _skimage("stereo_motorcycle", 0),
    _skimage("stereo_motorcycle", 1),
)


def build_corpus(count: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """`count` JPEGs of 500x375 (every fourth 375x500) cut from the shipped photos, as the module docstring says."""
    rng = np.random.default_rng(seed)
    photos = [load() for load in SOURCE_PHOTOS[:count]]
    corpus = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        portrait = index % 4 == 3
        size = CORPUS_SIZE[::-1] if portrait else CORPUS_SIZE
        aspect = size[0] / size[1]
        window_w = min(width, height * aspect) * rng.uniform(0.6, 1.0)
        window_h = window_w / aspect
        left, top = rng.uniform(0, width - window_w), rng.uniform(0, height - window_h)
        image = Image.fromarray(photo).resize(size, Image.LANCZOS, box=(left, top, left + window_w, top + window_h))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        corpus.append(buffer.getvalue())
    return corpus


# --- The pipelines -----------------------------------------------------------------------------------------------


class PipelineUnavailable(Exception):
    """A pipeline whose library is not installed; the message is the report's note."""


@dataclass
class Pipeline:
    """A batch of JPEG bytes to a batch for the model; `output` says what comes out and where it is normalised."""

    name: str
    output: str
    run: Callable[[list[bytes]], Any]
    wall_runs: list[float] = field(default_factory=list)
    cpu_runs: list[float] = field(default_factory=list)


def decode_rgb(data: bytes) -> Image.Image:
    """How timm's and torchvision's datasets read an image: PIL, converted to RGB."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def build_pipeline(name: str, settings: DataSettings) -> Pipeline:
    size, scale = settings.image_size, settings.crop_scale
    if name in (OURS, "hf_vit-fast-decode"):
        transform = RandomResizedCrop(size, scale=scale, fast_decode=name != OURS)
        output = "uint8, normalised on the device" + ("" if name == OURS else " (libjpeg-turbo's fast IDCT)")
        return Pipeline(name, output, lambda batch: torch.stack([transform(data) for data in batch]))
    if name == "torchvision":
        from torchvision.transforms import v2

        crop = v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        float_pipeline = v2.Compose(
            [
                crop,
                v2.RandomHorizontalFlip(),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.5] * 3, [0.5] * 3),
            ]
        )
        output = "float32, normalised on the CPU (hf_vit's pipeline before)"
        return Pipeline(name, output, lambda batch: torch.stack([float_pipeline(decode_rgb(data)) for data in batch]))
    if name == "timm":
        try:
            from timm.data import create_transform
            from timm.data.loader import fast_collate
        except ImportError:
            raise PipelineUnavailable("timm is not installed") from None
        timm_transform = create_transform(
            size, is_training=True, scale=scale, hflip=0.5, color_jitter=None, interpolation="bicubic",
            use_prefetcher=True,
        )  # fmt: skip
        output = "uint8, normalised on the device (timm's prefetcher)"
        return Pipeline(
            name, output, lambda batch: fast_collate([(timm_transform(decode_rgb(data)), 0) for data in batch])
        )
    if name == "transformers":
        from hf_vit.models.presets import create_config
        from hf_vit.models.processing import create_image_processor

        processor = create_image_processor(create_config("ViT-B/16", image_size=size))
        output = f"float32, normalised on the CPU ({type(processor).__name__}: resize only, no crop or flip)"
        return Pipeline(
            name,
            output,
            lambda batch: processor(images=[decode_rgb(data) for data in batch], return_tensors="pt")["pixel_values"],
        )
    raise ValueError(f"unknown pipeline {name!r}")


# --- Measuring ---------------------------------------------------------------------------------------------------


def run_data_benchmark(settings: DataSettings, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Measure every pipeline, interleaved; the report is plain JSON-able data."""
    settings = settings.resolve()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log(f"building the corpus: {settings.corpus_size} JPEGs")
        corpus = build_corpus(settings.corpus_size, settings.seed)
        pipelines, skipped = [], {}
        for name in settings.pipelines:
            try:
                pipelines.append(build_pipeline(name, settings))
            except PipelineUnavailable as reason:
                skipped[name] = str(reason)
        load_before = os.getloadavg()
        for pipeline in pipelines:  # warm-up: imports, first-call caches
            pipeline.run(corpus[: settings.batch_size])
        images = settings.batch_size * settings.batches
        for repeat in range(settings.repeats):
            start = repeat * images
            chunk = [corpus[(start + i) % len(corpus)] for i in range(images)]
            batches = [chunk[i : i + settings.batch_size] for i in range(0, images, settings.batch_size)]
            turn = repeat % len(pipelines)
            for pipeline in pipelines[turn:] + pipelines[:turn]:
                torch.manual_seed(settings.seed + repeat)
                random.seed(settings.seed + repeat)  # timm draws its crops with Python's RNG
                wall, cpu = time.perf_counter(), time.process_time()
                for batch in batches:
                    pipeline.run(batch)
                pipeline.wall_runs.append(images / (time.perf_counter() - wall))
                pipeline.cpu_runs.append(images / max(time.process_time() - cpu, 1e-9))
            log(f"repeat {repeat + 1}/{settings.repeats}")
        load_after = os.getloadavg()
    finally:
        torch.set_num_threads(threads)
    return summarise(settings, pipelines, skipped, corpus, (load_before, load_after))


def summarise(
    settings: DataSettings,
    pipelines: list[Pipeline],
    skipped: dict[str, str],
    corpus: list[bytes],
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> dict[str, Any]:
    results = {
        pipeline.name: {
            "output": pipeline.output,
            "images_per_s": statistics.median(pipeline.wall_runs),
            "images_per_cpu_s": statistics.median(pipeline.cpu_runs),
            "runs_images_per_s": pipeline.wall_runs,
            "runs_images_per_cpu_s": pipeline.cpu_runs,
        }
        for pipeline in pipelines
    }
    ours = results[OURS]
    for name, result in results.items():
        result["ratio"] = None if name == OURS else ours["images_per_cpu_s"] / result["images_per_cpu_s"]
        result["ratio_wall"] = None if name == OURS else ours["images_per_s"] / result["images_per_s"]
    return {
        "settings": asdict(settings),
        "corpus": {
            "images": len(corpus),
            "size": f"{CORPUS_SIZE[0]}x{CORPUS_SIZE[1]} (every fourth {CORPUS_SIZE[1]}x{CORPUS_SIZE[0]})",
            "jpeg_quality": 90,
            "mean_bytes": sum(map(len, corpus)) / len(corpus),
        },
        "environment": {
            "cpu": cpu_model(),
            "threads": 1,
            "load_average_before": list(loads[0]),
            "load_average_after": list(loads[1]),
            "versions": {name: _version(name) for name in ("torch", "torchvision", "pillow", "timm", "transformers")},
        },
        "results": results,
        "skipped": skipped,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def format_markdown(report: dict[str, Any]) -> str:
    settings, env, corpus = report["settings"], report["environment"], report["corpus"]
    low, high = settings["crop_scale"]
    lines = [
        f"cpu: {env['cpu']}, 1 thread; corpus {corpus['images']} JPEGs {corpus['size']}, quality "
        f"{corpus['jpeg_quality']}, mean {corpus['mean_bytes'] / 1e3:.0f} kB; inception crop (area {low:g}-{high:g}) "
        f"and flip to {settings['image_size']}x{settings['image_size']}, batch {settings['batch_size']}; median of "
        f"{settings['repeats']} repeats x {settings['batches']} batches; load average "
        f"{env['load_average_before'][0]:.2f} -> {env['load_average_after'][0]:.2f}",
        "",
        "| pipeline | output | images/s per core (CPU time) | hf_vit / pipeline | images/s (wall) "
        "| hf_vit / pipeline |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, result in report["results"].items():
        lines.append(
            f"| {name} | {result['output']} | {result['images_per_cpu_s']:.1f} | {_ratio(result['ratio'])} "
            f"| {result['images_per_s']:.1f} | {_ratio(result['ratio_wall'])} |"
        )
    lines += [f"- {name} skipped: {reason}." for name, reason in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmark.py --suite data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--crop-scale", type=float, default=0.05, help="Smallest crop area fraction (official 0.05).")
    parser.add_argument("--corpus-size", type=int, default=256, help="JPEGs in the corpus.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2, help="Batches per pipeline and repeat.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="Comma list; must hold hf_vit.")
    parser.add_argument("--json", default=None, metavar="PATH", help="Also write the full report here.")
    parser.add_argument("--smoke", action="store_true", help="A 4-image corpus, one batch of 2: checks it runs.")
    args = parser.parse_args(argv)
    settings = settings_from(
        DataSettings,
        args,
        crop_scale=(args.crop_scale, 1.0),
        pipelines=tuple(name.strip() for name in args.pipelines.split(",") if name.strip()),
    )
    return report_suite(run_data_benchmark, settings, format_markdown, args.json)
