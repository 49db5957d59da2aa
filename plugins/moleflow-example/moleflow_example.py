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


class PixelGaussian(torch.nn.Module):
    """A whole model as a plugin: per task, a Gaussian per pixel and channel of the training images.

    Shows the parts of the continual contract a model that is not a flow needs:
    * `input_kind = "images"`: the trainer hands it images (N,3,H,W in [0,1]) instead of patch features
      (routing still uses the backbone's pooled features);
    * `from_config`: builds itself from the run config; its own options come from `--model_opt KEY=VALUE`;
    * `fit_task`: its own training procedure (here: closed-form statistics, no gradient steps);
    * `patch_scores` at any resolution (here: per pixel), and per-task state for checkpoints.
    """

    input_kind = "images"
    #: run settings of the flow / training loop it reads: none (closed-form fit), so moleflow refuses them
    reads_settings = ()

    def __init__(self, eps: float = 0.01) -> None:
        super().__init__()
        self.eps = float(eps)
        self.stats = torch.nn.ParameterDict()  # "<task>_mean" / "<task>_std", never trained by gradients

    @classmethod
    def from_config(cls, cfg, *, dim, grid, img_size, overrides):
        from moleflow.config import parse_options

        return cls(**parse_options(cfg.flow.model_opt))

    # --- the continual contract ---
    def begin_task(self, task_id: int, class_name: str = "") -> None:
        pass

    def trainable_parameters(self, task_id: int) -> list:
        return []

    def fit_task(self, task_id, inputs, params, loss_fn, settings, *, label, on_epoch=None):
        from moleflow.continual.fit import FitResult

        for name, value in (("mean", inputs.mean(0)), ("std", inputs.std(0) + self.eps)):
            self.stats[f"{task_id}_{name}"] = torch.nn.Parameter(value.to(settings.device), requires_grad=False)
        return FitResult()

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
