"""The optional `score_maps` contract hook: extra named maps travel with the anomaly score through
routing (a misrouted image takes the routed expert's extra map too), are scored as pixel_auroc_<name>,
and malformed returns are one clear error."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from moleflow.errors import MoleflowError
from moleflow.evaluation.evaluator import Evaluator, model_score_maps
from moleflow.evaluation.maps import anomaly_maps


class TwoMapModel(torch.nn.Module):
    """score = mean feature + task; 'spread' = feature std * (task + 1): both depend on the expert."""

    def patch_scores(self, feats, task_id):
        return feats.mean(-1) + task_id

    def score_maps(self, feats, task_id):
        return {"score": self.patch_scores(feats, task_id), "spread": feats.std(-1) * (task_id + 1)}


class FixedRouter:
    def __init__(self, decisions):
        self.decisions = decisions

    def predict(self, pooled, true_tasks=None):
        return self.decisions


def _evaluator(model, decisions):
    strategy = SimpleNamespace(frozen_after_task=True, model_task=lambda t: t)
    cfg = SimpleNamespace(score_aggregation="max", topk=1, blur_sigma=0.0)
    return Evaluator(model, strategy, FixedRouter(decisions), cfg, (8, 8), torch.device("cpu"))


def _test_set(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    patch = torch.rand(n, 4, 4, 5, generator=g)
    masks = torch.zeros(n, 1, 8, 8)
    masks[n // 2:, :, 2:5, 2:5] = 1  # the second half is anomalous
    patch[n // 2:, 1:3, 1:3] += torch.rand(n - n // 2, 2, 2, 5, generator=g) * 3  # larger spread there
    return SimpleNamespace(patch=patch, pooled=patch.mean((1, 2)), labels=(torch.arange(n) >= n // 2).long(),
                           masks=masks)


def test_extra_maps_are_routed_with_the_score_and_scored_against_the_masks():
    fs = _test_set()
    decisions = torch.tensor([1, 1, 2, 1, 0, 1])  # rows 0, 2, 4 go to the wrong expert
    ev = _evaluator(TwoMapModel(), decisions)
    scored = ev.score(1, "grid", fs)
    for i, expert in enumerate(decisions.tolist()):
        assert torch.equal(scored.patch[i], fs.patch[i].mean(-1) + expert)
        assert torch.equal(scored.extras["spread"][i], fs.patch[i].std(-1) * (expert + 1))
    metrics = ev.metrics(scored, fs, keep_maps=True)
    extra = anomaly_maps(scored.extras["spread"], (8, 8), 0.0)
    assert torch.equal(scored.extra_maps["spread"], extra)
    expected = roc_auc_score(fs.masks[:, 0].numpy().astype(bool).ravel(), extra.numpy().ravel())
    assert metrics["pixel_auroc_spread"] == pytest.approx(expected)
    assert metrics["pixel_auroc_spread"] > 0.5  # the spread really marks the defect here


def test_a_model_without_the_hook_has_no_extras():
    class ScoreOnly(TwoMapModel):
        score_maps = None

    fs = _test_set()
    scored = _evaluator(ScoreOnly(), torch.ones(6, dtype=torch.long)).score(1, "grid", fs)
    assert scored.extras == {}
    metrics = _evaluator(ScoreOnly(), torch.ones(6)).metrics(scored, fs)
    assert {k for k in metrics if k.startswith("pixel_auroc_")} == {"pixel_auroc_oracle"}


@pytest.mark.parametrize("maps, message", [
    ({"spread": torch.zeros(2, 4, 4)}, "under 'score'"),
    ({"score": torch.zeros(2, 4, 4), "masks": torch.zeros(2, 4, 4)}, "'masks' is not allowed"),
    ({"score": torch.zeros(2, 4, 4), "two words": torch.zeros(2, 4, 4)}, "is not allowed"),
    ({"score": torch.zeros(2, 4, 4), "spread": torch.zeros(2, 8, 8)}, r"shape \(2, 8, 8\)"),
])
def test_malformed_score_maps_are_one_clear_error(maps, message):
    model = SimpleNamespace(score_maps=lambda x, t: maps)
    with pytest.raises(MoleflowError, match=message):
        model_score_maps(model, torch.zeros(2, 4, 4, 5), 0)


def test_saved_extra_maps_and_overlays_in_the_report(tmp_path):
    """write_final_report puts extras in maps/<class>.npz and heatmaps/<class>/<name>/ (via the Students
    plugin this runs end to end in plugins/moleflow-students/tests; here the report alone)."""
    from moleflow.evaluation.report import write_final_report
    from moleflow.run_folder import RunFolder

    fs = _test_set()
    fs.paths = [f"/d/grid/test/{'good' if i < 3 else 'cut'}/{i:03d}.png" for i in range(6)]
    ev = _evaluator(TwoMapModel(), torch.zeros(6, dtype=torch.long))
    scored = ev.score(0, "grid", fs)
    metrics = ev.metrics(scored, fs, keep_maps=True)
    images = torch.rand(6, 3, 8, 8)
    test = SimpleNamespace(class_name="grid", task_id=0, test=fs, image=lambda i: images[i])
    task = SimpleNamespace(name="grid", classes=["grid"], task_id=0, tests=[test])
    cfg = SimpleNamespace(eval=SimpleNamespace(save_maps=True, heatmaps=2, score_aggregation="max", topk=1,
                                               blur_sigma=0.0),
                          train=SimpleNamespace(router="mahalanobis"), flat=lambda: {"x": 1},
                          spec=SimpleNamespace(own_scores=False))
    model = SimpleNamespace(param_counts=lambda: {"shared": 0, "per_task": [0]})
    state = SimpleNamespace(cfg=cfg, tasks=[task], results={0: {"grid": metrics}}, model=model, fit_log=[])
    tb = SimpleNamespace(scalar=lambda *a: None, image=lambda *a: None, hparams=lambda *a: None)
    run = RunFolder.create(tmp_path, "x", "v3")
    write_final_report(run, state, {"grid": scored}, {}, tb)
    saved = np.load(run.path / "maps" / "grid.npz")
    np.testing.assert_array_equal(saved["spread"], scored.extra_maps["spread"].numpy())
    assert not np.array_equal(saved["spread"], saved["maps"])
    rows = run.read_per_image()
    overlays = sorted(p.name for p in (run.path / "heatmaps" / "grid" / "spread").iterdir())
    assert overlays == ["good_000.png", "good_001.png"]  # --heatmaps 2: the first two images
    assert rows[0]["heatmap_spread"] == "heatmaps/grid/spread/good_000.png"
    assert rows[0]["heatmap"] == "heatmaps/grid/good_000.png" and "heatmap_spread" not in rows[2]
