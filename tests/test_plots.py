import matplotlib.image
import matplotlib.pyplot
import numpy as np

from qlora_helpers import data
from qlora_helpers.notebook import plots


def _confusion(seed=0):
    rng = np.random.default_rng(seed)
    confusion = np.diag(rng.integers(20, 40, 77))
    confusion[0, 7], confusion[7, 0], confusion[12, 3] = 9, 6, 4
    return confusion


PAGE_PX = 1280  # the page a rendered notebook is read on; its output column is about 1170 px of it


def _page_px(png_path, dpi) -> int:
    """A saved figure's width on the page: its pixels at `dpi`, shown at plots.DPI."""
    return round(matplotlib.image.imread(png_path).shape[1] * plots.DPI / dpi)


def test_confusion_matrix_fits_the_page_and_is_sharp_enough_to_zoom_into(tmp_path):
    """It was 1,600 px wide at 100 dpi: a 1280 px page shrank it, its 6 pt labels with it."""
    path = tmp_path / "cm.png"
    title = "01_full_precision_baseline: full offline:smollm2-135m (rows normalised)"
    fig = plots.plot_confusion_matrix(_confusion(), list(data.BANKING77_INTENTS), title=title, path=path)
    assert _page_px(path, plots.SHARP_DPI) <= plots.PAGE_INCHES * plots.DPI < PAGE_PX - 100
    height, width, _ = matplotlib.image.imread(path).shape
    assert width >= 2_000 and height >= 2_000  # ~27 px per label row and column at 77 labels, when zoomed
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == list(data.BANKING77_INTENTS)


def test_in_a_notebook_the_confusion_matrix_shows_sharp_at_page_size(monkeypatch):
    """Drawn at twice the pixels, displayed at half (retina): a sharp figure that fits."""
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    fig = plots.plot_confusion_matrix(_confusion(), list(data.BANKING77_INTENTS))
    [image] = shown
    assert image.retina and image.width <= plots.PAGE_INCHES * plots.DPI
    assert not matplotlib.pyplot.fignum_exists(fig.number)  # closed: the inline backend does not show it twice


def test_zoom_shows_the_most_confused_intents(tmp_path):
    names = list(data.BANKING77_INTENTS)
    assert plots.most_confused_intents(_confusion(), k=4) == [0, 7, 12, 3]
    path = tmp_path / "zoom.png"
    fig = plots.plot_confusion_zoom(_confusion(), names, path=path)
    assert matplotlib.image.imread(path).shape[0] > 300
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert shown[:2] == ["card_arrival", "card_delivery_estimate"]
    assert "9" in [t.get_text() for t in fig.axes[0].texts]


def test_comparison_plots_write_pngs_that_fit_the_page(tmp_path):
    records = [{"run_name": name, "method": method, "model_id": "offline:tiny-qwen2",
                "footprint_bytes": size, "metrics": {"accuracy": acc}, "data": {"test_examples": 3080},
                "training": {"examples_per_second": eps, "peak_memory_bytes": 2**30, "losses": [4.0, 3.0],
                             "loss_examples_seen": [160, 320]},
                "label_names": list(data.BANKING77_INTENTS), "confusion_matrix": _confusion(i).tolist()}
               for i, (name, method, size, acc, eps) in enumerate(
                   [("01", "full", 9e7, 0.9, 50.0), ("02", "lora", 9e7, 0.85, 60.0), ("03", "qlora", 3e7, 0.8, 20.0)])]
    for make, name in [(plots.plot_accuracy_vs_memory, "acc.png"), (plots.plot_throughput, "tp.png"),
                       (plots.plot_loss_curves, "loss.png")]:
        make(records, path=tmp_path / name)
        assert 500 < _page_px(tmp_path / name, plots.DPI) <= plots.PAGE_INCHES * plots.DPI
    plots.plot_confusion_zooms_side_by_side(records, list(data.BANKING77_INTENTS[:10]), path=tmp_path / "side.png")
    assert 3 * 300 < _page_px(tmp_path / "side.png", plots.DPI) <= plots.PAGE_INCHES * plots.DPI  # was 2,083 px


def _run(name, method, footprint, accuracy, losses=(4.0, 3.0), seen=(100, 200), test_examples=3080):
    return {"run_name": name, "method": method, "model_id": "offline:all-MiniLM-L6-v2", "footprint_bytes": footprint,
            "metrics": {"accuracy": accuracy}, "data": {"test_examples": test_examples},
            "label_names": list(data.BANKING77_INTENTS),
            "training": {"losses": list(losses), "loss_examples_seen": None if seen is None else list(seen)}}


def test_accuracy_vs_memory_labels_do_not_overlap_for_close_runs():
    """Full and LoRA on one model share the footprint; two methods can score alike; a run can sit on
    another (the smoke profile's LoRA and QLoRA did)."""
    records = [_run("01_full_precision_baseline", "full", 91_000_000, 0.812),
               _run("02_lora_qwen2.5_1.5b", "lora", 91_000_000, 0.809),
               _run("03_qlora_qwen2.5_7b", "qlora", 53_000_000, 0.805),
               _run("03_qlora_again", "qlora", 53_000_000, 0.805),
               _run("05_qlora_r64", "qlora", 54_000_000, 0.806)]
    fig = plots.plot_accuracy_vs_memory(records)
    renderer = fig.canvas.get_renderer()
    labels = fig.axes[0].texts
    assert sorted(t.get_text() for t in labels) == sorted(plots.run_label(r) for r in records)
    boxes = [t.get_window_extent(renderer) for t in labels]
    overlapping = [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert overlapping == []
    figure = fig.bbox
    assert all(figure.x0 <= b.x0 and b.x1 <= figure.x1 and figure.y0 <= b.y0 and b.y1 <= figure.y1 for b in boxes)
    again = plots.plot_accuracy_vs_memory(records).axes[0].texts  # deterministic
    assert [t.xyann for t in again] == [t.xyann for t in labels]


def test_accuracy_axis_starts_at_zero_with_chance_and_standard_errors():
    """Accuracies of 0.932 and 0.924 on 3,080 rows differ by less than two standard errors; an axis
    from 0.924 to 0.932 drew that gap across the whole plot."""
    records = [_run("01_full_precision_baseline", "full", 540_000_000, 0.932),
               _run("03_qlora_qwen2.5_7b", "qlora", 110_000_000, 0.924, test_examples=200)]
    ax = plots.plot_accuracy_vs_memory(records).axes[0]
    low, high = ax.get_ylim()
    assert low == 0 and high >= 1
    assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [1 / 77]  # chance
    bars = [segments[0] for collection in ax.collections for segments in [collection.get_segments()]]
    spans = sorted(round(segment[1][1] - segment[0][1], 4) for segment in bars)  # each bar: 2 standard errors
    assert spans == [round(2 * (0.932 * 0.068 / 3080) ** 0.5, 4), round(2 * (0.924 * 0.076 / 200) ** 0.5, 4)]
    assert "standard error" in ax.get_title() and "from 0" in ax.get_title()


def test_loss_curves_share_the_examples_seen_axis(capsys):
    """Batch 16 logs every 160 examples, batch 64 every 640: each line sits at the examples it had seen."""
    small = _run("01_full_precision_baseline", "full", 1, 0.5, [4.0, 3.5, 3.0, 2.8], [160, 320, 480, 640])
    large = _run("03_qlora_qwen2.5_7b", "qlora", 1, 0.5, [4.0, 3.2], [640, 1280])
    old = _run("02_lora_qwen2.5_1.5b", "lora", 1, 0.5, [4.0, 3.0], None)  # results.json from before the count
    ax = plots.plot_loss_curves([small, old, large]).axes[0]
    assert [list(line.get_xdata()) for line in ax.lines] == [[160, 320, 480, 640], [640, 1280]]
    assert [list(line.get_ydata()) for line in ax.lines] == [small["training"]["losses"], large["training"]["losses"]]
    assert ax.get_xlabel() == "training examples seen"
    assert f"{plots.run_label(old)}: no loss curve" in capsys.readouterr().out
