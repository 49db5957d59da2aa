"""Frozen timm backbone -> patch features (B,h,w,D) and their mean (B,D) for the router, in one pass.

ViT-like models (they have `blocks` and a `patch_embed`): patch tokens of a few intermediate blocks,
averaged, prefix tokens (CLS/register/distill) dropped, through timm's `forward_intermediates`.
CNNs: PatchCore-style aggregation of `features_only` stage maps. Every reduction is parameter-free, so
the features depend only on the backbone weights and never need saving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.errors import MoleflowError
from moleflow.features.weights import WeightsSource, check_backbone_name, create_backbone, resolve_weights

FEATURE_RECIPE = "moleflow-timm-v1"  # bump when the feature computation changes, to invalidate disk caches


def default_vit_blocks(depth: int) -> list[int]:
    """0-based indices of the blocks ending at ~1/3 and ~2/3 of the depth (12 blocks -> [3, 7]):
    mid-level tokens, local enough for defects but past the purely low-level first blocks."""
    return sorted({max(0, round(depth * k / 3) - 1) for k in (1, 2)})


def reduce_channels(features: Tensor, dim: int | None) -> Tensor:
    """(..., C) -> (..., dim) by adaptive average pooling over the channel axis; no-op when dim >= C."""
    width = features.shape[-1]
    if dim is None or dim >= width:
        return features
    lead = features.shape[:-1]
    pooled = F.adaptive_avg_pool1d(features.reshape(-1, 1, width), dim)
    return pooled.reshape(*lead, dim)


def _is_vit_like(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed")


def backbone_is_vit(backbone_name: str) -> bool:
    """Whether a timm backbone gives ViT tokens (--vit_blocks) or CNN stages (--cnn_layers), decided as the
    extractor decides it, on the meta device: no weights, no memory, no download."""
    import timm

    check_backbone_name(backbone_name)
    with torch.device("meta"):
        probe = timm.create_model(backbone_name, pretrained=False, num_classes=0)
    return _is_vit_like(probe)


def _resolve_blocks(requested: Sequence[int] | None, depth: int, name: str) -> list[int]:
    if not requested:
        return default_vit_blocks(depth)
    out = set()
    for idx in requested:
        i = int(idx)
        if not -depth <= i < depth:
            raise MoleflowError(f"vit block {i} is out of range for '{name}' ({depth} blocks: 0..{depth - 1})")
        out.add(i % depth)
    return sorted(out)


def _resolve_stages(requested: Sequence[str | int], feature_info: list[dict[str, Any]], name: str) -> list[int]:
    modules = [str(info.get("module", "")) for info in feature_info]
    out = []
    for layer in requested:
        text = str(layer)
        if text.lstrip("-").isdigit():
            i = int(text)
            if not -len(modules) <= i < len(modules):
                raise MoleflowError(f"CNN stage {i} is out of range for '{name}' (stages 0..{len(modules) - 1}: "
                                    f"{', '.join(modules)})")
            out.append(i % len(modules))
        elif text in modules:
            out.append(modules.index(text))
        else:
            raise MoleflowError(f"'{name}' has no feature stage '{text}'; use one of {', '.join(modules)} "
                                "or their indices")
    if not out:
        raise MoleflowError(f"no CNN layers given for '{name}'; pass e.g. --cnn_layers layer2 layer3")
    return sorted(set(out))


class TimmExtractor(nn.Module):
    """Frozen feature extractor. Inputs are (B,3,H,W) floats in [0,1]; normalisation happens inside."""

    def __init__(
        self,
        backbone_name: str = "resnet18",
        img_size: tuple[int, int] = (224, 224),
        *,
        pretrained: bool = True,
        weights_path: str | None = None,
        vit_blocks: Sequence[int] | None = None,
        cnn_layers: Sequence[str] = ("layer2", "layer3"),
        embed_dim: int | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        import timm

        check_backbone_name(backbone_name)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        if min(self.img_size) < 1:
            raise MoleflowError(f"img_size must be positive, got {img_size}")
        if embed_dim is not None and embed_dim < 1:
            raise MoleflowError(f"embed_dim must be positive or None, got {embed_dim}")
        self.backbone_name = backbone_name
        self.embed_dim = embed_dim
        weights: WeightsSource = resolve_weights(backbone_name, pretrained=pretrained, weights_path=weights_path,
                                                 init_seed=init_seed)
        self.weights_identity = weights.identity
        self.weights_description = weights.description  # where the weights came from, for the run log

        with torch.device("meta"):  # architecture facts (ViT or CNN, depth, stage names) without allocating
            probe = timm.create_model(backbone_name, pretrained=False, num_classes=0)
        self.is_vit = _is_vit_like(probe)
        # patch-embedding models (ViT, Swin, ...) are built for one input size: build them for ours
        size_kwargs = {"img_size": self.img_size} if hasattr(probe, "patch_embed") else {}
        if self.is_vit:
            self.vit_blocks = _resolve_blocks(vit_blocks, len(probe.blocks), backbone_name)
            self.cnn_stages: list[int] = []
            self.backbone = self._create(backbone_name, weights, init_seed, size_kwargs)
            if not hasattr(self.backbone, "forward_intermediates"):
                raise MoleflowError(f"'{backbone_name}' has no forward_intermediates in this timm version; "
                                    "pick another ViT or a CNN backbone")
            # later blocks would be computed and thrown away
            self.backbone.prune_intermediate_layers(self.vit_blocks, prune_norm=True, prune_head=True)
            layers = "blocks=" + ",".join(map(str, self.vit_blocks))
        else:
            self.vit_blocks = []
            self.cnn_stages = _resolve_stages(cnn_layers, list(probe.feature_info), backbone_name)
            self.backbone = self._create(backbone_name, weights, init_seed, dict(
                size_kwargs, features_only=True, out_indices=tuple(self.cnn_stages)))
            names = [str(probe.feature_info[i].get("module", i)) for i in self.cnn_stages]
            layers = "layers=" + ",".join(names) + "|agg=avg3x3"
        del probe

        config = timm.data.resolve_model_data_config(self.backbone)
        for key in ("mean", "std"):  # not persistent: they come from timm's config, never from a state dict
            self.register_buffer(key, torch.tensor(config[key], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.backbone.requires_grad_(False)
        self.eval()

        patch, _ = self.forward(torch.zeros(1, 3, *self.img_size))
        self.grid: tuple[int, int] = (int(patch.shape[1]), int(patch.shape[2]))
        self.dim: int = int(patch.shape[3])
        self.identity: str = "|".join([
            FEATURE_RECIPE, backbone_name, self.weights_identity, f"img={self.img_size[0]}x{self.img_size[1]}",
            layers, f"embed_dim={embed_dim if embed_dim else 'keep'}", f"dim={self.dim}",
        ])

    def _create(self, name: str, weights: WeightsSource, init_seed: int, kwargs: dict[str, Any]) -> nn.Module:
        try:
            return create_backbone(name, weights, init_seed, **kwargs)
        except TypeError as exc:  # the architecture's constructor rejected img_size / features_only
            raise MoleflowError(f"timm '{name}' cannot be built with {kwargs} ({exc}); "
                                "use its native img_size or another backbone") from exc

    def train(self, mode: bool = True) -> TimmExtractor:
        """Always stays in eval: batch-norm statistics and dropout must not move in a frozen backbone."""
        return super().train(False)

    def _vit_features(self, x: Tensor) -> Tensor:
        maps = self.backbone.forward_intermediates(x, indices=self.vit_blocks, norm=False, output_fmt="NCHW",
                                                   intermediates_only=True)
        return torch.stack(maps, dim=0).mean(dim=0)  # (B,C,h,w), prefix tokens already dropped by timm

    def _cnn_features(self, x: Tensor) -> Tensor:
        maps = self.backbone(x)
        if str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC"):  # e.g. Swin stages
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        # PatchCore local aggregation: each location sees its 3x3 neighbourhood; borders average real pixels only
        maps = [F.avg_pool2d(m, kernel_size=3, stride=1, padding=1, count_include_pad=False) for m in maps]
        finest = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if m.shape[-2:] == finest else F.interpolate(m, size=tuple(finest), mode="bilinear",
                                                                  align_corners=False) for m in maps]
        return torch.cat(maps, dim=1)

    @torch.no_grad()  # not inference_mode: its tensors could not be fed to the (trainable) flow later
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != self.img_size:
            raise MoleflowError(f"extractor expects images of shape (B,3,{self.img_size[0]},{self.img_size[1]}), "
                                f"got {tuple(images.shape)}; resize the data to img_size")
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        fmap = self._vit_features(x) if self.is_vit else self._cnn_features(x)
        patch = reduce_channels(fmap.permute(0, 2, 3, 1).float(), self.embed_dim).contiguous()
        return patch, patch.mean(dim=(1, 2))

    def extra_repr(self) -> str:
        return self.identity if hasattr(self, "identity") else self.backbone_name
