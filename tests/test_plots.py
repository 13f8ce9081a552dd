import matplotlib.image
import numpy as np

from qlora_helpers import data
from qlora_helpers.notebook import plots


def _confusion(seed=0):
    rng = np.random.default_rng(seed)
    confusion = np.diag(rng.integers(20, 40, 77))
    confusion[0, 7], confusion[7, 0], confusion[12, 3] = 9, 6, 4
    return confusion


def test_confusion_matrix_png_is_large_enough_to_read_every_label(tmp_path):
    path = tmp_path / "cm.png"
    fig = plots.plot_confusion_matrix(_confusion(), list(data.BANKING77_INTENTS), path=path)
    height, width, _ = matplotlib.image.imread(path).shape
    assert width >= 1_400 and height >= 1_400  # ~18 px per label row and column at 77 labels
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == list(data.BANKING77_INTENTS)


def test_zoom_shows_the_most_confused_intents(tmp_path):
    names = list(data.BANKING77_INTENTS)
    assert plots.most_confused_intents(_confusion(), k=4) == [0, 7, 12, 3]
    path = tmp_path / "zoom.png"
    fig = plots.plot_confusion_zoom(_confusion(), names, path=path)
    assert matplotlib.image.imread(path).shape[0] > 300
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert shown[:2] == ["card_arrival", "card_delivery_estimate"]
    assert "9" in [t.get_text() for t in fig.axes[0].texts]


def test_comparison_plots_write_pngs(tmp_path):
    records = [{"run_name": name, "method": method, "model_id": "offline:tiny-qwen2",
                "footprint_bytes": size, "metrics": {"accuracy": acc},
                "training": {"examples_per_second": eps, "peak_memory_bytes": 2**30, "losses": [4.0, 3.0],
                             "loss_examples_seen": [160, 320]},
                "label_names": list(data.BANKING77_INTENTS), "confusion_matrix": _confusion(i).tolist()}
               for i, (name, method, size, acc, eps) in enumerate(
                   [("01", "full", 9e7, 0.9, 50.0), ("02", "lora", 9e7, 0.85, 60.0), ("03", "qlora", 3e7, 0.8, 20.0)])]
    for make, name in [(plots.plot_accuracy_vs_memory, "acc.png"), (plots.plot_throughput, "tp.png"),
                       (plots.plot_loss_curves, "loss.png")]:
        make(records, path=tmp_path / name)
        assert matplotlib.image.imread(tmp_path / name).shape[1] > 500
    plots.plot_confusion_zooms_side_by_side(records, ["card_arrival", "card_delivery_estimate"],
                                            path=tmp_path / "side.png")
    assert matplotlib.image.imread(tmp_path / "side.png").shape[1] > 3 * 400


def _run(name, method, footprint, accuracy, losses=(4.0, 3.0), seen=(100, 200)):
    return {"run_name": name, "method": method, "model_id": "offline:all-MiniLM-L6-v2", "footprint_bytes": footprint,
            "metrics": {"accuracy": accuracy},
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
