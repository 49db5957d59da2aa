"""The frozen descriptor the teacher is distilled from: the global-average-pooled last stage of a timm CNN
(ResNet-18: 512-d) on each patch resized to `descriptor_size` pixels.

Its weights follow moleflow's backbone rules (moleflow.features.weights): a local file, timm's pretrained
weights (fail-fast offline), or a random init seeded with the run seed (`--no_pretrained`). The run's
`--backbone_weights` is reused when the run's backbone IS the descriptor backbone; otherwise
`--descriptor_weights FILE` names the file.

`--descriptor_backbone auto` (the default) is the seed's ResNet-18 wherever its weights are at hand (a file,
timm's cache, the hub, or `--no_pretrained`'s random init), otherwise efficientnet_lite0 with the offline
ImageNet weights moleflow registers (see moleflow.features.offline_weights): a pretrained descriptor on a
machine with no network instead of a hard failure. The run log names the one chosen.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.errors import MoleflowError
from moleflow.features.weights import WeightsSource, check_backbone_name, create_backbone, resolve_weights


AUTO = "auto"
#: what `auto` tries, in order: the seed's descriptor, then the backbone whose weights ship offline
AUTO_CANDIDATES = ("resnet18", "efficientnet_lite0")


def descriptor_weights(backbone: Any, seed: int, backbone_name: str, explicit_file: str) -> tuple[str, WeightsSource]:
    """Resolve (fail fast, before any image is read) the descriptor backbone and where its weights come from.
    `backbone`: the run's backbone settings (config.BackboneConfig: backbone_name, pretrained, backbone_weights);
    `seed`: the run's seed (a random init's)."""
    if backbone_name != AUTO:
        return backbone_name, _resolve(backbone, seed, backbone_name, explicit_file)
    failures = []
    for candidate in AUTO_CANDIDATES:
        try:
            return candidate, _resolve(backbone, seed, candidate, explicit_file)
        except MoleflowError as exc:
            failures.append(str(exc))
    raise MoleflowError(f"--descriptor_backbone auto found no weights for {' or '.join(AUTO_CANDIDATES)} "
                        f"({'; '.join(failures)})")


def _resolve(backbone: Any, seed: int, backbone_name: str, explicit_file: str) -> WeightsSource:
    check_backbone_name(backbone_name)
    weights_file = explicit_file or (backbone.backbone_weights if backbone.backbone_name == backbone_name else "")
    return resolve_weights(backbone_name, pretrained=backbone.pretrained, weights_path=weights_file or None,
                           init_seed=seed)


class PatchDescriptor(nn.Module):
    """Frozen, eval-mode: (B,3,p,p) patches in [0,1] -> (B,D) descriptors."""

    def __init__(self, backbone_name: str, source: WeightsSource, init_seed: int, size: int) -> None:
        super().__init__()
        import timm

        self.size = size
        try:
            self.net = create_backbone(backbone_name, source, init_seed, num_classes=0, global_pool="avg")
        except TypeError as exc:
            raise MoleflowError(f"descriptor backbone '{backbone_name}' cannot be built as a pooled classifier "
                                f"({exc}); use a timm CNN such as resnet18") from exc
        config = timm.data.resolve_model_data_config(self.net)
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)
        self.dim = int(self.net.num_features)
        self.net.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PatchDescriptor:
        return super().train(False)  # batch-norm statistics of a frozen network must not move

    @torch.no_grad()
    def forward(self, patches: Tensor) -> Tensor:
        x = F.interpolate(patches.float(), size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=patches.shape[-1] > self.size)
        return self.net((x - self.mean) / self.std).flatten(1)
