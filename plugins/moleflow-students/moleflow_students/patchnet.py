"""The teacher/student architecture: a patch CNN whose receptive field is exactly p x p, written so that one
pass over an image yields a descriptor for EVERY pixel, without sliding windows.

Formulation ("Fast Dense Feature Extraction", Bailer et al.): the reference network is an ordinary CNN of
valid convolutions and 2x2/stride-2 max pools that maps one p x p patch to one d-dim descriptor. The dense
network uses the same weights with every pool at stride 1 and every later layer dilated by the stride
accumulated so far (a trous). Its output at (y, x) is exactly the reference network on the patch whose
top-left corner is (y, x); so an image reflect-padded by p//2 gives an (H, W) grid of descriptors, one per
pixel, each of the patch centred on it. `forward_reference` keeps the strided network for the test that
proves this equivalence. A p x p input to the dense network gives a 1 x 1 output: the same module is
used for training on patches (teacher) and for dense maps (students, scoring).

Layer plan: `levels` pooling stages (0 for p < 33, 1 for p < 65, 2 above, as in the paper's three sizes),
4 convs without pooling or 2 convs per level otherwise, kernels chosen so that the receptive field is
exactly p (the first conv absorbs the rounding). No batch norm: its train-mode statistics would differ
between patch batches and dense images. Leaky ReLU slope 5e-3 as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAK = 5e-3
# inputs are [0,1] images; centring them (ImageNet statistics, a fixed per-channel affine map that commutes
# with the reflect padding) lets the first conv learn from step one
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Layer:
    kind: str  # "conv" | "pool"
    kernel: int
    dilation: int  # stride accumulated before this layer: the dilation of the dense form


def layer_plan(patch_size: int) -> list[Layer]:
    """Convs and pools whose receptive field is exactly `patch_size` (odd, >= 5)."""
    levels = 0 if patch_size < 33 else 1 if patch_size < 65 else 2
    convs_per_level = 4 if levels == 0 else 2
    jumps = [2 ** level for level in range(levels + 1) for _ in range(convs_per_level)]
    pools = [2 ** level for level in range(levels)]  # a 2x2 pool at jump j widens the field by j
    budget = patch_size - 1 - sum(pools)  # what the convs' (kernel - 1) * jump must add up to
    per_conv = max(1, budget // sum(jumps))
    extents = [per_conv] * len(jumps)
    extents[0] = budget - per_conv * sum(jumps[1:])  # the first conv (jump 1) takes the remainder exactly
    if extents[0] < 1:
        raise ValueError(f"patch size {patch_size} is too small for {len(jumps)} convs")
    plan: list[Layer] = []
    for i, (jump, extent) in enumerate(zip(jumps, extents)):
        plan.append(Layer("conv", extent + 1, jump))
        ends_level = (i + 1) % convs_per_level == 0 and jump < 2 ** levels
        if ends_level:
            plan.append(Layer("pool", 2, jump))
    return plan


def receptive_field(plan: list[Layer]) -> int:
    return 1 + sum((layer.kernel - 1) * layer.dilation for layer in plan)


class PatchNet(nn.Module):
    """p x p patch -> d-dim descriptor; dense over a padded image (see the module docstring)."""

    def __init__(self, patch_size: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.plan = layer_plan(patch_size)
        assert receptive_field(self.plan) == patch_size
        convs, channels = [], 3
        for layer in self.plan:
            if layer.kind == "conv":
                convs.append(nn.Conv2d(channels, width, layer.kernel))
                channels = width
        self.convs = nn.ModuleList(convs)
        self.head = nn.Conv2d(width, out_dim, 1)  # 1x1: the descriptor, no activation
        self.out_dim = out_dim
        self.register_buffer("input_mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(INPUT_STD).view(1, 3, 1, 1), persistent=False)
        # He init for the leaky ReLU: torch's default shrinks the signal ~10x per layer, which leaves the
        # descriptor near zero and makes the first hundreds of steps do little
        for conv in (*self.convs, self.head):
            nn.init.kaiming_normal_(conv.weight, a=LEAK, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)

    def _run(self, x: Tensor, dense: bool) -> Tensor:
        x = (x - self.input_mean) / self.input_std
        convs = iter(self.convs)
        for layer in self.plan:
            d = layer.dilation if dense else 1
            if layer.kind == "conv":
                conv = next(convs)
                x = F.leaky_relu(F.conv2d(x, conv.weight, conv.bias, dilation=d), LEAK)
            elif dense:
                x = F.max_pool2d(x, 2, stride=1, dilation=d)
            else:
                x = F.max_pool2d(x, 2, stride=2)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H+p-1,W+p-1) -> (B,d,H,W); a (B,3,p,p) patch batch gives (B,d,1,1)."""
        return self._run(x, dense=True)

    def forward_reference(self, patches: Tensor) -> Tensor:
        """The strided network the dense one is equivalent to; (B,3,p,p) -> (B,d,1,1)."""
        return self._run(patches, dense=False)

    def dense(self, images: Tensor) -> Tensor:
        """(B,3,H,W) images -> (B,d,H,W): one descriptor per pixel, of the patch centred on it."""
        return self.forward(pad_for_patches(images, self.patch_size))


def pad_for_patches(images: Tensor, patch_size: int) -> Tensor:
    half = patch_size // 2
    return F.pad(images, (half, half, half, half), mode="reflect")


def sample_patches(images: Tensor, patch_size: int, count: int, generator: torch.Generator) -> Tensor:
    """`count` random p x p patches centred on uniformly drawn pixels of the reflect-padded images, i.e.
    from the same distribution of patches the dense network sees."""
    n, _, h, w = images.shape
    idx = torch.randint(n, (count,), generator=generator)
    ys = torch.randint(h, (count,), generator=generator)
    xs = torch.randint(w, (count,), generator=generator)
    out = torch.empty(count, images.shape[1], patch_size, patch_size, dtype=images.dtype)
    # a few images at a time keeps the padded copy small for large sets
    for start in range(0, n, 16):
        padded = pad_for_patches(images[start:start + 16].float(), patch_size)
        for j in ((idx >= start) & (idx < start + 16)).nonzero().flatten().tolist():
            i, y, x = idx[j] - start, ys[j], xs[j]
            out[j] = padded[i, :, y:y + patch_size, x:x + patch_size]
    return out
