"""Loss & metric node catalogue: every loss against a direct (numpy / hand) computation, its gradients,
its registry entry and its CompositeLoss error; the detection metrics against sklearn and hand counts,
and the NaN + warning policy on degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, precision_score, recall_score

from moleflow import registry
from moleflow.errors import MoleflowError
from moleflow.evaluation.detection import detection_from_decisions, detection_from_logits, pixel_statistics
from moleflow.evaluation.metrics import MetricUndefinedWarning
from moleflow.flow.model import MoLEFlow
from moleflow.losses.compose import CompositeLoss

LOSSES = ("bce", "deep_svdd_soft_boundary", "orthogonality", "iou", "distinctness",
          "selector_entropy", "selector_diversity")


def loss(name: str, **options):
    return registry.create("losses", name, **options)


# --- bce -------------------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]], dtype=torch.float64)
TARGETS = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)


def _bce_numpy(x: np.ndarray, t: np.ndarray, w: float) -> np.ndarray:
    sig = 1 / (1 + np.exp(-x))
    return -(w * t * np.log(sig) + (1 - t) * np.log(1 - sig))


@pytest.mark.parametrize("pos_weight", [None, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_matches_numpy_and_torch(pos_weight, reduction):
    got = loss("bce", pos_weight=pos_weight, reduction=reduction)({"logits": LOGITS}, {"targets": TARGETS})
    per = _bce_numpy(LOGITS.numpy(), TARGETS.numpy(), 1.0 if pos_weight is None else pos_weight)
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    torch_pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64)
    ref = F.binary_cross_entropy_with_logits(LOGITS, TARGETS, pos_weight=torch_pw, reduction=reduction)
    torch.testing.assert_close(got, ref)


def test_bce_targets_from_outputs_and_batch_wins():
    fn = loss("bce")
    from_outputs = fn({"logits": LOGITS, "targets": TARGETS})
    from_batch = fn({"logits": LOGITS, "targets": 1 - TARGETS}, {"targets": TARGETS})
    assert from_outputs.item() == pytest.approx(from_batch.item(), rel=1e-12)
    # (B,1,...) targets against (B,...) logits are accepted; a different count is not
    assert fn({"logits": LOGITS}, {"targets": TARGETS[:, None]}).item() == pytest.approx(from_outputs.item())
    with pytest.raises(MoleflowError, match="targets .* does not match logits"):
        fn({"logits": LOGITS}, {"targets": TARGETS[:, :2]})


def test_bce_errors_name_what_is_missing_or_wrong():
    with pytest.raises(MoleflowError, match="'bce'.*'targets'"):
        loss("bce")({"logits": LOGITS}, {"images": torch.zeros(1)})
    with pytest.raises(MoleflowError, match=r"\[0, 1\]"):
        loss("bce")({"logits": LOGITS}, {"targets": TARGETS * 2})
    with pytest.raises(MoleflowError, match="reduction"):
        loss("bce", reduction="avg")
    with pytest.raises(MoleflowError, match="pos_weight"):
        loss("bce", pos_weight=0.0)


def test_bce_gradient_reaches_logits():
    logits = LOGITS.clone().requires_grad_(True)
    loss("bce")({"logits": logits}, {"targets": TARGETS}).backward()
    expected = (torch.sigmoid(LOGITS) - TARGETS) / LOGITS.numel()
    torch.testing.assert_close(logits.grad, expected)


# --- soft-boundary Deep SVDD -----------------------------------------------------------------------

def _embeddings_at_squared_distances(d2: list[float], center: torch.Tensor | None = None) -> torch.Tensor:
    """Vectors of width 2 whose squared distance to `center` (default 0) are d2."""
    z = torch.zeros(len(d2), 2, dtype=torch.float64)
    z[:, 0] = torch.tensor(d2, dtype=torch.float64).sqrt()
    return z if center is None else z + center


def test_svdd_known_radius_and_distances():
    d2 = [0.25, 1.0, 4.0, 9.0]
    fn = loss("deep_svdd_soft_boundary", nu=0.5, radius=1.5)  # R^2 = 2.25
    got = fn({"embedding": _embeddings_at_squared_distances(d2)}).item()
    expected = 2.25 + (1 / 0.5) * np.mean(np.maximum(0.0, np.array(d2) - 2.25))  # = 2.25 + 2 * (1.75 + 6.75) / 4
    assert got == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(6.5)


def test_svdd_uses_center_from_outputs_and_patch_shaped_embeddings():
    c = torch.tensor([3.0, -2.0], dtype=torch.float64)
    d2 = [0.0, 1.0, 16.0, 4.0]
    fn = loss("deep_svdd_soft_boundary", nu=1.0, radius=1.0)
    z = _embeddings_at_squared_distances(d2, c).reshape(1, 2, 2, 2)  # (B, h, w, D)
    got = fn({"embedding": z, "center": c}).item()
    assert got == pytest.approx(1.0 + np.mean(np.maximum(0.0, np.array(d2) - 1.0)), rel=1e-6)
    # without a centre it is measured from 0, which is far from these vectors
    assert fn({"embedding": z}).item() > got + 5
    with pytest.raises(MoleflowError, match="center"):
        fn({"embedding": z, "center": torch.zeros(3)})


def test_svdd_radius_is_a_parameter_with_the_analytic_gradient():
    d2 = [0.25, 1.0, 4.0, 9.0]
    fn = loss("deep_svdd_soft_boundary", nu=0.25, radius=1.5)
    assert [p is fn.radius for p in fn.parameters()] == [True]
    z = _embeddings_at_squared_distances(d2).requires_grad_(True)
    fn({"embedding": z}).backward()
    outside = np.mean(np.array(d2) > 2.25)  # 2 of 4, more than nu: R must grow
    assert fn.radius.grad.item() == pytest.approx(2 * 1.5 * (1 - outside / 0.25), abs=1e-6)
    assert fn.radius.grad.item() < 0
    assert z.grad[2:].abs().sum() > 0 and z.grad[:2].abs().sum() == 0  # only vectors outside the sphere pull


def test_svdd_radius_is_learned_by_an_optimizer():
    torch.manual_seed(0)
    z = torch.randn(400, 3, dtype=torch.float64)
    fn = loss("deep_svdd_soft_boundary", nu=0.1, radius=0.5)
    opt = torch.optim.SGD(fn.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        fn({"embedding": z}).backward()
        opt.step()
    frac_outside = (z.pow(2).sum(1) > fn.radius.detach() ** 2).double().mean().item()
    assert abs(frac_outside - 0.1) < 0.03


def test_svdd_update_radius_is_the_minimiser_over_r():
    torch.manual_seed(1)
    for n, nu in ((3, 0.1), (7, 0.3), (10, 0.5), (5, 1.0)):
        out = {"embedding": torch.randn(n, 4, dtype=torch.float64)}
        fn = loss("deep_svdd_soft_boundary", nu=nu)
        r = fn.update_radius(out)
        best = fn(out).item()
        d = out["embedding"].pow(2).sum(1).sqrt().numpy()
        for trial in np.concatenate([np.linspace(0, d.max() * 1.2, 200), d]):
            r2 = trial ** 2
            value = r2 + np.mean(np.maximum(0, d ** 2 - r2)) / nu
            assert best <= value + 1e-5, (n, nu, r, trial)


def test_svdd_line_search_sets_the_radius_from_each_training_batch():
    torch.manual_seed(2)
    fn = loss("deep_svdd_soft_boundary", nu=0.2, radius_update="line_search")
    assert list(p for p in fn.parameters() if p.requires_grad) == []  # kept out of the optimiser
    for scale in (1.0, 3.0):
        out = {"embedding": scale * torch.randn(50, 4, dtype=torch.float64)}
        value = fn(out)
        reference = loss("deep_svdd_soft_boundary", nu=0.2)
        expected_r = reference.update_radius(out)
        assert fn.radius.item() == pytest.approx(expected_r) and value.item() == pytest.approx(reference(out).item())
    with torch.no_grad():  # evaluation: the radius is left alone
        fn({"embedding": torch.zeros(5, 4, dtype=torch.float64)})
    assert fn.radius.item() == pytest.approx(expected_r)
    with pytest.raises(MoleflowError, match="radius_update='often'; choose one of gradient, line_search"):
        loss("deep_svdd_soft_boundary", radius_update="often")


def test_svdd_rejects_bad_nu():
    for nu in (0.0, -0.1, 1.5):
        with pytest.raises(MoleflowError, match="nu"):
            loss("deep_svdd_soft_boundary", nu=nu)


# --- orthogonality ---------------------------------------------------------------------------------

def test_orthogonality_zero_for_orthogonal_and_exact_for_hand_matrix():
    q = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    assert loss("orthogonality")({"weight": q}).item() == pytest.approx(0.0, abs=1e-20)
    assert loss("orthogonality")({"weight": q[:3]}).item() == pytest.approx(0.0, abs=1e-20)  # orthonormal rows
    w = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    # W W^T = [[5, 2], [2, 1]] -> minus I = [[4, 2], [2, 0]] -> 16 + 4 + 4 + 0
    assert loss("orthogonality")({"weight": w}).item() == pytest.approx(24.0)
    # a list sums; a conv kernel (out, in, k, k) is flattened per output unit
    assert loss("orthogonality")({"weight": [w, q, 2 * w]}).item() == pytest.approx(
        24.0 + np.sum((4 * w.numpy() @ w.numpy().T - np.eye(2)) ** 2))
    conv = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    flat = conv.reshape(3, -1).numpy()
    assert loss("orthogonality")({"weight": conv}).item() == pytest.approx(np.sum((flat @ flat.T - np.eye(3)) ** 2))


def test_orthogonality_gradient_and_errors():
    w = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    loss("orthogonality")({"weight": w}).backward()
    expected = 4 * (w.detach() @ w.detach().T - torch.eye(2)) @ w.detach()  # d||WW^T-I||^2/dW
    torch.testing.assert_close(w.grad, expected)
    with pytest.raises(MoleflowError, match="empty"):
        loss("orthogonality")({"weight": []})
    with pytest.raises(MoleflowError, match=">= 2 dims"):
        loss("orthogonality")({"weight": torch.ones(3)})


# --- soft IoU --------------------------------------------------------------------------------------

SCORES = torch.tensor([[[2.0, -1.0], [0.5, 0.2]], [[-2.0, 0.0], [3.0, 1.5]]], dtype=torch.float64)
MASKS = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)


def _normalized_numpy(s: np.ndarray, method: str) -> np.ndarray:
    if method == "sigmoid":
        return 1 / (1 + np.exp(-s))
    if method == "clamp":
        return np.clip(s, 0, 1)
    lo = s.min(axis=(1, 2), keepdims=True)
    hi = s.max(axis=(1, 2), keepdims=True)
    return (s - lo) / (hi - lo)


@pytest.mark.parametrize("method", ["sigmoid", "clamp", "minmax"])
def test_iou_matches_numpy(method):
    got = loss("iou", normalize_method=method)({"anomaly_map": SCORES}, {"masks": MASKS[:, None]}).item()
    p, t = _normalized_numpy(SCORES.numpy(), method), MASKS.numpy()
    assert got == pytest.approx(1 - (p * t).sum() / (p + t - p * t).sum(), rel=1e-12)


def test_iou_binary_cases_and_gradient():
    fn = loss("iou", normalize_method="clamp")
    assert fn({"anomaly_map": MASKS}, {"masks": MASKS}).item() == 0.0  # perfect prediction
    assert fn({"anomaly_map": 1 - MASKS}, {"masks": MASKS}).item() == 1.0  # disjoint
    zeros = torch.zeros_like(MASKS)
    assert fn({"anomaly_map": zeros}, {"masks": zeros}).item() == 0.0  # both empty: agree
    # minmax: a constant image maps to 0 instead of NaN
    const = torch.full_like(SCORES, 7.0)
    assert loss("iou", normalize_method="minmax")({"anomaly_map": const}, {"masks": MASKS}).item() == 1.0
    scores = SCORES.clone().requires_grad_(True)
    loss("iou")({"anomaly_map": scores, "masks": MASKS}).backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad[MASKS.bool()] < 0).all() and (scores.grad[~MASKS.bool()] > 0).all()


def test_iou_errors():
    with pytest.raises(MoleflowError, match="normalize_method"):
        loss("iou", normalize_method="softmax")
    with pytest.raises(MoleflowError, match="'iou'.*'masks'"):
        loss("iou")({"anomaly_map": SCORES})
    with pytest.raises(MoleflowError, match="does not match"):
        loss("iou")({"anomaly_map": SCORES}, {"masks": MASKS[:, :1]})


# --- distinctness ----------------------------------------------------------------------------------

def test_distinctness_orthogonal_identical_and_hand_case():
    fn = loss("distinctness")
    assert fn({"prototypes": 3 * torch.eye(4)}).item() == pytest.approx(0.0)
    same = torch.tensor([[1.0, 2.0, 2.0]]).repeat(3, 1) * torch.tensor([[1.0], [2.0], [0.5]])
    assert fn({"prototypes": same}).item() == pytest.approx(1.0, rel=1e-6)
    protos = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    unit = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    cos = unit @ unit.T
    expected = (cos.sum() - np.trace(cos)) / 6  # pairs: sqrt(.5), -1, -sqrt(.5), each twice
    assert fn({"prototypes": torch.tensor(protos)}).item() == pytest.approx(expected)
    assert expected == pytest.approx(-1 / 3)


def test_distinctness_gradient_single_prototype_and_shape():
    protos = torch.tensor([[1.0, 0.2], [0.9, 0.3]], requires_grad=True)
    loss("distinctness")({"prototypes": protos}).backward()
    assert protos.grad.abs().sum() > 0
    one = torch.ones(1, 3, requires_grad=True)
    value = loss("distinctness")({"prototypes": one})
    value.backward()
    assert value.item() == 0.0 and torch.equal(one.grad, torch.zeros(1, 3))
    with pytest.raises(MoleflowError, match=r"\(K, D\)"):
        loss("distinctness")({"prototypes": torch.ones(2, 3, 4)})


# --- selector losses -------------------------------------------------------------------------------

PROBS = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)


def _entropy_numpy(p: np.ndarray) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), axis=1)


def test_selector_entropy_hand_cases():
    h = _entropy_numpy(PROBS.numpy())
    assert h[0] == pytest.approx(math.log(2)) and h[1] == 0.0
    default = loss("selector_entropy")({"selector_probs": PROBS}).item()
    assert default == pytest.approx(np.mean((h - math.log(3)) ** 2), rel=1e-9)
    zero = loss("selector_entropy", target_entropy=0.0)({"selector_probs": PROBS}).item()
    assert zero == pytest.approx(np.mean(h ** 2), rel=1e-9)
    uniform = torch.full((4, 5), 0.2)
    assert loss("selector_entropy")({"selector_probs": uniform}).item() == pytest.approx(0.0, abs=1e-10)


def test_selector_entropy_gradient_finite_at_zero_probability_and_errors():
    logits = torch.tensor([[30.0, 0.0, -30.0], [1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    loss("selector_entropy")({"selector_probs": torch.softmax(logits, 1)}).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(MoleflowError, match="unreachable"):
        loss("selector_entropy", target_entropy=2.0)({"selector_probs": PROBS})  # ln 3 < 2
    with pytest.raises(MoleflowError, match="softmax"):
        loss("selector_entropy")({"selector_probs": logits.detach()})
    with pytest.raises(MoleflowError, match="target_entropy"):
        loss("selector_entropy", target_entropy=-1.0)


def test_selector_diversity_hand_cases():
    fn = loss("selector_diversity")
    expected = -np.mean(np.var(PROBS.numpy(), axis=0))  # population variance per expert
    assert fn({"selector_probs": PROBS}).item() == pytest.approx(expected, rel=1e-12)
    collapsed = torch.tensor([[0.0, 1.0, 0.0]]).repeat(6, 1)
    assert fn({"selector_probs": collapsed}).item() == 0.0
    split = torch.eye(3).repeat(2, 1)  # every expert chosen by 2 of 6 samples
    assert fn({"selector_probs": split}).item() == pytest.approx(-(1 / 3) * (1 - 1 / 3))
    assert fn({"selector_probs": split}).item() < fn({"selector_probs": PROBS}).item() < 0


def test_selector_diversity_gradient_pushes_samples_apart():
    logits = torch.tensor([[0.2, 0.0], [0.0, 0.2]], requires_grad=True)
    loss("selector_diversity")({"selector_probs": torch.softmax(logits, 1)}).backward()
    # descending the loss raises each sample's already-preferred expert
    assert logits.grad[0, 0] < 0 and logits.grad[1, 1] < 0


# --- registry and CompositeLoss ------------------------------------------------------------------

@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_registered_and_declares_reads(name):
    assert name in registry.names("losses")
    fn = registry.create("losses", name)
    assert callable(fn) and fn.reads and all(isinstance(k, str) for k in fn.reads)


def test_composite_bce_on_flow_outputs_names_the_loss_and_missing_key():
    torch.manual_seed(0)
    model = MoLEFlow(8, (2, 2), num_coupling_layers=2, adapter="none", task0_lora=False)
    model.begin_task(0)
    outputs = model(torch.randn(2, 2, 2, 8), 0)
    with pytest.raises(MoleflowError, match=r"loss 'bce' needs model output 'logits'"):
        CompositeLoss(["nll=1", "bce=1"], model_name="moleflow")(outputs)


def test_composite_combines_catalogue_losses_where_inputs_exist():
    outputs = {"logits": LOGITS, "targets": TARGETS, "selector_probs": PROBS, "prototypes": torch.eye(3)}
    total, parts = CompositeLoss(["bce=2", "selector_entropy=0.5", "distinctness=1"],
                                 options={"bce": {"pos_weight": 3.0}})(outputs)
    bce = F.binary_cross_entropy_with_logits(LOGITS, TARGETS, pos_weight=torch.tensor(3.0, dtype=torch.float64))
    assert parts["bce"] == pytest.approx(bce.item())
    assert total.item() == pytest.approx(2 * parts["bce"] + 0.5 * parts["selector_entropy"] + parts["distinctness"])


# --- detection metrics ---------------------------------------------------------------------------

def test_detection_from_decisions_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    d = rng.integers(0, 2, 50)
    with pytest.warns(MetricUndefinedWarning, match="needs scores"):
        got = detection_from_decisions(y, d)
    assert got["precision"] == pytest.approx(precision_score(y, d))
    assert got["recall"] == pytest.approx(recall_score(y, d))
    assert got["f1"] == pytest.approx(f1_score(y, d))
    assert got["iou"] == pytest.approx(jaccard_score(y, d))
    assert math.isnan(got["ap"])


def test_detection_from_logits_matches_sklearn_on_pixel_maps():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (3, 4, 4))
    logits = torch.tensor(rng.normal(size=(3, 4, 4)) + 1.5 * y)
    got = detection_from_logits(y, logits)
    d = (logits.numpy() >= 0).ravel()
    assert got["precision"] == pytest.approx(precision_score(y.ravel(), d))
    assert got["recall"] == pytest.approx(recall_score(y.ravel(), d))
    assert got["f1"] == pytest.approx(f1_score(y.ravel(), d))
    assert got["iou"] == pytest.approx(jaccard_score(y.ravel(), d))
    assert got["ap"] == pytest.approx(average_precision_score(y.ravel(), logits.numpy().ravel()))
    # the threshold moves the decisions, not AP
    high = detection_from_logits(y, logits, threshold=1.0)
    assert high["recall"] == pytest.approx(recall_score(y.ravel(), (logits.numpy() >= 1.0).ravel()))
    assert high["ap"] == got["ap"]


def test_detection_infinite_logits_keep_their_rank():
    y = np.array([0, 1, 0, 1])
    logits = np.array([-np.inf, np.inf, 0.5, 2.0])
    assert detection_from_logits(y, logits)["ap"] == pytest.approx(average_precision_score(y, [0, 3, 1, 2]))


def test_detection_degenerate_inputs_give_nan_with_warning():
    with pytest.warns(MetricUndefinedWarning, match="precision.*nothing is predicted"):
        got = detection_from_logits([1, 0, 1], [-1.0, -2.0, -0.5])
    assert math.isnan(got["precision"]) and got["recall"] == 0.0 and got["f1"] == 0.0
    with pytest.warns(MetricUndefinedWarning) as record:
        got = detection_from_decisions([0, 0], [0, 0])
    assert all(math.isnan(got[k]) for k in ("precision", "recall", "f1", "iou", "ap"))
    assert len(record) == 5
    with pytest.warns(MetricUndefinedWarning) as record:
        got = detection_from_logits([0, 0, 0], [-1.0, 1.0, 2.0])
    assert [str(w.message).split(":")[0] for w in record] == ["detection_from_logits recall", "detection_from_logits ap"]
    assert got["precision"] == 0.0 and math.isnan(got["recall"]) and math.isnan(got["ap"])
    with pytest.warns(MetricUndefinedWarning, match="NaN"):
        got = detection_from_logits([0, 1], [0.1, float("nan")])
    assert all(math.isnan(v) for v in got.values())
    with pytest.warns(MetricUndefinedWarning, match="no samples"):
        assert math.isnan(detection_from_decisions([], [])["f1"])


def test_detection_malformed_inputs_raise():
    with pytest.raises(MoleflowError, match="binary"):
        detection_from_decisions([0, 1], [0.3, 1])
    with pytest.raises(MoleflowError, match="3 targets but 2 logits"):
        detection_from_logits([0, 1, 1], [0.3, 1.0])


def test_pixel_statistics_hand_counts_and_empty():
    masks = np.zeros((2, 1, 3, 4), dtype=np.uint8)
    masks[0, 0, 1, 1:3] = 1
    masks[1, 0, 2, 0] = 1  # 3 of 24 pixels
    got = pixel_statistics(torch.tensor(masks))
    assert got == {"total_pixels": 24, "anomalous_pixels": 3, "anomalous_percent": pytest.approx(12.5)}
    with pytest.warns(MetricUndefinedWarning, match="no pixels"):
        empty = pixel_statistics(np.zeros((0, 4, 4)))
    assert empty["total_pixels"] == 0 and math.isnan(empty["anomalous_percent"])
    with pytest.raises(MoleflowError, match="binary"):
        pixel_statistics(np.full((2, 2), 0.5))


@pytest.mark.parametrize("name", ["detection_from_decisions", "detection_from_logits", "pixel_statistics"])
def test_metrics_are_registered(name):
    assert registry.get("metrics", name).__name__ == name
