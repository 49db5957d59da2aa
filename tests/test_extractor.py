"""Frozen timm extractor (ViT tokens / CNN stages), weight sources, and the per-image feature cache."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from moleflow import registry
from moleflow.errors import MoleflowError
from moleflow.features.cache import FeatureSet, extract_features
from moleflow.features.extractor import TimmExtractor, default_vit_blocks, reduce_channels

VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def resnet() -> TimmExtractor:
    return TimmExtractor("resnet18", (64, 64), pretrained=False)


@pytest.fixture(scope="module")
def vit() -> TimmExtractor:
    return TimmExtractor(VIT, (64, 64), pretrained=False)


def images(n: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------- shapes & semantics
def test_registered_as_the_timm_extractor():
    assert registry.get("extractors", "timm") is TimmExtractor


def test_cnn_patch_grid_dim_and_pooled(resnet):
    patch, pooled = resnet(images(2))
    assert resnet.grid == (8, 8) and resnet.dim == 128 + 256  # layer2 (stride 8) grid, layer2+layer3 widths
    assert patch.shape == (2, 8, 8, 384) and patch.dtype == torch.float32
    torch.testing.assert_close(pooled, patch.mean(dim=(1, 2)))
    assert not torch.allclose(patch[0], patch[1])  # depends on the image


def test_vit_drops_prefix_tokens_and_averages_chosen_blocks(vit):
    x = images(2)
    patch, pooled = vit(x)
    assert vit.vit_blocks == [3, 7] == default_vit_blocks(12)
    assert vit.grid == (4, 4) and vit.dim == 192 and patch.shape == (2, 4, 4, 192)
    torch.testing.assert_close(pooled, patch.mean(dim=(1, 2)))

    # reference computed by hand from the blocks: 1 CLS + 16 patch tokens, CLS removed
    m = vit.backbone
    with torch.no_grad():
        tokens = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed((x - vit.mean) / vit.std))))
        kept = []
        for i, block in enumerate(m.blocks):
            tokens = block(tokens)
            if i in (3, 7):
                assert tokens.shape[1] == m.num_prefix_tokens + 16
                kept.append(tokens[:, m.num_prefix_tokens:])
    expected = torch.stack(kept).mean(0).reshape(2, 4, 4, 192)
    torch.testing.assert_close(patch, expected)


def test_vit_block_choice_changes_features(vit):
    other = TimmExtractor(VIT, (64, 64), pretrained=False, vit_blocks=[1])
    x = images(1)
    assert not torch.allclose(vit(x)[0], other(x)[0])
    assert vit.identity != other.identity
    # the weights are the same (same seed): only the block choice differs
    torch.testing.assert_close(vit.backbone.blocks[1].mlp.fc1.weight, other.backbone.blocks[1].mlp.fc1.weight)


@pytest.mark.parametrize("name,grid", [("resnet18", (8, 16)), (VIT, (4, 8))])
def test_non_square_images(name, grid):
    ext = TimmExtractor(name, (64, 128), pretrained=False)
    patch, _ = ext(images(1, (64, 128)))
    assert ext.grid == grid and patch.shape[1:3] == grid


def test_embed_dim_is_parameter_free_channel_pooling(resnet):
    reduced = TimmExtractor("resnet18", (64, 64), pretrained=False, embed_dim=100)
    x = images(2)
    full, _ = resnet(x)
    patch, pooled = reduced(x)
    assert reduced.dim == 100 and patch.shape == (2, 8, 8, 100)
    torch.testing.assert_close(patch, reduce_channels(full, 100))
    torch.testing.assert_close(pooled, patch.mean(dim=(1, 2)))
    assert sum(p.numel() for p in reduced.parameters()) == sum(p.numel() for p in resnet.parameters())
    # wider than the backbone: kept as is
    assert TimmExtractor(VIT, (32, 32), pretrained=False, embed_dim=1000).dim == 192


def test_frozen_eval_and_no_grad(resnet):
    resnet.train()
    assert not resnet.training and not resnet.backbone.training
    assert all(not p.requires_grad for p in resnet.parameters())
    x = images(1).requires_grad_(True)
    patch, pooled = resnet(x)
    assert not patch.requires_grad and not pooled.requires_grad
    # outputs are ordinary tensors (not inference-mode ones): a trainable layer can consume them
    layer = torch.nn.Linear(resnet.dim, 2)
    layer(patch).sum().backward()
    assert layer.weight.grad is not None


def test_input_is_normalised_inside(resnet, vit):
    assert resnet.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert vit.std.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])
    with pytest.raises(MoleflowError, match="64,64"):
        resnet(images(1, (32, 32)))


def test_random_init_is_deterministic_and_leaves_caller_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = TimmExtractor("resnet18", (32, 32), pretrained=False, init_seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    b = TimmExtractor("resnet18", (32, 32), pretrained=False, init_seed=7)
    c = TimmExtractor("resnet18", (32, 32), pretrained=False, init_seed=8)
    sa, sb, sc = a.backbone.state_dict(), b.backbone.state_dict(), c.backbone.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.identity == b.identity != c.identity and "random:7" in a.identity


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(MoleflowError, match="resnet18"):
        TimmExtractor("resnt18", (32, 32), pretrained=False)
    with pytest.raises(MoleflowError, match="layer2"):
        TimmExtractor("resnet18", (32, 32), pretrained=False, cnn_layers=("layer9",))
    with pytest.raises(MoleflowError, match="out of range"):
        TimmExtractor(VIT, (32, 32), pretrained=False, vit_blocks=[12])


# --------------------------------------------------------------------------------- weight sources
def test_offline_without_cached_weights_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    start = time.perf_counter()
    with pytest.raises(MoleflowError) as err:
        TimmExtractor("resnet18", (32, 32), pretrained=True)
    assert time.perf_counter() - start < 10
    assert "--no_pretrained" in str(err.value) and "--backbone_weights" in str(err.value)


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the connect is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    start = time.perf_counter()
    with pytest.raises(MoleflowError, match="unreachable"):
        TimmExtractor("resnet18", (32, 32), pretrained=True)
    assert time.perf_counter() - start < 10


def test_pretrained_weights_come_from_the_local_hf_cache_offline(monkeypatch, tmp_path):
    reference = timm.create_model("resnet18")  # what timm's hub file holds: full model incl. classifier
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    ext = TimmExtractor("resnet18", (32, 32), pretrained=True)
    assert "hf:timm/resnet18.a1_in1k" in ext.identity
    torch.testing.assert_close(ext.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path, suffix):
    donor = timm.create_model("resnet18").state_dict()  # random full state dict (with the fc head)
    file = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        save_file(donor, str(file))
    else:
        torch.save({"state_dict": donor}, file)  # a training-checkpoint wrapper is unwrapped

    loaded = TimmExtractor("resnet18", (64, 64), pretrained=True, weights_path=str(file))
    reference = TimmExtractor("resnet18", (64, 64), pretrained=False)
    reference.backbone.load_state_dict({k: donor[k] for k in reference.backbone.state_dict()})
    x = images(2)
    assert torch.equal(loaded(x)[0], reference(x)[0])
    assert "sha256:" in loaded.identity and "random" not in loaded.identity


def test_vit_weights_file_at_another_image_size(tmp_path):
    donor = timm.create_model(VIT)  # 224x224 position embeddings
    file = tmp_path / "vit.safetensors"
    save_file(donor.state_dict(), str(file))
    ext = TimmExtractor(VIT, (64, 128), weights_path=str(file))
    assert ext.grid == (4, 8)
    torch.testing.assert_close(ext.backbone.blocks[2].attn.qkv.weight, donor.blocks[2].attn.qkv.weight)


def test_weights_file_errors(tmp_path):
    with pytest.raises(MoleflowError, match="not found"):
        TimmExtractor("resnet18", (32, 32), weights_path=str(tmp_path / "missing.safetensors"))

    state = timm.create_model("resnet18").state_dict()
    state["layer9.extra"] = state.pop("layer1.0.conv1.weight")
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(MoleflowError) as err:
        TimmExtractor("resnet18", (32, 32), weights_path=str(bad))
    assert "layer1.0.conv1.weight" in str(err.value) and "layer9.extra" in str(err.value)

    pickled = tmp_path / "whole_model.pth"
    torch.save(timm.create_model("resnet18"), pickled)  # a pickled module, not a state dict: never unpickled
    with pytest.raises(MoleflowError, match="state_dict"):
        TimmExtractor("resnet18", (32, 32), weights_path=str(pickled))


# --------------------------------------------------------------------------------- extraction + cache
class TinyImages(Dataset):
    """Stand-in for AnomalyDataset: real files on disk (the cache keys on them), generated pixels."""

    def __init__(self, root: Path, n: int = 5, size: tuple[int, int] = (64, 64)) -> None:
        self.paths = []
        for i in range(n):
            path = root / f"img_{i}.png"
            path.write_bytes(b"x" * (i + 1))
            self.paths.append(str(path))
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        image = torch.rand(3, *self.size, generator=torch.Generator().manual_seed(i))
        mask = torch.zeros(1, *self.size)
        if i % 2:
            mask[:, :8, :8] = 1.0
        return {"image": image, "mask": mask, "label": i % 2, "path": self.paths[i], "index": i}


def count_backbone_images(extractor: TimmExtractor, monkeypatch) -> list[int]:
    seen: list[int] = []
    original = extractor.backbone.forward

    def counting(x):
        seen.append(x.shape[0])
        return original(x)

    monkeypatch.setattr(extractor.backbone, "forward", counting)
    return seen


def test_extract_features_matches_direct_calls(resnet, tmp_path, monkeypatch):
    data = TinyImages(tmp_path, n=5)
    seen = count_backbone_images(resnet, monkeypatch)
    fs = extract_features(resnet, data, images_per_pass=2, progress=False)
    assert sum(seen) == 5  # each image once
    assert fs.patch.shape == (5, 8, 8, 384) and fs.pooled.shape == (5, 384)
    assert fs.labels.dtype == torch.long and fs.labels.tolist() == [0, 1, 0, 1, 0]
    assert fs.masks.dtype == torch.uint8 and fs.masks.shape == (5, 1, 64, 64)
    assert fs.masks[1].sum() == 64 and fs.masks[0].sum() == 0
    assert fs.paths == data.paths
    direct, direct_pooled = resnet(torch.stack([data[i]["image"] for i in range(5)]))
    torch.testing.assert_close(fs.patch, direct)
    torch.testing.assert_close(fs.pooled, direct_pooled)

    part = fs.subset([3, 1])
    assert part.paths == [data.paths[3], data.paths[1]] and torch.equal(part.patch, fs.patch[[3, 1]])
    assert len(fs.subset(fs.labels == 1)) == 2 and len(fs.subset(slice(0, 2))) == 2


def test_disk_cache_skips_backbone_and_invalidates_changed_files(resnet, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    data = TinyImages(tmp_path / "data", n=5)
    cache = tmp_path / "cache"
    seen = count_backbone_images(resnet, monkeypatch)
    first = extract_features(resnet, data, images_per_pass=2, cache_dir=str(cache), progress=False)
    assert sum(seen) == 5
    assert len(list(cache.rglob("*.safetensors"))) == 5 and not list(cache.rglob(".tmp-*"))

    seen.clear()
    second = extract_features(resnet, data, images_per_pass=2, cache_dir=str(cache), progress=False)
    assert seen == []  # all hits: the backbone never ran
    for name in ("patch", "pooled", "labels", "masks"):
        assert torch.equal(getattr(first, name), getattr(second, name))

    stat = os.stat(data.paths[2])
    os.utime(data.paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "edited" file
    seen.clear()
    third = extract_features(resnet, data, images_per_pass=2, cache_dir=str(cache), progress=False)
    assert seen == [1]  # only the changed image is recomputed
    assert torch.equal(third.patch, first.patch)

    other = TimmExtractor("resnet18", (64, 64), pretrained=False, init_seed=1)  # other weights: other keys
    fresh = extract_features(other, data, images_per_pass=5, cache_dir=str(cache), progress=False)
    assert not torch.allclose(fresh.patch, first.patch)


def test_extract_features_of_empty_dataset(resnet, tmp_path):
    fs = extract_features(resnet, TinyImages(tmp_path, n=0), progress=False)
    assert isinstance(fs, FeatureSet) and len(fs) == 0 and fs.patch.shape == (0, 8, 8, 384)


def test_weights_file_loader_unwraps_checkpoints_and_never_unpickles(tmp_path):
    """load_state_dict_file (timm's loader, weights_only): EMA weights of a training checkpoint win, the
    'module.' prefix of DataParallel goes, safetensors load as they are, and a pickled object is refused."""
    import pickle

    from safetensors.torch import save_file

    from moleflow.errors import MoleflowError
    from moleflow.features.weights import load_state_dict_file

    ema, raw = {"module.w": torch.ones(2)}, {"module.w": torch.zeros(2)}
    torch.save({"state_dict": raw, "state_dict_ema": ema, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = load_state_dict_file(tmp_path / "ckpt.pth")
    assert list(loaded) == ["w"] and torch.equal(loaded["w"], torch.ones(2))
    save_file({"w": torch.full((2,), 5.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_state_dict_file(tmp_path / "w.safetensors")["w"], torch.full((2,), 5.0))

    class Payload:  # unpickling this would run code a checkpoint author chose
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(MoleflowError, match="cannot read backbone weights .*evil.pth"):
        load_state_dict_file(tmp_path / "evil.pth")
