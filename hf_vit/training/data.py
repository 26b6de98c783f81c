"""Image-classification data for training and evaluation: loading with `datasets`, decoding, batching.

One loader (`load_image_data`) serves every entry point, from the typed `DataArguments`.
"""

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .arguments import DataArguments
from .transforms import DecodingTransform, decode, open_image

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "cls", "fine_label", "class")


@dataclass
class ImageData:
    """Train and eval splits with their columns and label names (`train` is None when only one split is loaded)."""

    train: Any
    eval: Any
    image_column: str
    label_column: str
    label_names: list[str]
    streaming: bool = False
    eval_split: str = "held-out"


def worker_count(args: DataArguments) -> int:
    """--num-workers, or its default for the device the model runs on (see `runtime.default_num_workers`)."""
    from .runtime import default_num_workers

    return default_num_workers() if args.num_workers is None else args.num_workers


def digits_dataset():
    """scikit-learn's digits as a `datasets.Dataset` of 8x8 grayscale PIL images (values scaled to 0-255)."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((image * 255 / 16).round().astype(np.uint8), mode="L") for image in digits.images]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)


def _files(spec: str) -> list[str]:
    paths: list[str] = []
    for part in spec.split(","):
        matches = sorted(str(p) for p in Path().glob(part)) if any(c in part for c in "*?[") else [part]
        paths.extend(matches)
    return paths


# Datasets that ship with the package's dependencies: name -> (builder, how a model card names it).
BUILT_IN = {"digits": (digits_dataset, "scikit-learn's digits")}


def dataset_title(name: str) -> str:
    """How a model card names the dataset `name`."""
    return BUILT_IN[name][1] if name in BUILT_IN else name


def _load_raw(args: DataArguments):
    """The DatasetDict (or IterableDatasetDict) named by --dataset."""
    from datasets import DatasetDict, load_dataset

    if args.dataset in BUILT_IN:
        if args.streaming:
            raise ValueError(f"--streaming needs a Hub dataset or files; the built-in {args.dataset} are in memory.")
        return DatasetDict({"train": BUILT_IN[args.dataset][0]()})
    if os.path.isdir(args.dataset):  # datasets picks imagefolder, parquet or webdataset from the files inside
        return load_dataset(args.dataset, streaming=args.streaming)
    files = _files(args.dataset)
    if files and all(f.endswith(".parquet") for f in files):
        return load_dataset("parquet", data_files={args.train_split: files}, streaming=args.streaming)
    if files and all(f.endswith(".tar") for f in files):
        return load_dataset("webdataset", data_files={args.train_split: files}, streaming=args.streaming)
    if any(os.path.sep in f or os.path.exists(f) for f in files):
        missing = [f for f in files if not os.path.exists(f)]
        raise ValueError(
            f"--dataset {args.dataset!r}: expected an imagefolder directory or .parquet/.tar files"
            + (f"; not found: {missing}" if missing else "")
        )
    return load_dataset(args.dataset, args.dataset_config, streaming=args.streaming)


def _pick(columns: Iterable[str], wanted: str | None, candidates: tuple[str, ...], what: str) -> str:
    columns = list(columns)
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{what} column {wanted!r} is not in the dataset; its columns are {columns}.")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    hint = " (an image folder needs one subfolder per class, at least two)" if what == "label" else ""
    raise ValueError(f"No {what} column found among {columns}{hint}; or name it with --{what}-column.")


def _columns(dataset, args: DataArguments) -> tuple[str, str, list[str]]:
    """The image and label columns of `dataset` and the class names, checking the labels are classes."""
    columns = dataset.column_names or list(dataset.features or {})
    image_column = _pick(columns, args.image_column, IMAGE_COLUMNS, "image")
    label_column = _pick(columns, args.label_column, LABEL_COLUMNS, "label")
    label_feature = (dataset.features or {}).get(label_column)
    names = getattr(label_feature, "names", None)
    if names is None:
        raise ValueError(
            f"Label column {label_column!r} is not a class label (it is {label_feature}); choose a ClassLabel "
            f"column with --label-column from {columns}."
        )
    if len(names) < 2:
        raise ValueError(f"The dataset has {len(names)} class ({names}): a classifier needs at least two.")
    if hasattr(dataset, "__len__"):  # a map-style dataset (a stream is checked sample by sample)
        missing = sum(label is None for label in dataset[label_column])
        if missing:
            raise ValueError(
                f"Label column {label_column!r} has {missing} missing value(s); remove those rows or label them."
            )
    return image_column, label_column, list(names)


def _undecoded(dataset, image_column: str, streaming: bool):
    """Images left as bytes/paths, so that ImageSamples decodes them and can skip the unreadable ones."""
    if streaming:
        return dataset
    from datasets import Image as ImageFeature

    return dataset.cast_column(image_column, ImageFeature(decode=False))


def load_split(args: DataArguments, split: str) -> ImageData:
    """One whole split of --dataset (as `eval`, with no training split), for evaluating a trained model."""
    raw = _load_raw(args)
    if split not in raw:
        raise ValueError(f"Split {split!r} not found; splits are {list(raw)}.")
    dataset = raw[split]
    image_column, label_column, names = _columns(dataset, args)
    evaluation = _undecoded(dataset, image_column, args.streaming)
    return ImageData(None, evaluation, image_column, label_column, names, args.streaming, eval_split=split)


def load_image_data(args: DataArguments) -> ImageData:
    """Load --dataset, choose the image/label columns and the eval split, and check the labels are classes."""
    raw = _load_raw(args)
    if args.train_split not in raw:
        raise ValueError(f"--train-split {args.train_split!r} not found; splits are {list(raw)}.")
    train = raw[args.train_split]
    image_column, label_column, names = _columns(train, args)
    eval_split = args.eval_split or next((s for s in ("validation", "valid", "val", "test") if s in raw), None)
    if eval_split is not None:
        if eval_split not in raw:
            raise ValueError(f"--eval-split {eval_split!r} not found; splits are {list(raw)}.")
        evaluation = raw[eval_split]
        eval_names = _columns(evaluation, args)[2]
        if eval_names != names:
            raise ValueError(
                f"The classes of split {eval_split!r} ({eval_names[:10]}) differ from those of --train-split "
                f"{args.train_split!r} ({names[:10]}): the labels would mean different things."
            )
    elif args.streaming:
        raise ValueError("A streamed dataset needs an --eval-split: a fraction cannot be held out of a stream.")
    else:
        parts = train.train_test_split(test_size=args.eval_fraction, seed=args.seed, stratify_by_column=label_column)
        train, evaluation = parts["train"], parts["test"]
    train = _undecoded(train, image_column, args.streaming)
    evaluation = _undecoded(evaluation, image_column, args.streaming)
    held_out = f"held-out {args.eval_fraction:g} of {args.train_split!r}"
    return ImageData(
        train, evaluation, image_column, label_column, names, args.streaming, eval_split=eval_split or held_out
    )


def decode_image(value: Any) -> Image.Image | None:
    """A PIL RGB image from whatever a dataset holds (PIL image, {'bytes','path'} dict, bytes), or None if broken."""
    try:
        return decode(open_image(value).pil())
    except Exception:  # noqa: BLE001 - any decoding failure means: skip this sample
        return None


class ImageSamples(torch.utils.data.Dataset):
    """Decoded, transformed samples of a map-style dataset: (pixels or None if unreadable, label).

    Sample i of epoch e is augmented under an RNG seeded by (seed, e, i): augmentation is reproducible whatever the
    worker count or prefetching, and a resumed run sees exactly the images the uninterrupted one would have.
    """

    def __init__(self, dataset, transform: Callable, image_column: str, label_column: str, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        # The CPU generator directly: torch.manual_seed and fork_rng also visit every other device type and cost
        # ~0.35 ms a sample, as much as decoding and cropping a small image.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
        try:
            return prepare_sample(self.dataset[index], self.transform, self.image_column, self.label_column)
        finally:
            generator.set_state(state)


class StreamedImages(torch.utils.data.IterableDataset):
    """The streaming twin of ImageSamples (augmented under the global RNG: a stream has no indices)."""

    def __init__(self, dataset, transform: Callable, image_column: str, label_column: str):
        self.dataset = dataset
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        for sample in self.dataset:
            yield prepare_sample(sample, self.transform, self.image_column, self.label_column)


def prepare_sample(sample: dict, transform: Callable, image_column: str, label_column: str):
    if sample[label_column] is None:
        raise ValueError(f"A sample has no {label_column!r} (a missing label); remove it from the dataset.")
    if isinstance(transform, DecodingTransform):  # decodes itself, at the scale its crop needs
        return transform(sample[image_column]), int(sample[label_column])
    image = decode_image(sample[image_column])
    return (None if image is None else transform(image)), int(sample[label_column])


class Collate:
    """Batch (pixels, label) pairs, skipping and counting unreadable images.

    With `fixed_size`, skipped images are replaced by repeats of readable ones of the same batch, so every training
    batch keeps its shape (XLA compiles the step once) and all processes step together.
    """

    def __init__(self, fixed_size: bool = False):
        self.fixed_size = fixed_size

    def __call__(self, items: list[tuple[torch.Tensor | None, int]]) -> dict[str, Any]:
        good = [(pixels, label) for pixels, label in items if pixels is not None]
        skipped = len(items) - len(good)
        if not good:
            return {"pixel_values": torch.empty(0), "labels": torch.empty(0, dtype=torch.long), "skipped": skipped}
        if self.fixed_size:
            good += [good[i % len(good)] for i in range(skipped)]
        return {
            "pixel_values": torch.stack([pixels for pixels, _ in good]),
            "labels": torch.tensor([label for _, label in good]),
            "skipped": skipped,
        }
