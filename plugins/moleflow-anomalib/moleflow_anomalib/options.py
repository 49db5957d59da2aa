"""The options of the anomalib models: one frozen dataclass of `moleflow.options.option` fields each.

Each field is a `moleflow train --model anomalib_NAME` flag of the same name (also `--model_opt KEY=VALUE` and
a config file's model options), checked by moleflow before any image is read; an unknown one is refused with
the list of the model's options. Defaults are anomalib's own where it has one for any backbone (PatchCore's
coreset ratio 0.1 and 9 neighbours, FastFlow's 8 flow steps and Adam at 1e-3 / 1e-5, DFM's pooling 4 and
0.97 explained variance) and sized for CPU runs where anomalib's depends on its GPU recipe (FastFlow's epochs,
PaDiM's channels for a backbone anomalib has no default for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moleflow.errors import MoleflowError
from moleflow.options import option

LAYERS_HELP = ("backbone stages whose features it reads, as timm feature indices (efficientnet_lite0: 2 = "
               "blocks.2, stride 8; 3 = blocks.4, stride 16); empty = the run's --cnn_layers, the stages every "
               "other model of the run reads")


def _check_layers(layers: tuple, model: str) -> None:
    if any(int(layer) < 0 for layer in layers):
        raise MoleflowError(f"model '{model}': --layers takes timm feature indices >= 0, got {list(layers)}")


@dataclass(frozen=True)
class PatchcoreOptions:
    layers: tuple = option((), LAYERS_HELP, type=int)
    coreset_ratio: float = option(0.1, "share of the task's training patches kept by anomalib's greedy k-center "
                                       "coreset (its default 0.1)", above=0, maximum=1)
    num_neighbors: int = option(9, "memory neighbours of a patch's nearest one that reweight the image score "
                                   "(anomalib's default 9)", minimum=1)

    def validate(self, context: Any) -> None:
        _check_layers(self.layers, "anomalib_patchcore")


@dataclass(frozen=True)
class PadimOptions:
    layers: tuple = option((), LAYERS_HELP, type=int)
    n_features: int = option(100, "channels drawn at random (once per task, seeded) from the layers' channels for "
                                  "the per-position Gaussians (anomalib: 100 of resnet18's 448; here at most the "
                                  "layers' channel count)", minimum=1)

    def validate(self, context: Any) -> None:
        _check_layers(self.layers, "anomalib_padim")


@dataclass(frozen=True)
class FastflowOptions:
    num_epochs: int = option(20, "training epochs per task (anomalib trains up to 500 with early stopping on a GPU; "
                                 "20 keeps CPU runs short)", minimum=1)
    batch_size: int = option(16, "images per optimisation step", minimum=1)
    lr: float = option(1e-3, "Adam learning rate (anomalib's)", above=0)
    weight_decay: float = option(1e-5, "Adam weight decay (anomalib's)", minimum=0)
    flow_steps: int = option(8, "flow steps per feature level (anomalib's default 8)", minimum=1)
    hidden_ratio: float = option(1.0, "subnet width / input channels (anomalib's default 1.0)", above=0)
    conv3x3_only: bool = option(False, "subnets of 3x3 convolutions only (anomalib alternates 3x3 and 1x1)")


@dataclass(frozen=True)
class DfmOptions:
    layer: int = option(-1, "the one backbone stage (timm feature index) it models; -1 = the last of the run's "
                            "--cnn_layers")
    pooling_kernel_size: int = option(4, "average pooling of the feature map before the PCA (anomalib's default 4)",
                                      minimum=1)
    n_comps: float = option(0.97, "share of the variance the PCA keeps (anomalib's default 0.97)", above=0,
                            maximum=1)

    def validate(self, context: Any) -> None:
        if self.layer < -1:
            raise MoleflowError(f"model 'anomalib_dfm': --layer takes a timm feature index >= 0 or -1, got {self.layer}")
