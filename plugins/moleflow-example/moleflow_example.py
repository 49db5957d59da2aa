"""A minimal moleflow plugin, used by the test suite and by README's "write your own plugin" section.

It adds a loss component (`latent_l1`), a version preset of the flow (`v3-small`) and an image model
(`pixel_gauss`, with its options class). moleflow finds all three through the entry points declared in this
package's setup.cfg once it is installed (`pip install -e plugins/moleflow-example`); nothing in moleflow
imports this file by path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moleflow.contract import FitContext, FitResult, ModelContext, closed_form_fit
from moleflow.options import option
from moleflow.versions import VersionPreset


class LatentL1Loss:
    """Mean absolute latent value per dimension: a sparsity-style pull of z towards 0.

    `reads` names the model outputs it needs; moleflow reports a clear error if a model lacks one.
    """

    reads = ("z",)

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        return outputs["z"].abs().mean()


#: a preset of model "moleflow" (VersionPreset's default `model`): its overrides are names of MoLE-Flow's options
V3_SMALL = VersionPreset(
    name="v3-small",
    parent="v3",
    description="v3 with rank-4 experts and a 4-block flow (a cheaper variant, defined by a plugin)",
    overrides={"lora_rank": 4, "num_coupling_layers": 4},
    introduces=(),
)


@dataclass(frozen=True)
class PixelGaussianOptions:
    """Every option of `pixel_gauss`, declared once: each field is a `moleflow train --model pixel_gauss`
    flag of the same name (`--eps 0.5`, in `--help` with its default and range), also `--model_opt eps=0.5`,
    a config file's `{"model": {"name": "pixel_gauss", "options": {"eps": 0.5}}}` and a preset's override;
    moleflow types and checks it (`--eps -1` is one error line) before any image is read, and saves it in the
    run's config.json. It has no --num_epochs, --lr or --loss: a closed-form fit reads none, so they are not
    flags of this model. (A model whose options depend on each other adds `rules: ClassVar[tuple[Rule, ...]]`,
    which refuse an option that would change nothing, and `validate(self, context)` for checks across fields:
    see moleflow/options.py and plugins/moleflow-ae/moleflow_ae/options.py.)"""

    eps: float = option(0.01, "added to each pixel's training std (keeps constant pixels finite)", above=0)


class PixelGaussian(torch.nn.Module):
    """A whole model as a plugin: per task, a Gaussian per pixel and channel of the training images.

    Shows the parts of the model contract (moleflow/contract.py) a model that is not a flow needs:
    * `options_class`: the dataclass of its options (above); moleflow builds the flags, checks and saves
      them from it, and hands the checked instance to `from_options`;
    * `from_options(options, context)`: builds itself from its options and what the run decides around it
      (`ModelContext`: image size, feature width and grid, seed, device);
    * `input_kind = "images"`: the trainer hands it images (N,3,H,W in [0,1]) instead of patch features
      (routing still uses the backbone's pooled features);
    * `fit_task(task_id, inputs, params, context)`: its own training procedure (here: closed-form
      statistics, no gradient steps, timed by `closed_form_fit`; `context` gives the task's seed, device
      and a label for errors);
    * `patch_scores` at any resolution (here: per pixel), and per-task state for checkpoints.
    """

    input_kind = "images"
    options_class = PixelGaussianOptions

    def __init__(self, options: PixelGaussianOptions | None = None) -> None:
        super().__init__()
        self.opts = options or PixelGaussianOptions()
        self.stats = torch.nn.ParameterDict()  # "<task>_mean" / "<task>_std", never trained by gradients

    @classmethod
    def from_options(cls, options: PixelGaussianOptions, context: ModelContext) -> PixelGaussian:
        return cls(options)

    # --- the continual contract ---
    def begin_task(self, task_id: int, class_name: str = "") -> None:
        pass

    def trainable_parameters(self, task_id: int) -> list:
        return []

    def fit_task(self, task_id: int, inputs: torch.Tensor, params: list, context: FitContext) -> FitResult:
        return closed_form_fit(lambda: self._fit_statistics(task_id, inputs, context))

    def _fit_statistics(self, task_id: int, inputs: torch.Tensor, context: FitContext) -> None:
        for name, value in (("mean", inputs.mean(0)), ("std", inputs.std(0) + self.opts.eps)):
            self.stats[f"{task_id}_{name}"] = torch.nn.Parameter(value.to(context.device), requires_grad=False)

    def end_task(self, task_id: int) -> None:
        pass

    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor, task_id: int) -> torch.Tensor:
        z = (images - self.stats[f"{task_id}_mean"]) / self.stats[f"{task_id}_std"]
        return z.pow(2).mean(1)  # (B,H,W): one "patch" per pixel

    def task_state(self, task_id: int) -> dict:
        return {k: v.detach().clone() for k, v in self.stats.items() if k.startswith(f"{task_id}_")}

    def shared_state(self) -> dict:
        return {}

    def load_task_state(self, task_id: int, state: dict) -> None:
        for k, v in state.items():
            self.stats[k] = torch.nn.Parameter(v, requires_grad=False)

    def load_shared_state(self, state: dict) -> None:
        pass

    def param_counts(self) -> dict:
        tasks = sorted({int(k.split("_")[0]) for k in self.stats})
        return {"shared": 0, "per_task": [sum(v.numel() for k, v in self.stats.items() if k.startswith(f"{t}_"))
                                          for t in tasks]}
