"""Exporting a model to run without its Python code: a `torch.export` program (.pt2) and ONNX, and running them.

transformers v5 has no ONNX exporter; this one traces the model once with `torch.export` and writes that program
and/or its ONNX translation (torch's dynamo exporter). The batch size is always free. With `dynamic_size` the
height and width are too (any multiple of the token stride): the position embeddings are then resized inside the
graph, with the method the config names, so one file serves every resolution. Without it the graph serves the size
it was traced at, and `ExportedModel` refuses other sizes naming that size.

Beside the graph go the image processor (`preprocessor_config.json`, for transformers) and `export.json`: the
input and outputs, the labels and the preprocessing as plain facts, for a runtime that is not Python.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

TARGETS = ("classifier", "encoder")
FORMATS = ("pt2", "onnx")
OUTPUT_NAMES = {"classifier": ("logits",), "encoder": ("last_hidden_state", "pooler_output")}
INPUT_NAME = "pixel_values"
DEFAULT_OPSET = 18
MANIFEST = "export.json"
GRAPH_FILES = {"pt2": "model.pt2", "onnx": "model.onnx"}
# Traced with two images, so that the batch dimension is not specialised to 1.
EXAMPLE_BATCH = 2


class ExportGraph(nn.Module):
    """The model as a function of `pixel_values` alone that returns a tuple of tensors: what exporters trace."""

    def __init__(self, model: nn.Module, target: str, dynamic_size: bool):
        super().__init__()
        self.model = model
        self.output_names = OUTPUT_NAMES[target]
        self.dynamic_size = dynamic_size

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values, interpolate_pos_encoding=self.dynamic_size)
        return tuple(getattr(outputs, name) for name in self.output_names)


def check_exportable(model: nn.Module, target: str) -> None:
    """Refuse what the export cannot serve, naming the problem: other model families, or a target without a head."""
    if target not in TARGETS:
        raise ValueError(f"Unknown export target {target!r}; use one of {', '.join(TARGETS)}.")
    if not hasattr(model.config, "token_stride"):
        raise ValueError(
            f"Only hf_vit models export here, not {type(model).__name__}; convert it first with "
            "scripts/convert_checkpoint.py."
        )
    if target == "classifier" and not hasattr(model, "classifier"):
        raise ValueError(f"{type(model).__name__} has no classification head; export it with target 'encoder'.")


def exported_size(config) -> tuple[int, int]:
    """The size a graph is traced at: the config's image size, a whole number of tokens."""
    return config.grid_size[0] * config.token_stride[0], config.grid_size[1] * config.token_stride[1]


def export_program(model: nn.Module, target: str = "classifier", dynamic_size: bool = False):
    """Trace `model` (an hf_vit classifier for "classifier", any hf_vit model for "encoder") at its config's image
    size with `torch.export`; the batch is dynamic, and height and width with `dynamic_size` (multiples of the token
    stride). The model is put in eval mode and float32 in place: the graph is what inference runs."""
    from torch.export import Dim

    check_exportable(model, target)
    if target == "encoder" and hasattr(model, "classifier"):
        model = model.base_model
    config = model.config
    height, width = exported_size(config)
    dims: dict[int, Any] = {0: Dim("batch")}
    if dynamic_size:
        dims[2] = config.token_stride[0] * Dim("grid_height")
        dims[3] = config.token_stride[1] * Dim("grid_width")
    graph = ExportGraph(model.float().eval(), target, dynamic_size)
    example = torch.randn(EXAMPLE_BATCH, config.num_channels, height, width)
    with torch.no_grad():
        return torch.export.export(graph, (example,), dynamic_shapes={INPUT_NAME: dims}, strict=False)


def save_onnx(program, path: str | Path, output_names: tuple[str, ...], opset: int = DEFAULT_OPSET) -> None:
    """Translate an exported program to ONNX (torch's dynamo exporter, optimised) and write it to `path`.

    The exporter converts to an opset other than its own with a fallback that, when the conversion fails, logs the
    failure and keeps the graph as it was, so the opset the graph declares is checked here.
    """
    onnx_program = torch.onnx.export(
        program, dynamo=True, input_names=[INPUT_NAME], output_names=list(output_names), opset_version=opset
    )
    declared = onnx_program.model.opset_imports.get("")
    if declared != opset:
        raise ValueError(
            f"The ONNX exporter could not convert the graph to opset {opset} (it gave opset {declared}); "
            "choose another --opset."
        )
    onnx_program.save(str(path))


def preprocessing_facts(processor) -> dict[str, Any]:
    """The image processor's steps as plain values, in the order they apply, for a runtime without transformers."""
    from transformers.image_utils import PILImageResampling

    settings = processor.to_dict()
    resample = settings.get("resample")
    return {
        "color": "RGB",
        "resize": settings.get("size") if settings.get("do_resize") else None,
        "resample": PILImageResampling(resample).name.lower() if resample is not None else None,
        "center_crop": settings.get("crop_size") if settings.get("do_center_crop") else None,
        "rescale_factor": settings.get("rescale_factor") if settings.get("do_rescale") else None,
        "mean": list(settings["image_mean"]) if settings.get("do_normalize") else None,
        "std": list(settings["image_std"]) if settings.get("do_normalize") else None,
        "layout": "NCHW",
        "dtype": "float32",
    }


def export_manifest(model: nn.Module, processor, target: str, dynamic_size: bool, source: str) -> dict[str, Any]:
    """What `export.json` says: the input the graph takes, the outputs it gives, the labels and the preprocessing."""
    config = model.config
    stride = list(config.token_stride)
    size = list(exported_size(config))
    hidden = config.hidden_size
    tokens = "tokens" if dynamic_size else config.grid_size[0] * config.grid_size[1] + (config.classifier == "token")
    shapes = {
        "logits": ["batch", config.num_labels],
        "last_hidden_state": ["batch", tokens, hidden],
        "pooler_output": ["batch", config.representation_size or hidden],
    }
    manifest = {
        "source": source,
        "model_type": config.model_type,
        "target": target,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", config.num_channels, *(["height", "width"] if dynamic_size else size)],
            "image_size": size,
            "dynamic_size": dynamic_size,
            "size_multiple_of": stride,
        },
        "outputs": {name: shapes[name] for name in OUTPUT_NAMES[target]},
        "preprocessing": preprocessing_facts(processor),
    }
    if target == "classifier":
        manifest["labels"] = [str(config.id2label[index]) for index in range(config.num_labels)]
    return manifest


def check_output_dir(out: Path) -> None:
    """Refuse a folder that holds files: an export never mixes with, or overwrites, other files."""
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise ValueError(f"--output {str(out)!r} exists and is not an empty folder; name a new one.")


def export_model(
    model: nn.Module,
    processor,
    output_dir: str | Path,
    *,
    target: str = "classifier",
    formats: tuple[str, ...] = FORMATS,
    dynamic_size: bool = False,
    opset: int = DEFAULT_OPSET,
    source: str = "",
) -> dict[str, Any]:
    """Write the graph(s), `preprocessor_config.json` and `export.json` into `output_dir` (created, or empty);
    returns the manifest, with the files written and how long each export took."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"Export formats must be among {', '.join(FORMATS)}, got {list(formats)}.")
    out = Path(output_dir)
    check_output_dir(out)
    started = time.perf_counter()
    program = export_program(model, target, dynamic_size)
    seconds = {"torch_export": time.perf_counter() - started}
    manifest = export_manifest(model, processor, target, dynamic_size, source)
    out.mkdir(parents=True, exist_ok=True)
    if "onnx" in formats:  # first: the likelier to fail, and it fails before writing anything
        started = time.perf_counter()
        save_onnx(program, out / GRAPH_FILES["onnx"], OUTPUT_NAMES[target], opset)
        seconds["onnx"] = time.perf_counter() - started
        manifest["opset"] = opset
    if "pt2" in formats:
        torch.export.save(program, out / GRAPH_FILES["pt2"])
    manifest["files"] = {name: GRAPH_FILES[name] for name in FORMATS if name in formats}
    processor.save_pretrained(out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return {**manifest, "seconds": seconds}


@dataclass
class ExportedConfig:
    """The config facts evaluation reads from a model, for an exported one."""

    id2label: dict[int, str] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


class ExportedModel:
    """An exported graph called like the model it came from: `pixel_values` in, a `ModelOutput` of named tensors out.

    Runs `model.onnx` with ONNX Runtime or `model.pt2` with torch, and checks each input against `export.json`
    first, so a wrong size is a ValueError naming the exported size rather than a shape error inside the runtime.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        self.path = Path(path)
        manifest_path = self.path.parent / MANIFEST
        if not self.path.is_file():
            raise ValueError(f"{str(self.path)!r}: no such exported model file.")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{str(self.path)!r} has no readable {MANIFEST} beside it ({error}); export with scripts/export.py."
            ) from None
        spec = self.manifest["input"]
        self.image_size = tuple(spec["image_size"])
        self.size_multiple = tuple(spec["size_multiple_of"])
        self.dynamic_size = spec["dynamic_size"]
        self.num_channels = spec["shape"][1]
        self.output_names = tuple(self.manifest["outputs"])
        labels = self.manifest.get("labels", [])
        self.config = ExportedConfig(dict(enumerate(labels)), self.image_size)
        if self.path.suffix == ".onnx":
            import onnxruntime

            self.session = onnxruntime.InferenceSession(
                str(self.path), providers=providers or onnxruntime.get_available_providers()
            )
            self.program = None
        elif self.path.suffix == ".pt2":
            self.session = None
            self.program = torch.export.load(str(self.path)).module()
        else:
            raise ValueError(f"{str(self.path)!r} is neither an .onnx nor a .pt2 file.")

    def to(self, device: torch.device | str) -> "ExportedModel":
        """Stays put: inputs go to the host, where both runtimes take them (ONNX Runtime picks its own device)."""
        return self

    def check(self, pixel_values: torch.Tensor) -> None:
        """A ValueError naming what the graph accepts when `pixel_values` does not fit it."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.num_channels}, height, width), got {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[-2:]
        exported = "x".join(map(str, self.image_size))
        if not self.dynamic_size and (height, width) != self.image_size:
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match the exported size ({exported}): {self.path} was "
                "exported without dynamic size; resize the images, or export again with --dynamic-size."
            )
        step_h, step_w = self.size_multiple
        if height % step_h or width % step_w:
            raise ValueError(
                f"Input image size ({height}x{width}) must be divisible by the token stride ({step_h}x{step_w})."
            )

    def __call__(self, pixel_values: torch.Tensor, **unused: Any) -> ModelOutput:
        """Run the graph; `unused` takes the model's keyword arguments (`interpolate_pos_encoding`), which the
        graph settles by itself."""
        self.check(pixel_values)
        if self.program is not None:
            with torch.no_grad():
                outputs = self.program(pixel_values.detach().float().cpu())
        else:
            feed = {INPUT_NAME: pixel_values.detach().float().cpu().numpy()}
            outputs = [torch.from_numpy(array) for array in self.session.run(list(self.output_names), feed)]
        return ModelOutput(**dict(zip(self.output_names, outputs, strict=True)))


def compare_with_model(model: nn.Module, exported: ExportedModel, target: str, seed: int = 0) -> dict[str, float]:
    """The largest difference between the exported graph's outputs and the model's, on random inputs at the
    exported size and, for a dynamic-size graph, at another, non-square one; keyed "HxW"."""
    if target == "encoder" and hasattr(model, "classifier"):
        model = model.base_model
    graph = ExportGraph(model.float().eval(), target, exported.dynamic_size)
    sizes = [exported.image_size]
    if exported.dynamic_size:
        (height, width), (step_h, step_w) = exported.image_size, exported.size_multiple
        sizes.append((height + step_h, width + 2 * step_w))
    generator = torch.Generator().manual_seed(seed)
    differences = {}
    for height, width in sizes:
        pixels = torch.randn(1, exported.num_channels, height, width, generator=generator)
        with torch.no_grad():
            expected = graph(pixels)
        got = exported(pixels)
        differences[f"{height}x{width}"] = max(
            (got[name] - value).abs().max().item() for name, value in zip(exported.output_names, expected, strict=True)
        )
    return differences
