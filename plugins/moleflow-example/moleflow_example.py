"""A minimal moleflow plugin, used by the test suite and by README's "write your own plugin" section.

It adds a loss component (`latent_l1`) and a version preset (`v3-small`). moleflow finds both through
the entry points declared in this package's setup.cfg once it is installed (`pip install -e
plugins/moleflow-example`); nothing in moleflow imports this file by path.
"""

from __future__ import annotations

import torch

from moleflow.versions import VersionPreset


class LatentL1Loss:
    """Mean absolute latent value per dimension: a sparsity-style pull of z towards 0.

    `reads` names the model outputs it needs; moleflow reports a clear error if a model lacks one.
    """

    reads = ("z",)

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        return outputs["z"].abs().mean()


V3_SMALL = VersionPreset(
    name="v3-small",
    parent="v3",
    description="v3 with rank-4 experts and a 4-block flow (a cheaper variant, defined by a plugin)",
    overrides={"lora_rank": 4, "num_coupling_layers": 4},
    introduces=(),
)
