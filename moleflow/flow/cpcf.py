"""v4 / v4.1 CPCF: the neighbourhood context every coupling subnet is conditioned on.

With use_cpcf, each coupling block's subnet reads [its half of patch x'_i, context_i] (a FrEIA condition,
width = feature dim), so the flow models x'_i given its surroundings. The context is computed from the
flow input x' (B,h,w,D) itself, i.e. after standardisation, positional embedding, patch attention and the
task adapter. Hence inverse() needs the same context: compute it from x' as forward() does.

Leave-centre-out by default: the context of patch i is computed from its neighbours only. If it also
contained patch i (the centre tap of the kernel, or the (1-g)*x term of the historical v4.1 formula), a
coupling could read x2 from its own condition (e.g. shift = -x2): the log-det would then not be the
Jacobian of x' -> z and the "density" would ignore exactly the dimensions it is meant to model.
`include_center=True` reproduces the historical formulas for comparison; it is documented as leaking.

The k x k neighbours are taken `dilation` patches apart (1 = adjacent; 2 skips the adjacent ring, whose
3x3-aggregated features overlap the patch's own and so carry a defect into its context).
Context extractors, all (B,h,w,D) -> (B,h,w,D) with 'same' size and replicate padding (a border patch's
missing neighbours are copies of the border, so the context keeps the statistics of the interior; zero
padding would make every border context look like a darker neighbourhood):

* LearnedContext (v4 default): depthwise k x k conv (centre tap masked to 0), initialised to the mean of
  the neighbours.
* NeighbourhoodAttention (v4 with cpcf_use_attention): single-head attention from each patch to the
  k x k patches around it (itself excluded).
* FixedContext (v4.1): the mean of the k x k neighbours; no parameters at all. With include_center the
  historical (1-g)*x + g*mean_kxk(x).

The learnable ones are shared base parameters: trained at task 0 only, frozen by end_task(0).

Training on a strided sub-grid (--token_stride): MoLEFlow.forward computes the context from the whole
grid's x' and then takes the sub-grid of both, so a patch's neighbours are always its true neighbours.
v10 (the default version's parent) is v9 with FixedContext, k = 3: see UPDATE_NOTES.md for what it does per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.errors import MoleflowError


def _check_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise MoleflowError(f"cpcf_context_kernel must be an odd number >= 1 for 'same' padding, got {kernel}")


def _padded_channels_first(x: Tensor, kernel: int, dilation: int = 1) -> Tensor:
    """(B,h,w,D) -> (B,D,h+2r,w+2r), replicate-padded by r = (k // 2) * dilation."""
    r = (kernel // 2) * dilation
    x = x.permute(0, 3, 1, 2)
    return F.pad(x, (r, r, r, r), mode="replicate") if r else x


def _tap_mask(kernel: int, include_center: bool) -> Tensor:
    mask = torch.ones(kernel, kernel)
    if not include_center:
        mask[kernel // 2, kernel // 2] = 0.0
    return mask


def _check_neighbours(kernel: int, include_center: bool) -> None:
    if kernel == 1 and not include_center:
        raise MoleflowError("cpcf_context_kernel 1 has no neighbours; use 3 or more")


class LearnedContext(nn.Module):
    """Depthwise k x k conv (one filter per channel + bias); starts as the plain mean of the neighbours."""

    def __init__(self, dim: int, kernel: int = 3, include_center: bool = False, dilation: int = 1) -> None:
        super().__init__()
        _check_kernel(kernel)
        _check_neighbours(kernel, include_center)
        self.kernel, self.dilation = kernel, dilation
        self.conv = nn.Conv2d(dim, dim, kernel, groups=dim, dilation=dilation)
        mask = _tap_mask(kernel, include_center)
        self.register_buffer("tap_mask", mask.view(1, 1, kernel, kernel), persistent=False)
        with torch.no_grad():  # a meaningful start: the mean; training then reweights the neighbours
            self.conv.weight.copy_(mask.expand_as(self.conv.weight) / mask.sum())
            self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        weight = self.conv.weight * self.tap_mask  # the masked tap can never carry patch i into its context
        out = F.conv2d(_padded_channels_first(x, self.kernel, self.dilation), weight, self.conv.bias,
                       groups=self.conv.groups, dilation=self.dilation)
        return out.permute(0, 2, 3, 1)


class NeighbourhoodAttention(nn.Module):
    """Single-head attention: query = patch i, keys/values = the k x k patches around it (i excluded)."""

    def __init__(self, dim: int, kernel: int = 3, include_center: bool = False, dilation: int = 1) -> None:
        super().__init__()
        _check_kernel(kernel)
        _check_neighbours(kernel, include_center)
        self.kernel, self.dilation = kernel, dilation
        self.register_buffer("keep", _tap_mask(kernel, include_center).flatten().bool(), persistent=False)
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, d = x.shape
        k2 = self.kernel**2
        normed = self.norm(x)
        # unfold: (B, D*k^2, h*w) with channel-major layout -> (B*h*w, k^2, D) neighbours per patch
        neigh = F.unfold(_padded_channels_first(normed, self.kernel, self.dilation), self.kernel,
                         dilation=self.dilation)
        neigh = neigh.view(b, d, k2, h * w).permute(0, 3, 2, 1).reshape(b * h * w, k2, d)[:, self.keep]
        # the query must not come from patch i either (its attention weights would carry x_i): with
        # leave-centre-out it is the neighbours' mean
        query_src = normed.reshape(b * h * w, 1, d) if bool(self.keep.all()) else neigh.mean(1, keepdim=True)
        q = self.q(query_src)
        key, value = self.kv(neigh).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, key, value)  # (B*h*w, 1, D)
        return out.reshape(b, h, w, d)


class FixedContext(nn.Module):
    """v4.1: mean of the k x k neighbours (parameter-free, never trained). With include_center, the
    historical (1 - gate) * x + gate * (k x k mean including x), which leaks x into its own condition."""

    def __init__(self, kernel: int = 3, gate: float = 0.3, include_center: bool = False, dilation: int = 1) -> None:
        super().__init__()
        _check_kernel(kernel)
        _check_neighbours(kernel, include_center)
        if not 0.0 <= gate <= 1.0:
            raise MoleflowError(f"cpcf_context_gate must be in [0, 1], got {gate}")
        self.kernel, self.dilation = kernel, dilation
        self.gate = float(gate)  # a plain float: fixed by the config, nothing to save or train
        self.include_center = include_center

    def forward(self, x: Tensor) -> Tensor:
        padded = _padded_channels_first(x, self.kernel, self.dilation)
        if self.include_center and self.dilation == 1:  # the historical formula, kept to its rounding
            mean = F.avg_pool2d(padded, self.kernel, stride=1).permute(0, 2, 3, 1)
            return (1.0 - self.gate) * x + self.gate * mean
        # an exact 0 centre tap (not sum - x, whose rounding would still depend on x_i)
        mask = _tap_mask(self.kernel, self.include_center).to(x)
        weight = (mask / mask.sum()).expand(x.shape[-1], 1, self.kernel, self.kernel)
        mean = F.conv2d(padded, weight, groups=x.shape[-1], dilation=self.dilation).permute(0, 2, 3, 1)
        return (1.0 - self.gate) * x + self.gate * mean if self.include_center else mean

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, dilation={self.dilation}, gate={self.gate:g}, "
                f"include_center={self.include_center}")


def make_context(dim: int, *, kernel: int = 3, use_attention: bool = False, fixed: bool = False,
                 gate: float = 0.3, include_center: bool = False, dilation: int = 1) -> nn.Module:
    """The v4 / v4.1 context extractor selected by the flags."""
    if fixed and use_attention:
        raise MoleflowError("cpcf_fixed_context and cpcf_use_attention exclude each other; turn one off")
    if dilation < 1:
        raise MoleflowError(f"cpcf_context_dilation must be >= 1, got {dilation}")
    if fixed:
        return FixedContext(kernel, gate, include_center, dilation)
    if use_attention:
        return NeighbourhoodAttention(dim, kernel, include_center, dilation)
    return LearnedContext(dim, kernel, include_center, dilation)
