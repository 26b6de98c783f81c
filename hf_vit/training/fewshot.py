"""Few-shot linear evaluation, as in the paper: a closed-form regularised least-squares probe on frozen features.

For each seed, `shots` training images per class are drawn; their frozen features are standardised (with the
statistics of those few images), a constant bias feature is appended, and a ridge regression onto {-1, 1} one-hot
targets is solved exactly. Accuracy is measured on the whole eval split. The draws are nested: the 5-shot images of
a seed include its 1-shot ones, so only (seeds x classes x max shots) training images need features.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .arguments import FewshotArguments
from .augmentation import ProcessorTransform
from .data import load_image_data, worker_count
from .evaluation import extract_features, load_classifier, make_loader, resolve_device, set_resolution

L2_REG = 2.0**10
BIAS_FEATURE = 100.0  # large, so that its weight (the bias) is barely regularised
STD_EPS = 1e-5


@dataclass
class LinearProbe:
    """Standardisation statistics and the (features + 1, classes) weights of a least-squares probe."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    def design(self, features: np.ndarray) -> np.ndarray:
        standard = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        return np.concatenate([standard, np.full((len(standard), 1), BIAS_FEATURE)], axis=1)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.design(features) @ self.weights

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.scores(features).argmax(axis=1)


def fit_least_squares(
    features: np.ndarray, labels: np.ndarray, num_classes: int, l2_reg: float = L2_REG
) -> LinearProbe:
    """Minimise |X W - Y|^2 + l2_reg |W|^2 in closed form, X the standardised features plus a bias column.

    Solves the (D+1)-sized normal equations when there are at least as many examples as features, else the N-sized
    dual system W = X^T (X X^T + l2_reg I)^-1 Y: few-shot sets are often much smaller than the feature width.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (N, D) with one label each; got {features.shape} and {labels.shape}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}); got {labels.min()}..{labels.max()}.")
    probe = LinearProbe(features.mean(axis=0), features.std(axis=0) + STD_EPS, np.empty(0))
    x = probe.design(features)
    y = 2.0 * np.eye(num_classes)[labels] - 1.0
    count, width = x.shape
    if count >= width:
        probe.weights = np.linalg.solve(x.T @ x + l2_reg * np.eye(width), x.T @ y)
    else:
        probe.weights = x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(count), y)
    return probe


def draw_shots(
    labels: np.ndarray, num_classes: int, shots: int, seed: int, names: list[str] | None = None
) -> np.ndarray:
    """(classes, shots) indices into `labels`: per class, the first `shots` of a permutation seeded by `seed`."""
    rng = np.random.default_rng(seed)
    draws = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            name = names[label] if names else label
            raise ValueError(
                f"Class {name!r} has {len(members)} training images; {shots}-shot evaluation needs {shots} per class."
            )
        draws.append(rng.permutation(members)[:shots])
    return np.stack(draws)


def run_fewshot(args: FewshotArguments | None = None, /, **fields: Any) -> dict[str, Any]:
    """Few-shot accuracy of `args.model`'s frozen features on `args.dataset`, per shot count and seed."""
    args = args or FewshotArguments(**fields)
    data = load_image_data(args)
    if data.streaming:
        raise ValueError("Few-shot evaluation draws images per class, which a stream cannot do: drop --streaming.")
    model, processor, _ = load_classifier(args.model, args.trust_remote_code)  # only the frozen features are used
    interpolate = set_resolution(processor, args.image_size, model.config)
    transform, device = ProcessorTransform(processor), resolve_device(args.device)
    num_classes = len(data.label_names)
    train_labels = np.asarray(data.train[data.label_column])
    most = max(args.shots)
    draws = {seed: draw_shots(train_labels, num_classes, most, seed, data.label_names) for seed in range(args.seeds)}
    needed = np.unique(np.concatenate([draw.ravel() for draw in draws.values()]))
    subset = data.train.select(needed.tolist())
    train_features, _, skipped = extract_features(
        model, make_loader(subset, transform, data, args.batch_size, worker_count(args)), device, interpolate
    )
    if skipped:
        raise ValueError(f"{skipped} of the drawn training images are unreadable; remove them from the dataset.")
    row_of = {int(index): row for row, index in enumerate(needed)}
    eval_loader = make_loader(data.eval, transform, data, args.batch_size, worker_count(args))
    eval_features, eval_labels, eval_skipped = extract_features(model, eval_loader, device, interpolate)
    accuracy: dict[str, dict[str, Any]] = {}
    for shots in sorted(set(args.shots)):
        per_seed = []
        for draw in draws.values():
            chosen = draw[:, :shots].ravel()
            rows = [row_of[int(index)] for index in chosen]
            probe = fit_least_squares(train_features[rows], train_labels[chosen], num_classes, args.l2_reg)
            per_seed.append(float((probe.predict(eval_features) == eval_labels).mean()))
        accuracy[str(shots)] = {"per_seed": per_seed, "mean": float(np.mean(per_seed))}
    results = {
        "model": args.model,
        "dataset": args.dataset,
        "eval_split": data.eval_split,
        "eval_samples": int(len(eval_labels)),
        "skipped_images": eval_skipped,
        "num_classes": num_classes,
        "feature_size": int(train_features.shape[1]),
        "l2_reg": args.l2_reg,
        "seeds": list(draws),
        "accuracy": accuracy,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results
