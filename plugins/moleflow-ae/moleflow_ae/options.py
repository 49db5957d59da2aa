"""The options of the `ae` model: one frozen dataclass of `moleflow.options.option` fields.

Each field is a `moleflow train --model ae` flag of the same name (`--score both`, `--arch unet`,
`--no_synthetic`, ...), also `--model_opt score=both` and a config file's `{"model": {"name": "ae", "options":
{...}}}`; types, ranges and choices are checked by moleflow before any image is read, and `rules` refuse an
option that would change nothing. The training-loop options are the AE's own fields (it trains with plain Adam:
it has no --weight_decay), `--loss` / `--loss_opt` come from `LossOptions` with `mse=1` as the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from moleflow.errors import MoleflowError
from moleflow.losses.compose import LossOptions
from moleflow.options import Rule, option

ARCHS = ("ae", "unet")
SCORES = ("recon", "latent", "both")
#: the model outputs a --loss term may read (every registered AE loss reads both)
OUTPUTS = ("reconstruction", "target")


@dataclass(frozen=True)
class AEOptions(LossOptions):
    loss: list = option(["mse=1"], "loss terms NAME=WEIGHT (registered in moleflow.losses) over the AE's outputs "
                        "(reconstruction, target), e.g. mse=1 ssim=0.5; repeatable; replaces the default",
                        nargs="+", action="extend")
    # the shared loop's options the AE reads (same defaults as moleflow.training.LoopOptions; no weight decay)
    num_epochs: int = option(40, "training epochs per task", minimum=1)
    batch_size: int = option(16, "images per optimisation step", minimum=1)
    lr: float = option(2e-4, "Adam learning rate (constant: no schedule, no weight decay)", above=0)
    grad_clip: float = option(1.0, "gradient-norm clip (0 = off)", minimum=0)
    # the network
    arch: str = option("ae", "ae = bottleneck, no skips; unet = the same layers plus skips, width matched to the "
                       "AE's parameter count", choices=list(ARCHS))
    channels: int = option(3, "1 = grey (the RGB input averaged over channels), 3 = RGB", choices=[1, 3])
    width: int = option(16, "channels of the full-resolution level; doubles per level up to 8x", minimum=1)
    depth: int = option(4, "stride-2 levels: the bottleneck grid is the (padded) image size / 2**depth", minimum=1)
    latent: int = option(32, "bottleneck channels (1x1 squeeze; the U-Net's is matched to the AE's size)", minimum=1)
    # what it trains on
    synthetic: bool = option(True, "train on synthetic defects (masking, noise): input corrupted, target clean; "
                             "--no_synthetic = a plain autoencoder")
    anomaly_prob: float = option(0.5, "share of training images that get a synthetic defect (the others teach "
                                 "plain reconstruction)", minimum=0, maximum=1)
    foreground: bool = option(True, "keep synthetic defects on the object (Otsu foreground estimate)")
    rotate: float = option(0.0, "augmentation: rotation drawn from +-ROTATE degrees (0 = off; conservative: 5)",
                           minimum=0, maximum=180)
    scale: float = option(0.0, "augmentation: zoom drawn from [1-SCALE, 1+SCALE] (0 = off; conservative: 0.05)",
                          minimum=0, below=1)
    # how it scores
    score: str = option("recon", "anomaly map: recon = reconstruction error, latent = encoder-feature distance, "
                        "both = their sum, each divided by its training-set mean", choices=list(SCORES))

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("anomaly_prob",), lambda o, c: o.synthetic,
             "--synthetic is on (with --no_synthetic no image gets a defect)"),
        Rule(("synthetic",), lambda o, c: o.anomaly_prob > 0,
             "--anomaly_prob > 0 (with --anomaly_prob 0 no image gets a defect either way)"),
        Rule(("foreground",), lambda o, c: o.synthetic and o.anomaly_prob > 0,
             "--synthetic is on and --anomaly_prob > 0 (it places the synthetic defects)"),
    )

    def validate(self, context: Any) -> None:
        """Unknown loss names and options (LossOptions), then a term reading an output the AE has not: both
        before any image is read, not at the first training step."""
        # building the loss is LossOptions.validate's check (unknown names and options), made once here
        unfed = self.make_loss("ae").first_unfed(OUTPUTS)
        if unfed is not None:
            name, key = unfed
            raise MoleflowError(f"--loss {name}: loss '{name}' needs model output '{key}', "
                                f"which model 'ae' does not produce (it produces: {', '.join(OUTPUTS)})")
