"""Classify image files with a trained classifier: the top-k labels and scores of every file, as CSV or JSON.

Images are read and scored as transformers' `pipeline("image-classification")` does (EXIF orientation applied,
RGB, the model's own image processor, softmax, or sigmoid for one label or multi-label models), but in batches.
A file that cannot be read is reported in the output with the reason, and the others are still classified.
"""

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

FORMATS = ("csv", "json")


@dataclass
class Prediction:
    """One file's top labels with their scores, best first; or why it could not be classified."""

    file: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None


def image_suffixes() -> set[str]:
    """The file suffixes Pillow reads (.png, .jpg, .webp, ...), in lower case."""
    from PIL import Image

    return {suffix.lower() for suffix, name in Image.registered_extensions().items() if name in Image.OPEN}


def local_path(name: str) -> Path:
    """A path from a file name or a `file://` URL; a ValueError for other URLs (only local files are read)."""
    if Path(name).expanduser().exists():
        return Path(name).expanduser()
    parsed = urlparse(name)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{name} names another machine ({parsed.netloc}); only local files are read")
        return Path(url2pathname(unquote(parsed.path)))
    if "://" in name:
        raise ValueError(f"{name} is a {parsed.scheme}:// URL; only local files and file:// URLs are read")
    return Path(name).expanduser()


def find_images(inputs: Sequence[str]) -> list[tuple[str, Path | None, str | None]]:
    """(name, path, problem) for every file to classify: each input is a file, a file:// URL, or a folder whose image
    files (by suffix, in all its subfolders) are taken in sorted order. `problem` is set where there is no file."""
    suffixes = image_suffixes()
    found: list[tuple[str, Path | None, str | None]] = []
    for name in inputs:
        try:
            path = local_path(name)
        except ValueError as error:
            found.append((name, None, str(error)))
            continue
        if path.is_dir():
            files = sorted(file for file in path.rglob("*") if file.suffix.lower() in suffixes and file.is_file())
            found.extend((str(file), file, None) for file in files)
        elif path.is_file():
            found.append((name, path, None))
        else:
            found.append((name, None, "no such file or folder"))
    return found


def read_image(path: Path):
    """The image as the pipeline reads it: EXIF orientation applied, in RGB."""
    from PIL import Image
    from transformers.image_utils import load_image

    with Image.open(path) as image:
        image.load()
        return load_image(image)


def score_function(config) -> str:
    """What the image-classification pipeline applies to the logits by default: "softmax", "sigmoid" or "none"."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def predict(
    model,
    processor,
    inputs: Sequence[str],
    top_k: int = 5,
    batch_size: int = 32,
) -> Iterator[Prediction]:
    """Classify the images that `inputs` (files, file:// URLs, folders) name, `batch_size` at a time, on the model's
    device; yield one Prediction per file, in order, unreadable files included (with `error` set)."""
    import torch
    from PIL import UnidentifiedImageError

    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}.")
    top_k = min(top_k, model.config.num_labels)
    function = score_function(model.config)
    device = next(model.parameters()).device
    pending: list[tuple[str, Any]] = []

    def classify() -> Iterator[Prediction]:
        names, images = zip(*pending, strict=True)
        pending.clear()
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode():
            logits = model(pixel_values=pixels).logits.float()
        scores = logits.softmax(-1) if function == "softmax" else logits.sigmoid() if function == "sigmoid" else logits
        best = scores.topk(top_k, dim=-1)
        for name, values, indices in zip(names, best.values.tolist(), best.indices.tolist(), strict=True):
            yield Prediction(name, [model.config.id2label[index] for index in indices], values)

    for name, path, problem in find_images(inputs):
        if problem is None:
            try:
                pending.append((name, read_image(path)))
            except (OSError, UnidentifiedImageError, ValueError) as error:
                problem = f"not a readable image ({error})"
        if problem is not None:
            yield from classify() if pending else ()
            yield Prediction(name, error=problem)
        elif len(pending) == batch_size:
            yield from classify()
    if pending:
        yield from classify()


def write_predictions(predictions: Iterable[Prediction], stream: TextIO, format: str, top_k: int) -> list[Prediction]:
    """Write `predictions` to `stream` as CSV (file, label_1, score_1, ..., error) or a JSON list; return them."""
    predictions = list(predictions)
    if format == "json":
        rows = [{key: value for key, value in asdict(p).items() if value is not None} for p in predictions]
        json.dump(rows, stream, indent=1)
        stream.write("\n")
        return predictions
    if format != "csv":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}.")
    writer = csv.writer(stream)
    writer.writerow(
        ["file", *(f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("label", "score")), "error"]
    )
    for p in predictions:
        cells = [value for pair in zip(p.labels, (f"{score:.6g}" for score in p.scores), strict=True) for value in pair]
        writer.writerow([p.file, *cells, *[""] * (2 * top_k - len(cells)), p.error or ""])
    return predictions


def save_predictions(predictions: Iterable[Prediction], output: str | os.PathLike, top_k: int) -> list[Prediction]:
    """Write `predictions` to `output`, as JSON for a .json file and CSV otherwise, through a temporary file so that
    an interrupted run leaves no half-written file."""
    output = Path(output)
    format = "json" if output.suffix.lower() == ".json" else "csv"
    buffer = io.StringIO()
    predictions = write_predictions(predictions, buffer, format, top_k)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    os.replace(partial, output)
    return predictions
