"""Figures: the full 77x77 confusion matrix, a zoom on the most confused intents, and comparisons.

Every function returns the figure and, given `path`, also saves it as PNG, so a notebook shows it
inline and the run folder keeps a copy.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from ..distributed import is_main_process


def _normalise_rows(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0)


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None and is_main_process():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    return fig


def plot_confusion_matrix(confusion: np.ndarray, label_names: list[str], title: str = "",
                          path: str | Path | None = None) -> Figure:
    """Row-normalised matrix (each row: where that true intent's examples went), every label shown."""
    size = len(label_names)
    fig, ax = plt.subplots(figsize=(max(6, size * 0.22), max(5, size * 0.2)), dpi=100)
    image = ax.imshow(_normalise_rows(np.asarray(confusion)), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(size), label_names, rotation=90, fontsize=6)
    ax.set_yticks(range(size), label_names, fontsize=6)
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("true intent")
    ax.set_title(title or "confusion matrix (rows normalised)")
    fig.colorbar(image, ax=ax, fraction=0.03, label="share of the true intent's examples")
    return _save(fig, path)


def most_confused_intents(confusion: np.ndarray, k: int = 12) -> list[int]:
    """Indices of the intents involved in the largest off-diagonal cells, up to k of them."""
    off = np.asarray(confusion).copy()
    np.fill_diagonal(off, 0)
    chosen: list[int] = []
    for flat in np.argsort(-off, axis=None, kind="stable"):
        true, pred = np.unravel_index(flat, off.shape)
        if off[true, pred] == 0 or len(chosen) >= k:
            break
        chosen.extend(i for i in (int(true), int(pred)) if i not in chosen)
    return chosen[:k]


def plot_confusion_zoom(confusion: np.ndarray, label_names: list[str], intents: list[int] | None = None,
                        title: str = "", path: str | Path | None = None, ax=None) -> Figure:
    """The sub-matrix of the most confused intents, with the counts written in each cell."""
    confusion = np.asarray(confusion)
    intents = intents if intents is not None else most_confused_intents(confusion)
    sub = confusion[np.ix_(intents, intents)]
    share = _normalise_rows(confusion)[np.ix_(intents, intents)]
    fig = ax.figure if ax is not None else plt.figure(figsize=(8, 7), dpi=100)
    ax = ax or fig.add_subplot()
    ax.imshow(share, cmap="Oranges", vmin=0, vmax=1)
    names = [label_names[i] for i in intents]
    ax.set_xticks(range(len(intents)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(intents)), names, fontsize=8)
    for (row, col), count in np.ndenumerate(sub):
        if count:
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if share[row, col] > 0.5 else "black")
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("true intent")
    ax.set_title(title or "most confused intents (counts; colour: row share)")
    return _save(fig, path)


def plot_confusion_zooms_side_by_side(records: list[dict], intents: list[str],
                                      path: str | Path | None = None) -> Figure:
    """The same intents' sub-matrix for every run, so sizes and methods can be compared."""
    fig, axes = plt.subplots(1, len(records), figsize=(7 * len(records), 6.5), dpi=100, squeeze=False)
    for ax, record in zip(axes[0], records):
        names = record["label_names"]
        plot_confusion_zoom(np.asarray(record["confusion_matrix"]), names,
                            [names.index(n) for n in intents], title=run_label(record), ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def run_label(record: dict) -> str:
    return f"{record['run_name']}: {record['method']} {Path(record['model_id']).name}"


MARKER_AREA = 60  # scatter marker area, points^2


def plot_accuracy_vs_memory(records: list[dict], path: str | Path | None = None) -> Figure:
    """Test accuracy against the weight footprint: what each GB bought. Each label goes where it
    overlaps no other label or marker (_place_labels), so runs at close or equal points stay readable."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    points = [(record["footprint_bytes"] / 1e9, record["metrics"]["accuracy"]) for record in records]
    for x, y in points:
        ax.scatter(x, y, s=MARKER_AREA)
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("model footprint (GB = 1e9 bytes)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs memory")
    ax.grid(alpha=0.3)
    _place_labels(ax, [run_label(record) for record in records], points)
    return _save(fig, path)


def _place_labels(ax, labels: list[str], points: list[tuple[float, float]], fontsize: int = 8) -> None:
    """Annotate each point, in order, at the first offset (right/left of the point, above/below,
    then one line further out each round) where its label overlaps no earlier label and no marker
    and stays inside the axes; failing that, where it overlaps least. Deterministic."""
    ax.autoscale_view()
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    radius = np.sqrt(MARKER_AREA) / 2 * ax.figure.dpi / 72  # marker radius, pixels
    taken = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)
             for x, y in ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))]
    line = fontsize * 1.4  # points
    offsets = [((dx, sign * (3 + round_ * line)), ha, "bottom" if sign > 0 else "top")
               for round_ in range(len(labels) + 1) for sign in (1, -1) for dx, ha in ((6, "left"), (-6, "right"))]

    def put(text, offset, ha, va) -> Bbox:
        text.xyann = offset
        text.set_horizontalalignment(ha)
        text.set_verticalalignment(va)
        return text.get_window_extent(renderer)

    for label, point in zip(labels, points):
        text = ax.annotate(label, point, xytext=offsets[0][0], textcoords="offset points", fontsize=fontsize)
        costs = []
        for place in offsets:
            box = put(text, *place)
            outside = box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1
            costs.append((sum(box.overlaps(other) for other in taken), outside))
            if costs[-1] == (0, False):
                break
        taken.append(put(text, *offsets[costs.index(min(costs))]))


def plot_throughput(records: list[dict], path: str | Path | None = None) -> Figure:
    """Training examples/s and peak memory, one bar per run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    labels = [run_label(r) for r in records]
    left.barh(labels, [r["training"]["examples_per_second"] for r in records], color="tab:green")
    left.set_xlabel("training examples / s")
    right.barh(labels, [r["training"]["peak_memory_bytes"] / 2**30 for r in records], color="tab:purple")
    right.set_xlabel("peak memory during training (GiB)")
    right.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_curves(records: list[dict], path: str | Path | None = None) -> Figure:
    """Training loss against training examples seen: one axis for every run, whatever its batch
    size, accumulation or logging interval. A results file written before examples were counted
    per logged loss has no curve (a note says so)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for record in records:
        training = record["training"]
        if training.get("loss_examples_seen") is None:
            print(f"{run_label(record)}: no loss curve; its results.json predates the examples-seen count "
                  "per logged loss: rerun that notebook to plot it.")
            continue
        ax.plot(training["loss_examples_seen"], training["losses"], marker=".", label=run_label(record))
    ax.set_xlabel("training examples seen")
    ax.set_ylabel("training loss (mean over each logging interval)")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
