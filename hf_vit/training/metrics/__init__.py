"""Metric modules for `evaluate`, shipped inside the package so they load by path, without the Hub."""

from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


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
