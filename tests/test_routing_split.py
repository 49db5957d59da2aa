"""Routing numbers split by ground truth (issue 24): a defect moves the pooled feature a prototype router
reads, so anomalous images can be mis-routed where normal ones are not. Every class reports routing accuracy
on its normal and on its anomalous test images; metrics.json has a confusion matrix per split; `moleflow
compare`, TensorBoard and the report show them, and the report lists every mis-routed image with the task it
went to."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moleflow.errors import MoleflowError
from moleflow.evaluation import metrics as M
from moleflow.evaluation.evaluator import Evaluator


def test_routing_by_split_against_a_hand_count():
    true = [0, 0, 0, 0, 1, 1, 1, 2]
    pred = [0, 1, 0, 2, 1, 1, 0, 2]
    labels = [0, 0, 1, 1, 0, 1, 1, 1]
    # normal: images 0, 1, 4 -> routed 0 (ok), 1 (wrong), 1 (ok): 2 of 3
    # anomalous: images 2, 3, 5, 6, 7 -> 0 (ok), 2 (wrong), 1 (ok), 0 (wrong), 2 (ok): 3 of 5
    split = M.routing_by_split(true, pred, labels, num_tasks=3)
    assert split["normal"]["images"] == 3 and split["anomalous"]["images"] == 5
    assert split["normal"]["accuracy"] == pytest.approx(2 / 3)
    assert split["anomalous"]["accuracy"] == pytest.approx(3 / 5)
    assert split["normal"]["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert split["anomalous"]["confusion"] == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    total = np.array(split["normal"]["confusion"]) + np.array(split["anomalous"]["confusion"])
    np.testing.assert_array_equal(total, M.confusion_matrix(true, pred, 3))  # the splits add up to the whole
    only_normal = M.routing_accuracy_by_split([1, 1], [1, 0], [0, 0])
    assert only_normal["normal"] == 0.5 and math.isnan(only_normal["anomalous"])  # a split without images
    with pytest.raises(MoleflowError, match="3 labels but 2 routed images"):
        M.routing_by_split([0, 1], [0, 1], [0, 1, 1], num_tasks=2)
    with pytest.raises(MoleflowError, match="labels must be binary"):
        M.routing_accuracy_by_split([0, 1], [0, 1], [0, 2])


class FixedRouter:
    def __init__(self, decisions):
        self.decisions = torch.as_tensor(decisions)

    def predict(self, pooled, true_tasks=None):
        return self.decisions


class TaskOffsetModel(torch.nn.Module):
    def patch_scores(self, feats, task_id):
        return feats.mean(-1) + task_id


def _test_set(n=6):
    g = torch.Generator().manual_seed(0)
    patch = torch.rand(n, 4, 4, 5, generator=g)
    masks = torch.zeros(n, 1, 8, 8)
    masks[n // 2:, :, 2:5, 2:5] = 1  # the second half is anomalous
    return SimpleNamespace(patch=patch, pooled=patch.mean((1, 2)), labels=(torch.arange(n) >= n // 2).long(),
                           masks=masks, paths=[f"/d/grid/test/{'good' if i < n // 2 else 'cut'}/{i:03d}.png"
                                               for i in range(n)])


def _evaluator(decisions):
    strategy = SimpleNamespace(frozen_after_task=True, model_task=lambda t: t)
    cfg = SimpleNamespace(score_aggregation="max", topk=1, blur_sigma=0.0)
    return Evaluator(TaskOffsetModel(), strategy, FixedRouter(decisions), cfg, (8, 8), torch.device("cpu"))


def test_each_class_reports_routing_on_its_normal_and_its_anomalous_images():
    fs = _test_set()
    decisions = [1, 1, 2, 1, 0, 0]  # task 1: normal rows 0-2 -> one wrong; anomalous rows 3-5 -> two wrong
    metrics = _evaluator(decisions).metrics(_evaluator(decisions).score(1, "grid", fs), fs)
    assert metrics["routing_accuracy"] == pytest.approx(3 / 6)
    assert metrics["routing_accuracy_normal"] == pytest.approx(2 / 3)
    assert metrics["routing_accuracy_anomalous"] == pytest.approx(1 / 3)
    assert not any(k.startswith("routing_accuracy") and k.endswith("_oracle") for k in metrics)  # not a score


def test_metrics_json_tensorboard_compare_and_report_show_the_split_and_every_misrouted_image(tmp_path):
    from moleflow.compare import compare_runs
    from moleflow.evaluation.report import write_final_report
    from moleflow.report.pages import _routing
    from moleflow.run_folder import RunFolder

    fs = _test_set()
    decisions = [0, 1, 0, 0, 1, 1]  # task 0: normal row 1 and anomalous rows 4, 5 go to task 1 ("wood")
    ev = _evaluator(decisions)
    scored = ev.score(0, "grid", fs)
    metrics = ev.metrics(scored, fs, keep_maps=True)
    images = torch.rand(6, 3, 8, 8)
    test = SimpleNamespace(class_name="grid", task_id=0, test=fs, image=lambda i: images[i])
    tasks = [SimpleNamespace(name="grid", classes=["grid"], task_id=0, tests=[test]),
             SimpleNamespace(name="wood", classes=["wood"], task_id=1, tests=[])]
    cfg = SimpleNamespace(eval=SimpleNamespace(save_maps=False, heatmaps=0, score_aggregation="max", topk=1,
                                               blur_sigma=0.0),
                          train=SimpleNamespace(router="mahalanobis"), flat=lambda: {"x": 1},
                          spec=SimpleNamespace(own_scores=False))
    model = SimpleNamespace(param_counts=lambda: {"shared": 0, "per_task": [0, 0]})
    state = SimpleNamespace(cfg=cfg, tasks=tasks, results={1: {"grid": metrics}}, model=model, fit_log=[])
    logged = {}
    tb = SimpleNamespace(scalar=lambda tag, value, step: logged.__setitem__(tag, value), image=lambda *a: None,
                         hparams=lambda config, final: logged.update(final))
    run = RunFolder.create(tmp_path, "x", "v12")
    out = write_final_report(run, state, {"grid": scored}, {}, tb)

    split = out["routing"]["by_split"]
    assert split["normal"] == {"images": 3, "accuracy": pytest.approx(2 / 3), "confusion": [[2, 1], [0, 0]]}
    assert split["anomalous"] == {"images": 3, "accuracy": pytest.approx(1 / 3), "confusion": [[1, 2], [0, 0]]}
    assert run.read_json("metrics.json")["routing"]["by_split"]["anomalous"]["confusion"] == [[1, 2], [0, 0]]
    assert logged["final/grid/routing_accuracy_anomalous"] == pytest.approx(1 / 3)
    assert logged["hparam/mean_routing_accuracy_normal"] == pytest.approx(2 / 3)
    csv = (run.path / "results.csv").read_text()
    assert "routing_accuracy_normal" in csv.splitlines()[0]

    html = _routing(out, run.read_per_image(), {"grid": "grid"}, "/d")
    assert "normal test images (3): accuracy 0.6667" in html and "anomalous test images (3): accuracy 0.3333" in html
    assert "Mis-routed test images (3)" in html
    for name, truth in (("test/good/001.png", "normal"), ("test/cut/004.png", "anomalous"),
                        ("test/cut/005.png", "anomalous")):
        assert f"<td class=l>{name}</td><td>{truth}</td><td>grid</td><td>wood</td>" in html
    assert "good/000.png" not in html

    (run.path / "config.json").write_text('{"version": "v12", "model": "moleflow"}')
    table = compare_runs([run.path])
    header = next(line for line in table.splitlines() if line.startswith("class"))
    assert header.split() == ["class", "routing", "acc", "routing", "normal", "routing", "anomalous", "image",
                              "AUROC", "pixel", "AUROC", "AUPRO"]
    assert next(line for line in table.splitlines() if line.startswith("grid")).split()[1:4] == \
        ["0.5000", "0.6667", "0.3333"]


def test_a_table_of_runs_from_before_the_split_keeps_its_columns():
    from moleflow.run_summary import COLUMNS, RunSummary, shown_columns

    old = RunSummary(path=None, version="v10", strategy="moleflow", model="moleflow", experiment="x", classes=["a"],
                     per_class={"a": {k: (1.0 if k == "routing_accuracy" else None) for k, _ in COLUMNS}},
                     mean={k: None for k, _ in COLUMNS})
    assert [k for k, _ in shown_columns([old])] == ["routing_accuracy", "image_auroc", "pixel_auroc", "aupro"]
    new = RunSummary(path=None, version="v12", strategy="moleflow", model="moleflow", experiment="x", classes=["a"],
                     per_class={"a": {k: 1.0 for k, _ in COLUMNS}}, mean={k: 1.0 for k, _ in COLUMNS})
    assert shown_columns([old, new]) == COLUMNS
