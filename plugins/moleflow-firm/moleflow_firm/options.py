"""The options of the `firm` model, declared once: each field is a `moleflow train --model firm` flag of the same
name (`--knn 5`, also `--model_opt knn=5`), a key of a config file's model options, and what `FIRMPatchModel` is
built from. Ranges and choices are checked by moleflow before any image is read; `rules` refuse an option that
would change nothing; `validate` makes the checks across fields.

The training loop's options are the ones the head's loop reads (`--num_epochs`, `--lr`, `--weight_decay`,
`--grad_clip`, with the help and defaults of moleflow.training.LoopOptions); not `--batch_size`: a step is
`--batch_patches` normal patches plus as many outlier patches.

The loss: `--loss` (default `firm=1.0`) over the head's outputs z1, z2, labels. Its `firm` term is configured by
this model's `--tau` and `--mode` (the outlier label is the model's, -1); further terms may be added if they read
only those outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from moleflow.data.training_defects import METHODS
from moleflow.errors import MoleflowError
from moleflow.losses.compose import LossOptions, parse_loss_terms, with_loss_options
from moleflow.options import Rule, option
from moleflow.training import LoopOptions

from moleflow_firm.loss import MODES

SCORES = ("knn", "mahalanobis")
#: what the head's training step hands the loss (train.batch_outputs)
OUTPUTS = ("z1", "z2", "labels")
#: FIRMLoss's label of an outlier: the model labels its synthetic-defect patches with it
OUTLIER_LABEL = -1


def _loop(name: str) -> Any:
    """A field of the shared loop's options (moleflow.training.LoopOptions), same default and help."""
    f = next(f for f in fields(LoopOptions) if f.name == name)
    return option(f.default, **f.metadata)


@dataclass(frozen=True)
class FIRMOptions(LossOptions):
    # the shared loop (moleflow.training.optimise): what the head's training reads of it
    num_epochs: int = _loop("num_epochs")
    lr: float = _loop("lr")
    weight_decay: float = _loop("weight_decay")
    grad_clip: float = _loop("grad_clip")
    loss: list = option(["firm=1.0"], "loss terms NAME=WEIGHT (registered in moleflow.losses) over the head's outputs "
                        "(z1, z2, labels); must include firm, whose temperature and anchors are --tau and --mode",
                        nargs="+", action="extend")
    loss_opt: list = option([], "options of a further --loss term, NAME.KEY=VALUE (repeatable; values read as JSON "
                            "when they parse); the firm term's are --tau and --mode",
                            nargs="+", action="extend", key_value=True)
    # the head and its objective
    proj_dim: int = option(64, "d_proj, width of the L2-normalised embedding", minimum=1)
    hidden: int = option(0, "hidden width of the head MLP (0 = the feature width D)", minimum=0)
    tau: float = option(0.1, "FIRM temperature", above=0)
    mode: str = option("concat", "FIRM anchors: concat (SupCon, all 2B rows) or pairwise (view 1 against view 2)",
                       choices=list(MODES))
    # scoring
    score: str = option("knn", "patch score: kNN distance or Mahalanobis distance to the task's memory",
                        choices=list(SCORES))
    knn: int = option(1, "k of the kNN score (mean distance to the k nearest memory embeddings)", minimum=1)
    memory: int = option(2000, "most normal patch embeddings kept per task (seeded subsample); the kNN memory "
                               "and the sample of the Mahalanobis statistics", minimum=1)
    # training patches
    batch_patches: int = option(128, "normal patches per step (as many outlier patches are drawn next to them)",
                                minimum=1)
    synth_per_image: int = option(2, "synthetic-defect copies of each training image (drawn once per task)", minimum=1)
    outlier_frac: float = option(0.25, "a patch of a defect copy is an outlier when this fraction of its cell is "
                                       "defect", above=0, maximum=1)
    anomalies: tuple = option(("masking", "noise", "cutpaste", "perlin"), "synthetic-defect methods "
                              "(moleflow.data.training_defects)", choices=list(METHODS))
    view_noise: float = option(0.1, "std of the Gaussian noise of a view, in units of the task's feature std",
                               minimum=0)
    view_dropout: float = option(0.1, "probability of zeroing a (standardised) feature channel in a view",
                                 minimum=0, below=1)

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("knn",), lambda o, c: o.score == "knn", "--score is knn (the Mahalanobis score has no neighbours)"),
    )

    def loss_terms(self) -> tuple[list[str], dict[str, dict]]:
        """--loss with its firm term configured by --tau/--mode; then each term's --loss_opt (never firm's)."""
        terms = list(self.loss)
        names = [name for name, _ in parse_loss_terms(terms)]
        if "firm" not in names:
            raise MoleflowError(f"--loss {' '.join(terms)}: model 'firm' trains on the FIRM loss; include firm=W "
                                f"(extra terms may read {', '.join(OUTPUTS)}) or leave --loss unset (firm=1.0)")
        own = [item for item in self.loss_opt if item.partition("=")[0].strip().startswith("firm.")]
        if own:
            key, _, value = own[0].partition("=")
            name = key.strip()[len("firm."):]
            spelled = f"--{name} {value}" if name in ("tau", "mode") else "--tau and --mode"
            raise MoleflowError(f"--loss_opt {own[0]}: the firm term is configured by the model's own options "
                                f"(--tau, --mode; its outlier label is the model's, {OUTLIER_LABEL}); use {spelled}")
        options = {"firm": {"tau": self.tau, "mode": self.mode, "outlier_label": OUTLIER_LABEL}}
        return terms, with_loss_options(terms, options, self.loss_opt)

    def validate(self, context: Any) -> None:
        # building the loss is LossOptions.validate's check (unknown names and options), made once here
        unfed = self.make_loss("firm").first_unfed(OUTPUTS)
        if unfed is not None:
            raise MoleflowError(f"--loss {unfed[0]}: it reads '{unfed[1]}', which model 'firm' does not "
                                f"produce (it produces: {', '.join(OUTPUTS)})")
        if not self.anomalies:
            raise MoleflowError(f"--anomalies: name at least one of {', '.join(METHODS)}")
        if self.score == "knn" and self.knn > self.memory:
            raise MoleflowError(f"--knn {self.knn}: must be <= --memory {self.memory} (the kNN score averages the "
                                "k nearest of the memory's embeddings)")
