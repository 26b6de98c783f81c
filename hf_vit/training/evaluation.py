"""Running a trained model over a dataset split: top-1/top-5 accuracy, and frozen features for linear probes.

Works for hf_vit models and for other transformers image classifiers (converted ones included): images go through
the model's own saved image processor, so they are evaluated the way they will be used.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..loading import load_image_processor, load_model
from ..models.configuration import to_pair
from ..tools.quantize import quantize_int8
from .arguments import EvaluationArguments
from .augmentation import ProcessorTransform
from .data import Collate, ImageData, ImageSamples, StreamedImages, load_image_data, load_split, worker_count
from .metrics import TOP_K, classification_metrics


def load_classifier(name: str, trust_remote_code: bool = False):
    """An image classifier in eval mode, its image processor and the weights it lacked (e.g. no trained head)."""
    model, info = load_model(name, trust_remote_code=trust_remote_code, output_loading_info=True)
    processor = load_image_processor(name, model.config, trust_remote_code)
    return model.eval(), processor, list(info["missing_keys"])


def load_exported_classifier(path: str):
    """An exported classifier (scripts/export.py) run by ONNX Runtime, and the image processor saved beside it."""
    from transformers import AutoImageProcessor

    from ..tools.export import ExportedModel

    model = ExportedModel(path)
    if "logits" not in model.output_names:
        raise ValueError(
            f"--onnx {path!r} is an exported {model.manifest['target']} (outputs {', '.join(model.output_names)}); "
            "evaluation needs one exported with --target classifier."
        )
    return model, AutoImageProcessor.from_pretrained(Path(path).parent)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_resolution(processor, image_size: int | None, model_config) -> bool:
    """Make `processor` resize to `image_size`; True when that differs from the model's (interpolate position
    embeddings)."""
    if image_size is None:
        return False
    size = getattr(processor, "size", None) or {}
    if "height" not in size:
        raise ValueError(f"--image-size needs a processor that resizes to height x width; this one has size={size}.")
    processor.size = {"height": image_size, "width": image_size}
    return to_pair(image_size) != to_pair(model_config.image_size)


def make_loader(dataset, transform, data: ImageData, batch_size: int, num_workers: int = 0):
    """Batches of (pixel_values, labels) in dataset order; unreadable images are skipped and counted."""
    columns = (data.image_column, data.label_column)
    if data.streaming:
        samples = StreamedImages(dataset, transform, *columns)
    else:
        samples = ImageSamples(dataset, transform, *columns)
    return torch.utils.data.DataLoader(
        samples, batch_size=batch_size, shuffle=False, collate_fn=Collate(), num_workers=num_workers
    )


def label_mapping(id2label: dict[int, str], names: list[str]) -> np.ndarray:
    """For each dataset class, the model's index of it; a ValueError when the model does not know the classes.

    Matches by name, so a model evaluates on any subset of its classes in any order; a model with generic names
    (LABEL_0, ...) matches a dataset with as many classes by index.
    """
    model_names = [str(id2label[i]) for i in range(len(id2label))]
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(model_names))
    if generic and len(model_names) == len(names):
        return np.arange(len(names))
    index = {name: i for i, name in enumerate(model_names)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise ValueError(
            f"The model's labels do not match the dataset's classes: {len(unknown)} of the dataset's {len(names)} "
            f"classes ({unknown[:5]}) are not among the model's {len(model_names)} labels ({model_names[:5]} ...). "
            "Check --label-column, or fine-tune the model on this dataset first."
        )
    return np.asarray([index[name] for name in names])


def batches_on(loader, device: torch.device):
    """(pixels, labels) of each non-empty batch on `device`, and a running count of skipped images."""
    skipped = [0]

    def generate():
        for batch in loader:
            skipped[0] += batch["skipped"]
            if batch["pixel_values"].numel():
                yield batch["pixel_values"].to(device), batch["labels"]

    return generate(), skipped


@torch.inference_mode()
def ranked_predictions(model, loader, device: torch.device, k: int, interpolate: bool) -> tuple[np.ndarray, ...]:
    """The k best classes of each image, best first; with the labels and the number of unreadable images."""
    model.to(device)
    extra = {"interpolate_pos_encoding": True} if interpolate else {}
    ranked, labels = [], []
    batches, skipped = batches_on(loader, device)
    for pixels, batch_labels in batches:
        logits = model(pixel_values=pixels, **extra).logits
        ranked.append(logits.float().topk(k, dim=-1).indices.cpu())
        labels.append(batch_labels)
    if not ranked:
        raise ValueError("No readable image in the split to evaluate.")
    return torch.cat(ranked).numpy(), torch.cat(labels).numpy(), skipped[0]


def pooled(model, pixels: torch.Tensor, **kwargs) -> torch.Tensor:
    """The image feature the head reads: hf_vit's pooled (pre-logits) output, or the class token of other ViTs."""
    outputs = model.base_model(pixel_values=pixels, **kwargs)
    if getattr(outputs, "pooler_output", None) is not None:
        return outputs.pooler_output
    return outputs.last_hidden_state[:, 0]


@torch.inference_mode()
def extract_features(model, loader, device: torch.device, interpolate: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Frozen features and labels of every readable image, and the number of unreadable ones."""
    model.to(device)
    extra = {"interpolate_pos_encoding": True} if interpolate else {}
    features, labels = [], []
    batches, skipped = batches_on(loader, device)
    for pixels, batch_labels in batches:
        features.append(pooled(model, pixels, **extra).float().cpu())
        labels.append(batch_labels)
    if not features:
        raise ValueError("No readable image to extract features from.")
    return torch.cat(features).numpy(), torch.cat(labels).numpy(), skipped[0]


def evaluate_classifier(args: EvaluationArguments | None = None, /, **fields: Any) -> dict[str, Any]:
    """Top-1 (and top-5) accuracy of `args.model` (or of the exported `args.onnx`, through ONNX Runtime) on
    `args.eval_split`, or on the held-out split finetune.py uses."""
    args = args or EvaluationArguments(**fields)
    if args.onnx:
        model, processor = load_exported_classifier(args.onnx)
    else:
        model, processor, missing = load_classifier(args.model, args.trust_remote_code)
        if missing:
            raise ValueError(
                f"--model {args.model!r} is not a trained classifier: it has no weights for {sorted(missing)[:4]}."
            )
    device = resolve_device(args.device)
    if args.int8:
        if device.type != "cpu":
            raise ValueError(f"--int8 runs on the CPU; got --device {args.device} ({device}): pass --device cpu.")
        model = quantize_int8(model)
    data = load_split(args, args.eval_split) if args.eval_split else load_image_data(args)
    mapping = label_mapping(model.config.id2label, data.label_names)
    interpolate = set_resolution(processor, args.image_size, model.config)
    loader = make_loader(data.eval, ProcessorTransform(processor), data, args.batch_size, worker_count(args))
    k = min(TOP_K, model.config.num_labels)
    ranked, labels, skipped = ranked_predictions(model, loader, device, k, interpolate)
    metrics = classification_metrics(ranked, mapping[labels], model.config.num_labels)
    results = {
        "model": args.model or args.onnx,
        "dataset": args.dataset,
        "split": data.eval_split,
        "image_size": processor.size.get("height"),
        "int8": args.int8,
        **{f"eval_{name}": value for name, value in metrics.items()},
        "eval_samples": int(len(labels)),
        "skipped_images": skipped,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results
