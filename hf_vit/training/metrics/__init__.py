"""Metric modules for `evaluate`, shipped inside the package so they load by path, without the Hub."""

from functools import cache
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
TOP_K = 5


def metric_path(name: str) -> str:
    """The folder of the shipped metric `name` ("accuracy" or "top_k_accuracy"), as `evaluate.load` takes it."""
    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        shipped = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"No metric {name!r} ships with hf_vit; available: {shipped}.")
    return str(folder)


@cache
def load_metric(name: str):
    """`evaluate.load` of a shipped metric, kept in memory (no cache files that processes could contend for)."""
    import evaluate

    return evaluate.load(metric_path(name), keep_in_memory=True)


def classification_metrics(ranked: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Top-1 accuracy, and top-5 accuracy when there are more than 5 classes, through the shipped metric modules."""
    metrics = {"accuracy": load_metric("accuracy").compute(predictions=ranked[:, 0], references=labels)["accuracy"]}
    if num_classes > TOP_K:
        top_k = load_metric("top_k_accuracy").compute(predictions=ranked[:, :TOP_K], references=labels, k=TOP_K)
        metrics[f"top{TOP_K}_accuracy"] = top_k["top_k_accuracy"]
    return metrics
