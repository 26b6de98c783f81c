"""Figures: the analyses of `hf_vit.tools.analysis` (attention rollout, attention distance, position embeddings and
filters) and a training run's curve (`log.jsonl`).

Needs matplotlib (`pip install hf_vit[analysis]`). Figures are built with the object-oriented API
(`matplotlib.figure.Figure`), so no pyplot state or interactive backend is touched.
"""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .analysis import AnalysisResult


def require_matplotlib() -> None:
    """Fail before any work is done when matplotlib is missing, saying how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError("Plotting needs matplotlib: pip install 'hf_vit[analysis]'.") from error


def _new_figure(width: float, height: float) -> "Figure":
    """A figure with its own Agg canvas; matplotlib is imported here so that only drawing needs it."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _mosaic(tiles: np.ndarray, columns: int, gap: int, fill: float) -> np.ndarray:
    """Lay (n, h, w[, c]) tiles out on a grid with `gap` pixels of `fill` between them."""
    count, height, width = tiles.shape[:3]
    rows = -(-count // columns)
    shape = (rows * (height + gap) - gap, columns * (width + gap) - gap, *tiles.shape[3:])
    canvas = np.full(shape, fill, dtype=np.float64)
    for index, tile in enumerate(tiles):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        canvas[top : top + height, left : left + width] = tile
    return canvas


def _grid_ticks(count: int, size: int) -> tuple[list[float], list[str]]:
    """Tick positions at tile centres, labelled 1..count (at most about 8 labels)."""
    step = max(1, round(count / 8))
    chosen = list(range(0, count, step))
    return [index * size + (size - 1) / 2 for index in chosen], [str(index + 1) for index in chosen]


def draw_rollout(ax: "Axes", image: np.ndarray, rollout: np.ndarray, title: str):
    """The image with the rollout map (upsampled bilinearly) laid over it; returns the overlay for a colourbar."""
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))
    overlay = ax.imshow(rollout, cmap="inferno", alpha=0.6, extent=(0, width, height, 0), interpolation="bilinear")
    ax.set_title(title)
    ax.set_axis_off()
    return overlay


def draw_attention_distance(ax: "Axes", distances: np.ndarray, max_distance: float, uniform_distance: float) -> None:
    """One dot per head at its layer (Figure 7, right), with the distance that uniform attention would give."""
    from matplotlib.ticker import MaxNLocator

    layers, heads = distances.shape
    depth = np.arange(1, layers + 1)
    for head in range(heads):
        ax.scatter(depth, distances[:, head], s=14, label=f"head {head + 1}")
    ax.axhline(uniform_distance, color="grey", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.set_title("Mean attention distance per head")
    ax.set_xlim(0.5, layers + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max_distance)
    ax.grid(alpha=0.3)
    if heads <= 16:
        ax.legend(fontsize="x-small", ncols=2 if heads > 8 else 1, loc="lower right")


def draw_position_similarity(ax: "Axes", similarity: np.ndarray):
    """A grid of grids: tile (i, j) is the cosine similarity of patch (i, j)'s embedding with all others."""
    grid_h, grid_w = similarity.shape[:2]
    canvas = similarity.transpose(0, 2, 1, 3).reshape(grid_h * grid_h, grid_w * grid_w)
    image = ax.imshow(canvas, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    for row in range(1, grid_h):
        ax.axhline(row * grid_h - 0.5, color="white", linewidth=1)
    for col in range(1, grid_w):
        ax.axvline(col * grid_w - 0.5, color="white", linewidth=1)
    xticks, xlabels = _grid_ticks(grid_w, grid_w)
    yticks, ylabels = _grid_ticks(grid_h, grid_h)
    ax.set_xticks(xticks, xlabels)
    ax.set_yticks(yticks, ylabels)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.set_title("Position embedding similarity")
    return image


def filter_tiles(components: np.ndarray) -> np.ndarray:
    """Components (k, C, ph, pw) as images (k, ph, pw, 3) in [0, 1], each stretched to its own range.

    RGB kernels are shown as colours; other channel counts as the grey mean over channels.
    """
    tiles = components.transpose(0, 2, 3, 1)
    if tiles.shape[-1] != 3:
        tiles = np.repeat(tiles.mean(axis=-1, keepdims=True), 3, axis=-1)
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    return (tiles - low) / np.where(span > 0, span, 1)


def draw_filters(ax: "Axes", components: np.ndarray, columns: int = 7) -> None:
    """The principal components of the patch-embedding filters as tiles (Figure 7, left)."""
    tiles = filter_tiles(components)
    gap = max(1, tiles.shape[1] // 8)
    ax.imshow(_mosaic(tiles, min(columns, len(tiles)), gap, 1.0), interpolation="nearest")
    ax.set_title(f"First {len(tiles)} principal components\nof the patch-embedding filters")
    ax.set_axis_off()


def rollout_figure(image: np.ndarray, rollout: np.ndarray, readout: str) -> "Figure":
    """Input, rollout overlay and the image masked by the rollout (as the paper's Figure 6)."""
    figure = _new_figure(12, 4.2)
    axes = figure.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("Input")
    axes[0].set_axis_off()
    overlay = draw_rollout(axes[1], image, rollout, f"Attention rollout ({readout})")
    figure.colorbar(overlay, ax=axes[1], shrink=0.8, label="Share of attention")
    mask = _upsample(rollout / (rollout.max() or 1.0), image.shape[:2])
    axes[2].imshow((image.astype(np.float64) * mask[..., None]).astype(np.uint8))
    axes[2].set_title("Input × rollout (normalised to max 1)")
    axes[2].set_axis_off()
    return figure


def attention_distance_figure(result: "AnalysisResult") -> "Figure":
    figure = _new_figure(6, 4.5)
    draw_attention_distance(figure.subplots(), *_distance_scale(result))
    return figure


def position_similarity_figure(similarity: np.ndarray) -> "Figure":
    figure = _new_figure(7, 6)
    ax = figure.subplots()
    image = draw_position_similarity(ax, similarity)
    figure.colorbar(image, ax=ax, shrink=0.8, label="Cosine similarity")
    return figure


def filters_figure(components: np.ndarray, columns: int = 7) -> "Figure":
    rows = -(-len(components) // columns)
    figure = _new_figure(columns * 0.9 + 0.5, rows * 0.9 + 0.9)
    draw_filters(figure.subplots(), components, columns)
    return figure


def overview_figure(result: "AnalysisResult", image: np.ndarray, readout: str) -> "Figure":
    """The first image's rollout next to the three panels of the paper's Figure 7, in one picture."""
    panels = 4 if result.filters is not None else 3
    figure = _new_figure(4.6 * panels, 4.4)
    axes = list(figure.subplots(1, panels))
    rollout_ax, distance_ax = axes[0], axes[-1]
    overlay = draw_rollout(rollout_ax, image, result.rollout_maps[0].numpy(), f"Attention rollout ({readout})")
    figure.colorbar(overlay, ax=rollout_ax, shrink=0.7, label="Share of attention")
    if result.filters is not None:
        draw_filters(axes[1], result.filters.components.numpy())
    similarity_ax = axes[-2]
    similarity = draw_position_similarity(similarity_ax, result.position_similarity.numpy())
    figure.colorbar(similarity, ax=similarity_ax, shrink=0.7, label="Cosine similarity")
    draw_attention_distance(distance_ax, *_distance_scale(result))
    return figure


def _distance_scale(result: "AnalysisResult") -> tuple[np.ndarray, float, float]:
    """The distances, the largest distance between two patch centres (top of the axis) and uniform attention's."""
    from .analysis import patch_distances  # torch: only the analysis figures need it

    distances = patch_distances(result.grid, result.token_stride).numpy()
    return result.attention_distance.numpy(), float(distances.max()) or 1.0, float(distances.mean())


def _upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a (gh, gw) map to (height, width) pixels."""
    rows = np.minimum(np.arange(size[0]) * values.shape[0] // size[0], values.shape[0] - 1)
    cols = np.minimum(np.arange(size[1]) * values.shape[1] // size[1], values.shape[1] - 1)
    return values[np.ix_(rows, cols)]


def save_figure(figure: "Figure", path: str | Path, dpi: int = 100) -> Path:
    """Write `figure` as a PNG and return its path."""
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    return path


def read_training_log(path: str | os.PathLike) -> tuple[dict[int, dict], dict[int, dict]]:
    """The training points ({step: {"train_loss", "learning_rate"}}) and evaluation points ({step: {"eval_loss",
    "eval_accuracy", ...}}) of a run's `log.jsonl`, in step order.

    A step logged twice (a run resumed from an earlier checkpoint) keeps its last value; a last line cut short (a
    run stopped while writing it) is left out; any other line that is not a JSON object with a step is an error.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read the training log {path}: {error}") from None
    train: dict[int, dict] = {}
    evaluation: dict[int, dict] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, TypeError, KeyError):
            if number == len(lines):  # no newline after it: cut short
                continue
            raise ValueError(f"{path}, line {number}: not a log record with a step: {line[:80]!r}") from None
        if "train_loss" in record:
            train[step] = record
        if "eval_loss" in record or "eval_accuracy" in record:
            evaluation[step] = record
    if not train and not evaluation:
        raise ValueError(f"{path} holds no training or evaluation points yet.")
    return dict(sorted(train.items())), dict(sorted(evaluation.items()))


def training_curve_figure(train: dict[int, dict], evaluation: dict[int, dict], title: str) -> "Figure":
    """Loss (training and held-out), held-out accuracy and learning rate against the update step."""
    figure = _new_figure(14, 4)
    loss_ax, accuracy_ax, lr_ax = figure.subplots(1, 3)
    figure.suptitle(title)
    if train:
        loss_ax.plot(list(train), [point["train_loss"] for point in train.values()], label="training")
    held_out = {step: point["eval_loss"] for step, point in evaluation.items() if "eval_loss" in point}
    if held_out:
        loss_ax.plot(list(held_out), list(held_out.values()), marker="o", label="held out")
    loss_ax.set_title("Loss")
    loss_ax.legend()
    accuracy = {step: point["eval_accuracy"] for step, point in evaluation.items() if "eval_accuracy" in point}
    if accuracy:
        accuracy_ax.plot(list(accuracy), [100 * value for value in accuracy.values()], marker="o", color="C1")
        best_step = max(accuracy, key=accuracy.get)
        accuracy_ax.annotate(
            f"{100 * accuracy[best_step]:.1f}%",
            (best_step, 100 * accuracy[best_step]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
    else:
        accuracy_ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=accuracy_ax.transAxes)
    accuracy_ax.set_title("Held-out accuracy (%)")
    rates = {step: point["learning_rate"] for step, point in train.items() if "learning_rate" in point}
    lr_ax.plot(list(rates), list(rates.values()), color="C2")
    lr_ax.set_title("Learning rate")
    for ax in (loss_ax, accuracy_ax, lr_ax):
        ax.set_xlabel("Update step")
        ax.grid(alpha=0.3)
    return figure


def save_training_curve(log_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Draw a run's `log.jsonl` as a PNG (loss, held-out accuracy, learning rate); return its path.

    Returns None, drawing nothing, when matplotlib is not installed: the curve is an extra, not a reason to fail a
    run. A log that cannot be read or has no points is a ValueError.
    """
    try:
        require_matplotlib()
    except ImportError:
        return None
    train, evaluation = read_training_log(log_path)
    title = f"Training curve of {Path(log_path).resolve().parent.name}"
    return save_figure(training_curve_figure(train, evaluation, title), png_path)
