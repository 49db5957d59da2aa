"""anomalib's PatchCore, PaDiM, FastFlow and DFM as moleflow models (`--model anomalib_patchcore` etc.).

Each wraps anomalib's own torch model (`anomalib.models.image.<name>.torch_model`), one per task: its feature
extractor, memory bank and greedy coreset (PatchCore), per-position Gaussians (PaDiM), flow and loss
(FastFlow), PCA (DFM), and its anomaly map and image score exactly as anomalib computes them (`own_scores`:
moleflow neither blurs nor aggregates them). What moleflow adds is the continual protocol:

* `--strategy moleflow` (the default): every task gets a model of its own, fitted on that task only and frozen
  at its end; the router picks the model at test time. Nothing an earlier task uses ever changes (zero
  forgetting by construction); each task's checkpoint holds its model (the frozen ImageNet backbone is not
  stored: it is rebuilt from its offline source).
* `--strategy finetune`: one model, fitted on each task in turn. For the memory models that is what anomalib
  does when fit again: the memory is rebuilt from the new task's data, so earlier tasks are forgotten, and the
  accuracy matrix shows it.
* `--strategy joint`: one model fitted once on every task's training images.

Images come to these models in [0, 1]; they are normalised with ImageNet's mean and std, as anomalib's default
pre-processor does. anomalib is imported when a network is first built, so listing or configuring these models
costs nothing.

Which anomalib models, and why these four: PatchCore, PaDiM and FastFlow are the field's standard references;
DFM (PCA feature reconstruction) is the fourth because it takes the offline backbone as they do and fits in
seconds on CPU. STFPM builds its teacher with timm's hub download hard-wired (no `pre_trained` switch), CFlow's
training step lives in its Lightning module (using it would mean copying it), Reverse Distillation's decoder
exists only for ResNets (no offline weights here), and EfficientAD / Dinomaly fetch their own pretrained
networks at run time: none of them can run offline on the registered weights without patching anomalib.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import time
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from moleflow.contract import IMAGE_SCORE, FitContext, FitResult, ModelContext, closed_form_fit
from moleflow.errors import MoleflowError
from moleflow.training import FitSettings, optimise

from moleflow_anomalib.backbone import backbone_weights, load_into
from moleflow_anomalib.options import DfmOptions, FastflowOptions, PadimOptions, PatchcoreOptions

#: anomalib's default pre-processing normalisation (ImageNet's), applied to moleflow's [0, 1] images
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: images per forward pass while fitting a memory and while scoring (memory only: same results)
CHUNK = 32


@contextlib.contextmanager
def numpy_rng_fork(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block and put back as it was after it (like moleflow.rng's
    seeded_rng for torch's). anomalib's PatchCore coreset projects with sklearn's sample_without_replacement
    at random_state=None, i.e. numpy's global generator: without this a resumed run, or a second run with the
    same seed, keeps another coreset (measured: a different memory and AUROC for the resumed task)."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def fix_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at 1 MiB (what `MALLOC_MMAP_THRESHOLD_=1048576` does; a no-op elsewhere).

    glibc raises the threshold after large blocks are freed (up to 32 MiB), so large temporaries then come from
    the heap. anomalib's greedy coreset allocates one (patches x dims) temporary per selected point, and with
    the raised threshold the heap fragmented until the process was killed: 19 GB peak RSS and 38 s for the
    coreset of one 60-image task at 128 px, against 1.1 GB and 10.5 s with the threshold fixed (measured in
    one process each; an allocator setting, it changes no value). The 1x15 stream was OOM-killed at its
    fourth task before this."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class AnomalibModel(nn.Module):
    """The continual contract around one anomalib torch model per task (see the module docstring).

    A subclass says how to build its network (`build_network`), which module holds its timm backbone
    (`backbone_of`) and how to fit it (`fit_network`)."""

    input_kind = "images"
    own_scores = True
    name = "anomalib"
    #: state_dict prefix of the frozen ImageNet backbone: not checkpointed, rebuilt from its source
    frozen_prefix = "feature_extractor."

    def __init__(self, options: Any, context: ModelContext) -> None:
        super().__init__()
        if context.backbone is None:
            raise MoleflowError(f"model '{self.name}' needs the run's backbone settings (ModelContext.backbone)")
        self.opts, self.backbone = options, context.backbone
        self.img_size, self.seed = tuple(context.img_size), context.seed
        self.source = backbone_weights(context.backbone, context.seed, self.name)  # fails before any image is read
        self.tasks = nn.ModuleDict()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_options(cls, options: Any, context: ModelContext) -> AnomalibModel:
        return cls(options, context)

    # --- what a subclass defines ------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        raise NotImplementedError

    def backbone_of(self, network: nn.Module) -> nn.Module:
        """The timm module inside `network` that holds the backbone weights."""
        return network.feature_extractor.feature_extractor

    def fit_network(self, network: nn.Module, images: torch.Tensor, params: list, context: FitContext) -> FitResult:
        raise NotImplementedError

    # --- helpers -------------------------------------------------------------------------------------------
    def layers(self) -> list[int]:
        """The model's --layers, else the run's --cnn_layers, as timm feature indices."""
        chosen = list(getattr(self.opts, "layers", ()) or self.backbone.cnn_layers)
        try:
            return [int(layer) for layer in chosen]
        except ValueError:
            raise MoleflowError(f"model '{self.name}' reads timm feature indices (e.g. --layers 2 3); the run's "
                                f"--cnn_layers {' '.join(map(str, chosen))} are not all indices") from None

    def _new_network(self) -> nn.Module:
        try:
            network = self.build_network()
        except (ValueError, IndexError, RuntimeError, AssertionError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MoleflowError(f"model '{self.name}': anomalib could not build its network for backbone "
                                f"'{self.backbone.backbone_name}' ({first[:300]})") from None
        load_into(self.backbone_of(network), self.backbone.backbone_name, self.source, self.seed)
        return network

    def _network(self, task_id: int) -> nn.Module:
        key = str(task_id)
        if key not in self.tasks:
            raise MoleflowError(f"model '{self.name}' has no network for task {task_id} (known: "
                                f"{', '.join(self.tasks) or 'none'}); train that task first or load its checkpoint")
        return self.tasks[key]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise MoleflowError(f"model '{self.name}' expects RGB images (N,3,H,W), got shape {tuple(images.shape)}")
        return (images.to(self.mean.device, torch.float32) - self.mean) / self.std

    def fill_memory(self, network: nn.Module, images: torch.Tensor) -> None:
        """anomalib's training pass of a memory model: each forward in train mode stores its embeddings."""
        network.train()
        with torch.no_grad():
            for chunk in images.split(CHUNK):
                network(self.normalise(chunk))

    # --- the continual contract ---------------------------------------------------------------------------
    def begin_task(self, task_id: int, class_name: str = "") -> None:
        if str(task_id) not in self.tasks:
            self.tasks[str(task_id)] = self._new_network().to(self.mean.device)

    def trainable_parameters(self, task_id: int) -> list:
        network = self._network(task_id)
        frozen = {id(p) for p in self.backbone_of(network).parameters()}
        return [p for p in network.parameters() if id(p) not in frozen]

    def fit_task(self, task_id: int, inputs: torch.Tensor, params: list, context: FitContext) -> FitResult:
        if inputs.shape[0] == 0:
            raise MoleflowError(f"{context.label}: no training images")
        network = self._network(task_id)
        with numpy_rng_fork(context.seed):  # the engine seeds torch's draws; anomalib also draws from numpy's
            result = self.fit_network(network, inputs, params, context)
        network.eval()
        return result

    def end_task(self, task_id: int) -> None:
        self._network(task_id).eval().requires_grad_(False)

    @torch.no_grad()
    def score_maps(self, images: torch.Tensor, task_id: int) -> dict[str, torch.Tensor]:
        """anomalib's anomaly map (N,H,W) at the input's size and its image score (N,)."""
        network = self._network(task_id)
        network.eval()
        maps, scores = [], []
        for chunk in images.split(CHUNK):
            out = network(self.normalise(chunk))
            maps.append(out.anomaly_map.reshape(len(chunk), *out.anomaly_map.shape[-2:]).float())
            scores.append(out.pred_score.reshape(len(chunk)).float())
        return {"score": torch.cat(maps).to(images.device), IMAGE_SCORE: torch.cat(scores).to(images.device)}

    def patch_scores(self, images: torch.Tensor, task_id: int) -> torch.Tensor:
        return self.score_maps(images, task_id)["score"]

    def task_state(self, task_id: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self._network(task_id).state_dict().items()
                if not k.startswith(self.frozen_prefix)}

    def shared_state(self) -> dict:
        return {}

    def load_task_state(self, task_id: int, state: dict) -> None:
        self.begin_task(task_id)
        missing, unexpected = self._network(task_id).load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(self.frozen_prefix)]
        if missing or unexpected:
            raise MoleflowError(f"model '{self.name}': task {task_id}'s checkpoint does not fit its network "
                                f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})")
        self.end_task(task_id)

    def load_shared_state(self, state: dict) -> None:
        pass

    def param_counts(self) -> dict:
        """Per task: every value its checkpoint holds (memory banks and Gaussians included; not the backbone)."""
        tasks = sorted(int(k) for k in self.tasks)
        return {"shared": 0, "per_task": [sum(v.numel() for v in self.task_state(t).values()) for t in tasks]}

    def describe(self) -> str:
        from importlib.metadata import version

        return (f"{self.name}: anomalib {version('anomalib')}'s torch model on {self.backbone.backbone_name} "
                f"({self.source.description})")


class AnomalibPatchcore(AnomalibModel):
    """anomalib's PatchCore: a greedy k-center coreset of the task's patch features; a patch scores its distance
    to the nearest memory patch, the image its reweighted maximum (anomalib's)."""

    name = "anomalib_patchcore"
    options_class = PatchcoreOptions

    def build_network(self) -> nn.Module:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        return PatchcoreModel(layers=self.layers(), backbone=self.backbone.backbone_name, pre_trained=False,
                              num_neighbors=self.opts.num_neighbors)

    def fit_network(self, network: nn.Module, images: torch.Tensor, params: list, context: FitContext) -> FitResult:
        def fill() -> None:
            self.fill_memory(network, images)
            fix_mmap_threshold()
            network.subsample_embedding(self.opts.coreset_ratio)  # anomalib's KCenterGreedy

        return closed_form_fit(fill)


class AnomalibPadim(AnomalibModel):
    """anomalib's PaDiM: a Gaussian per feature position over a random subset of the layers' channels; the map is
    the Mahalanobis distance, smoothed; the image score its maximum (anomalib's)."""

    name = "anomalib_padim"
    options_class = PadimOptions

    def build_network(self) -> nn.Module:
        from anomalib.models.image.padim.torch_model import PadimModel

        return PadimModel(backbone=self.backbone.backbone_name, layers=self.layers(), pre_trained=False,
                          n_features=self.opts.n_features)

    def fit_network(self, network: nn.Module, images: torch.Tensor, params: list, context: FitContext) -> FitResult:
        def fill() -> None:
            self.fill_memory(network, images)
            network.fit()

        return closed_form_fit(fill)


class AnomalibDfm(AnomalibModel):
    """anomalib's DFM: a PCA of the task's pooled feature maps; the map is the feature reconstruction error
    (anomalib's `fre` score, the one of its scores that has a map), the image score its sum."""

    name = "anomalib_dfm"
    options_class = DfmOptions

    def build_network(self) -> nn.Module:
        from anomalib.models.image.dfm.torch_model import DFMModel

        layer = self.opts.layer if self.opts.layer >= 0 else self.layers()[-1]
        return DFMModel(backbone=self.backbone.backbone_name, layer=layer, pre_trained=False,
                        pooling_kernel_size=self.opts.pooling_kernel_size, n_comps=self.opts.n_comps,
                        score_type="fre")

    def fit_network(self, network: nn.Module, images: torch.Tensor, params: list, context: FitContext) -> FitResult:
        if len(images) < 2:
            raise MoleflowError(f"{context.label}: anomalib_dfm's PCA needs at least 2 training images")

        def fill() -> None:
            try:
                self.fill_memory(network, images)
            except RuntimeError as exc:  # the pooling kernel larger than the feature map
                raise MoleflowError(f"{context.label}: anomalib_dfm cannot pool the stage's feature map with "
                                    f"--pooling_kernel_size {self.opts.pooling_kernel_size} at this image size "
                                    f"({str(exc).splitlines()[0][:120]}); use a smaller kernel or a larger "
                                    "--img_size") from None
            network.fit()

        return closed_form_fit(fill)


class AnomalibFastflow(AnomalibModel):
    """anomalib's FastFlow: a 2-D normalizing flow per feature level (stages 1-3 of the backbone, as anomalib
    fixes them), trained with its own loss and Adam settings; the map is the negative mean likelihood over
    levels, the image score its maximum (anomalib's)."""

    name = "anomalib_fastflow"
    options_class = FastflowOptions
    #: the CNN backbones anomalib 2.7's FastFlow accepts (it sizes its LayerNorms per backbone); none of them has
    #: weights offline here, so it runs on a user's --backbone_weights file or on a random --no_pretrained one
    BACKBONES = ("resnet18", "wide_resnet50_2")

    def __init__(self, options: Any, context: ModelContext) -> None:
        name = getattr(context.backbone, "backbone_name", None)
        if name not in self.BACKBONES:
            raise MoleflowError(f"model 'anomalib_fastflow': anomalib's FastFlow takes --backbone_name "
                                f"{' or '.join(self.BACKBONES)} (not {name}); give its weights with --backbone_weights "
                                "FILE, or --no_pretrained for a random backbone")
        super().__init__(options, context)

    def backbone_of(self, network: nn.Module) -> nn.Module:
        return network.feature_extractor

    def build_network(self) -> nn.Module:
        from anomalib.models.image.fastflow.torch_model import FastflowModel

        o = self.opts
        return FastflowModel(input_size=self.img_size, backbone=self.backbone.backbone_name, pre_trained=False,
                             flow_steps=o.flow_steps, conv3x3_only=o.conv3x3_only, hidden_ratio=o.hidden_ratio)

    def fit_network(self, network: nn.Module, images: torch.Tensor, params: list, context: FitContext) -> FitResult:
        from anomalib.models.image.fastflow.loss import FastflowLoss

        if not params:
            return FitResult()
        o = self.opts
        settings = FitSettings.of(o, context, grad_clip=0.0)  # anomalib clips nothing
        loss_fn = FastflowLoss()
        network.train()
        self.backbone_of(network).eval()  # frozen: its batch-norm statistics stay ImageNet's
        for p in params:
            p.requires_grad_(True)

        def step_loss(idx: torch.Tensor, _generator: torch.Generator) -> tuple[torch.Tensor, int]:
            hidden, jacobians = network(self.normalise(images[idx]))
            return loss_fn(hidden, jacobians), len(idx)

        start = time.perf_counter()
        result = optimise(network, params, settings, step_loss=step_loss,
                          steps_per_epoch=math.ceil(len(images) / o.batch_size), label=context.label,
                          epoch_batches=lambda g: torch.randperm(len(images), generator=g).split(o.batch_size),
                          make_optimizer=lambda ps: torch.optim.Adam(ps, lr=o.lr, weight_decay=o.weight_decay),
                          cosine=False, on_epoch=context.on_epoch)
        result.seconds = time.perf_counter() - start
        return result
