"""Figures: the full 77x77 confusion matrix, a zoom on the most confused intents, and comparisons.

Every function returns the figure and, given `path`, also saves it as PNG, so a notebook shows it
inline and the run folder keeps a copy. Every figure fits a page 1280 px wide (PAGE_INCHES at the
100 dpi the figures are drawn at): a wider one is shrunk by the browser, its labels with it.
"""
from __future__ import annotations

from pathlib import Path

import io

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from ..distributed import is_main_process

DPI = 100  # every figure: 1 inch = 100 px on the page
PAGE_INCHES = 11.5  # the widest a figure may be, labels included: a rendered notebook's output column at 1280 px
SHARP_DPI = 2 * DPI  # the confusion matrix's pixels: its 77 labels stay legible when the reader zooms in


def _normalise_rows(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0)


def _save(fig: Figure, path: str | Path | None, dpi: int = DPI) -> Figure:
    if path is not None and is_main_process():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _show_sharp(fig: Figure) -> None:
    """In a notebook, show the figure drawn at SHARP_DPI but sized as at DPI (IPython's 'retina'
    format, for this figure alone), and close it so the inline backend does not show it again."""
    from IPython import get_ipython
    from IPython.display import Image, display

    if get_ipython() is None:
        return
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=SHARP_DPI, bbox_inches="tight")
    display(Image(png.getvalue(), retina=True))
    plt.close(fig)


def plot_confusion_matrix(confusion: np.ndarray, label_names: list[str], title: str = "",
                          path: str | Path | None = None) -> Figure:
    """Row-normalised matrix (each row: where that true intent's examples went), every label shown.
    Page-wide with 6 pt labels (77 rows in about 8 inches), drawn at SHARP_DPI in the notebook and the
    PNG so that zooming in reads every label."""
    size = len(label_names)
    fig, ax = plt.subplots(figsize=(10.6, 10.6), dpi=DPI)
    image = ax.imshow(_normalise_rows(np.asarray(confusion)), cmap="Blues", vmin=0, vmax=1)
    fontsize = min(8, 430 / size)  # points: 5.6 at 77 labels, 8 on a small label set
    ax.set_xticks(range(size), label_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(size), label_names, fontsize=fontsize)
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("true intent")
    ax.set_title(title or "confusion matrix (rows normalised)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="share of the true intent's examples")
    _save(fig, path, dpi=SHARP_DPI)
    _show_sharp(fig)
    return fig


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
    fig = ax.figure if ax is not None else plt.figure(figsize=(8, 7), dpi=DPI)
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
    """The same intents' sub-matrix for every run, so sizes and methods can be compared: up to three
    panels a row, intent names on the left of each row only (the panels share them), to fit the page."""
    columns = min(3, len(records))
    rows = -(-len(records) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2 + 3.1 * columns, 4.6 * rows), dpi=DPI, squeeze=False)
    for index, (ax, record) in enumerate(zip(axes.flat, records)):
        names = record["label_names"]
        plot_confusion_zoom(np.asarray(record["confusion_matrix"]), names, [names.index(n) for n in intents],
                            title=run_label(record).replace(": ", ":\n", 1), ax=ax)
        ax.title.set_fontsize(9)
        if index % columns:
            ax.set_yticklabels([])
            ax.set_ylabel("")
    for ax in axes.flat[len(records):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def run_label(record: dict) -> str:
    return f"{record['run_name']}: {record['method']} {Path(record['model_id']).name}"


MARKER_AREA = 60  # scatter marker area, points^2


def plot_accuracy_vs_memory(records: list[dict], path: str | Path | None = None) -> Figure:
    """Test accuracy against the weight footprint: what each GB bought. The accuracy axis runs from 0
    to 1, so a gap looks as large as it is, with chance (1/number of intents) dashed and each
    accuracy's standard error, sqrt(p(1-p)/n) over its n test rows, as an error bar. Each label goes
    where it overlaps no other label or marker (_place_labels), so runs at close or equal points stay
    readable."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=DPI)
    points = [(record["footprint_bytes"] / 1e9, record["metrics"]["accuracy"]) for record in records]
    for record, (x, y) in zip(records, points):
        ax.errorbar(x, y, yerr=accuracy_standard_error(record), fmt="o", markersize=np.sqrt(MARKER_AREA),
                    capsize=4)
    chance = 1 / len(records[0]["label_names"])
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
    ax.margins(x=0.15)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("model footprint (GB = 1e9 bytes)")
    ax.set_ylabel(f"test accuracy (dashed: chance, {chance:.1%})")
    ax.set_title("accuracy vs memory (axis from 0; bars: ±1 standard error)", fontsize=10)
    ax.grid(alpha=0.3)
    _place_labels(ax, [run_label(record) for record in records], points)
    return _save(fig, path)


def test_set_size(record: dict) -> int:
    """How many test rows a run's accuracy is over (results written before the count: its confusion matrix's sum)."""
    return record.get("data", {}).get("test_examples") or int(np.sum(record["confusion_matrix"]))


def accuracy_standard_error(record: dict) -> float:
    """The binomial standard error of a run's test accuracy, sqrt(p(1-p)/n), n its test rows."""
    accuracy = record["metrics"]["accuracy"]
    return float(np.sqrt(accuracy * (1 - accuracy) / test_set_size(record)))


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
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=DPI)
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
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
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
