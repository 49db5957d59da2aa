"""A stream with image-level labels only (a folder data set without masks/, as many real data sets are): image
metrics and routing split by ground truth everywhere; pixel metrics n/a in the printed table, metrics.json
(null), the report and TensorBoard (left out, never a NaN point)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

from moleflow.cli import main


def _folder_stream(bench, root):
    """The embedded benchmark's classes rearranged as the folder format without masks."""
    for cls in ("leather", "grid"):
        good, defect = root / cls / "images" / "good", root / cls / "images" / "defect"
        good.mkdir(parents=True)
        defect.mkdir(parents=True)
        for path in sorted((bench / cls / "train" / "good").glob("*.png")):
            shutil.copy(path, good / f"train_{path.name}")
        for path in sorted((bench / cls / "test").rglob("*.png")):
            target = good if path.parent.name == "good" else defect
            shutil.copy(path, target / f"{path.parent.name}_{path.name}")
    return root


def test_an_image_level_only_stream_reports_image_metrics_routing_and_pixel_metrics_as_na(tiny_bench, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _folder_stream(tiny_bench, tmp_path / "folder")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["train", "--data_path", str(data), "--dataset_format", "folder", "--task_classes", "leather",
                     "grid", "--model", "knn", "--img_size", "64", "--runs_dir", str(tmp_path / "runs"),
                     "--heatmaps", "2", "--quiet"])
    assert code == 0, out.getvalue()
    run = next((tmp_path / "runs").rglob("metrics.json")).parent
    rows = {line.split()[0]: line.split()[1:] for line in out.getvalue().splitlines() if line.strip()}
    for cls in ("leather", "grid", "mean"):  # routing all / normal / anomalous, image AUROC, pixel AUROC, AUPRO
        assert rows[cls][4:] == ["n/a", "n/a"] and all(0 <= float(v) <= 1 for v in rows[cls][:4])
    metrics = json.loads((run / "metrics.json").read_text())
    for cls in ("leather", "grid"):
        numbers = metrics["final"]["per_class"][cls]
        assert numbers["pixel_auroc"] is None and numbers["aupro"] is None and numbers["image_auroc"] > 0.5
        assert numbers["routing_accuracy_normal"] is not None and numbers["routing_accuracy_anomalous"] is not None
    assert metrics["routing"]["by_split"]["anomalous"]["images"] > 0
    index = (run / "report" / "index.html").read_text()
    assert "n/a" in index and "nan" not in index.lower()  # no NaN cell anywhere
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "final/leather/image_auroc" in scalars and "final/leather/routing_accuracy_anomalous" in scalars
    assert not [tag for tag in scalars if "pixel_auroc" in tag or "aupro" in tag]
