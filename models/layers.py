"""Per-token weights on token-major tokens (B, L, C): `nn.Linear` and its grouped variant.

Tokens are (B, L, C), the paper's row layout, so a per-token weight is one GEMM over all B*L token
rows of the batch (`nn.Linear`); the former channels-first 1x1 `Conv1d` on (B, C, L) ran B skinny
per-sample GEMMs of L columns, 81 % of the VT stage's CPU time (results/speed_cpu/FINDINGS.md).

State dicts saved with that earlier layout still load: a 1x1 `Conv1d` weight (C_out, C_in, 1)
becomes the `nn.Linear` weight (C_out, C_in), a grouped one the `GroupedLinear` blocks.

CPU fast paths (issue 15; same parameters, state-dict keys, MACs and outputs, only another kernel
order): `TokenLinear` computes a few token rows as W x^T, and `PixelConv` runs a grouped 1x1
convolution as one batched matmul over its groups. `plain_kernels()` turns both off, for the tests
that compare the two forms and for before/after timings.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

SMALL_ROWS_MAX = 128
"""Token rows (B * L) up to which `TokenLinear` runs W x^T on CPU. Measured here (2 threads, fp32,
torch 2.14.1, AMD EPYC): for 16 rows, W x^T takes 0.59-0.66x the time of `F.linear`'s x W^T for
1024x1024, 1024x512, 1024x256 and 2048x1024 weights (1.0x for 256 -> 1024 with the result
transposed back); at 128 rows 0.67-0.90x; at 512 rows 0.92-1.09x, so larger batches keep F.linear."""

_fast_paths = True


@contextlib.contextmanager
def plain_kernels() -> Iterator[None]:
    """Run `TokenLinear` and `PixelConv` as plain `F.linear` / `F.conv2d` inside this block."""
    global _fast_paths
    before, _fast_paths = _fast_paths, False
    try:
        yield
    finally:
        _fast_paths = before


class TokenLinear(nn.Linear):
    """`nn.Linear` on token rows (..., C_in) that computes few rows on CPU as (W x^T)^T.

    With B * L = 16 rows (batch 1) the product is a skinny GEMM bound by streaming the weight;
    oneDNN/MKL's kernel for W x^T (weight as the left operand) runs it in about 0.6x the time of
    x W^T (`SMALL_ROWS_MAX` gives the measurements). The result is returned as a transposed view
    (no copy); every consumer here takes strided tensors. Same weight, same MACs (one mm of
    rows x C_in x C_out), the same outputs up to float summation order.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1].numel()  # an int, also under torch.jit.trace (x.numel() is traced)
        if not (_fast_paths and self.bias is None and x.device.type == "cpu" and rows <= SMALL_ROWS_MAX):
            return F.linear(x, self.weight, self.bias)
        out = torch.mm(self.weight, x.reshape(rows, self.in_features).t()).t()  # (rows, C_out) view
        return out.reshape(*x.shape[:-1], self.out_features)


class PixelConv(nn.Conv2d):
    """A grouped 1x1 convolution on an NCHW map, run on CPU as one batched matmul over the groups.

    oneDNN's grouped 1x1 convolution is slow for these shapes: the projector's W_Q of VT-ResNet-50
    (1024 -> 256 channels, 16 groups, 14x14 map) took 0.114 ms as a convolution and 0.048 ms as a
    bmm at batch 1, 3.8 vs 2.4 ms at batch 32 (measured here, 2 threads). The weight stays a
    `Conv2d` weight (d, C / g, 1, 1), so parameters, state dicts and MACs are those of the
    convolution; a map that is not contiguous NCHW (channels_last) takes the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__(in_channels, out_channels, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_fast_paths and self.groups > 1 and x.device.type == "cpu" and x.is_contiguous()):
            return super().forward(x)
        b, c, h, w = x.shape
        g = self.groups
        weight = self.weight.view(1, g, self.out_channels // g, c // g).expand(b, -1, -1, -1)
        out = torch.bmm(weight.reshape(b * g, self.out_channels // g, c // g),  # (B g, d/g, C/g)
                        x.view(b * g, c // g, h * w))  # (B g, C/g, HW): group j of every sample
        return out.view(b, self.out_channels, h, w)

class GroupedLinear(nn.Module):
    """A grouped per-token projection: the appendix's grouped 1x1 convolution on token rows.

    The weight is block-diagonal, `groups` blocks of (C_in / g) x (C_out / g), stored as
    (g, C_in / g, C_out / g): the same parameters and MACs as `Conv1d(C_in, C_out, 1, groups=g)`.
    All B*L token rows of a group go through one matmul (a batched matmul over the g groups), for
    the same reason `nn.Linear` replaced the ungrouped 1x1 convolutions: one GEMM over B*L rows.

    Args:
        in_features: C_in, divisible by `groups`.
        out_features: C_out, divisible by `groups`.
        groups: number of diagonal blocks g.
    """

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"groups={groups} must divide {in_features} and {out_features}")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(torch.empty(groups, in_features // groups, out_features // groups))
        bound = (groups / in_features) ** 0.5  # Conv1d's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C_in) -> (..., C_out); output group j = input group j @ weight[j]."""
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.groups, self.in_features // self.groups).transpose(0, 1)  # (g, N, C_in/g)
        out = torch.matmul(rows, self.weight)  # (g, N, C_out/g): one GEMM per group over all N rows
        return out.transpose(0, 1).reshape(*lead, self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Also accept a grouped 1x1 `Conv1d` weight (C_out, C_in / g, 1) of the earlier layout."""
        key = prefix + "weight"
        weight = state_dict.get(key)
        g, cin, cout = self.groups, self.in_features // self.groups, self.out_features // self.groups
        if weight is not None and tuple(weight.shape) == (self.out_features, cin, 1):
            # Conv1d group j holds output channels j*cout..(j+1)*cout: (g, cout, cin) -> (g, cin, cout).
            state_dict[key] = weight.reshape(g, cout, cin).transpose(1, 2).contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def token_linear(in_features: int, out_features: int, groups: int = 1, bias: bool = False) -> nn.Module:
    """A per-token weight on (B, L, C) tokens: `nn.Linear` (one GEMM over B*L rows) or `GroupedLinear`."""
    if groups > 1:
        if bias:
            raise ValueError("grouped token projections have no bias")
        return GroupedLinear(in_features, out_features, groups)
    layer = TokenLinear(in_features, out_features, bias=bias)
    layer._register_load_state_dict_pre_hook(_from_conv1d_weight)
    return layer


def _from_conv1d_weight(state_dict, prefix, *args) -> None:
    """Load a 1x1 `Conv1d` weight of the earlier channels-first token layout (C_out, C_in, 1)."""
    weight = state_dict.get(prefix + "weight")
    if weight is not None and weight.dim() == 3 and weight.shape[-1] == 1:
        state_dict[prefix + "weight"] = weight.squeeze(-1)  # (C_out, C_in): nn.Linear's layout


NUMERICS = ("centered", "appendix", "iccv")
"""How the VT module's softmax logits are scaled, its token-space weights initialised, and whether
two parameter-free centering steps of vtbench's own are on. The default is `centered`.

- `appendix`: every attention logit is divided by sqrt(d), d the width of the dot product it comes
  from, as in the arXiv appendix (and in every transformer since Vaswani et al.); the token-space
  weights get the documented init of `models.init` (attention weights of unit gain, a small
  classifier), so that no softmax is saturated at step 0. Left at that, two collapses remain at
  init (measured on random 224x224 input, tests/test_init_health.py): the recurrent tokenizers'
  tokens are near-identical (pairwise cosine > 0.999), and with C_T = C (VT-ResNet-50/101) the
  projectors make the map's pixels alike (mean pixel cosine 0.32 -> 0.83 -> 0.98 over modules 1-3),
  which starves module 2's projector of gradient.
- `centered` (the default, the one that trains): `appendix` plus two steps that are not in the
  paper, chosen here for those two measured collapses; neither has a parameter or a MAC:
  1. the recurrent tokenizer builds its filters from each incoming token's deviation from the
     tokens' mean, scaled to unit RMS per token (`token_deviations`): W_R = dev(T_in) W_{T->R},
     and dots them with the pixels scaled to unit RMS (`inverse_pixel_rms`; the values averaged
     are the pixels as they are). The tokens' shared part gives every new token the same filter,
     and so the same attention (a per-pixel bias the softmax over HW does not cancel); a pixel of
     large norm gets the largest logits of many filters at once, and so several tokens. Both
     scalings are the query/key normalisation of QK-normalised attention (Swin V2's cosine
     attention; Dehghani et al. 2023, ViT-22B), with W_{T->R}'s scale as the temperature.
  2. a projector without a value map (C_T = C, where the ICCV projector adds the tokens themselves)
     adds the tokens' deviations from their mean: since its attention sums to one over L, the
     mean token would be added unchanged to every pixel of the sample. With a value map W_V
     (C_T != C) nothing changes: W_V's small init (`models.init.VALUE_GAIN`) already starts that
     term small, and W_V can learn it.
- `iccv`: the ICCV equations (1-5) taken literally, no scaling, PyTorch's default init. At 224x224
  this collapses the recurrent tokenizers of VT-ResNet-34/50/101 onto one pixel and leaves their
  K, Q and W_{T->R} without gradient (tests/test_init_health.py shows it); kept to reproduce the
  equations as printed.

Results committed before `centered` existed (2026-12-04) were trained with `appendix`, then the
default; their NOTES say so.
"""

DEFAULT_NUMERICS = "centered"


def check_numerics(numerics: str) -> str:
    """Validate a `numerics` choice (`centered`, `appendix` or `iccv`)."""
    if numerics not in NUMERICS:
        raise ValueError(f"unknown numerics {numerics!r}; choose from {', '.join(NUMERICS)}")
    return numerics


def is_scaled(numerics: str) -> bool:
    """Whether logits are divided by sqrt(d) and weights get `models.init`'s init (all but `iccv`)."""
    return check_numerics(numerics) != "iccv"


def logit_scale(width: int, numerics: str) -> float:
    """The factor on a softmax's logits: 1/sqrt(width) (`centered`, `appendix`) or 1 (`iccv`, as printed)."""
    return width ** -0.5 if is_scaled(numerics) else 1.0


def token_deviations(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each token's deviation from the mean of its sample's tokens, at unit RMS per token; (B, L, C).

    `numerics="centered"` step 1 (see NUMERICS). With a single token, or identical tokens, the
    deviations are zero and stay zero (no division by zero): the filters are then zero and the
    attention uniform.
    """
    deviations = tokens - tokens.mean(dim=1, keepdim=True)
    return deviations * torch.rsqrt(deviations.pow(2).mean(dim=-1, keepdim=True) + eps)


def inverse_pixel_rms(x_flat: torch.Tensor, eps: float = 1e-6, dim: int = 1) -> torch.Tensor:
    """1 / RMS over the C channels of each pixel of (B, C, HW), as (B, 1, HW) (`centered` step 1's keys).

    Dotting a filter with the pixel at unit RMS is the plain dot product times this factor, so the
    recurrent tokenizer scales its (B, L, HW) logits by it instead of the (B, C, HW) map: L
    multiplications per pixel instead of C (16 vs 1024 in VT-ResNet-50), the same bmm. `dim=-1`
    takes pixel rows (B, HW, C) instead and returns (B, HW, 1)."""
    return torch.rsqrt(x_flat.pow(2).mean(dim=dim, keepdim=True) + eps)


ATTENTION_IMPLS = ("reference", "sdpa", "fused")
"""How the VT module's attention steps run; every form has the same parameters, state-dict keys,
initial weights, MACs and outputs (up to float summation order):

- `reference`: each step written out as the equations read (logits by a matmul or 1x1 convolution,
  softmax, a second matmul), the attention matrix materialised; the form every committed number
  before the attention form came from, and the one that returns the tokenizers' attention maps.
- `sdpa`: every softmax(Q K^T * scale) V step through `torch.nn.functional.scaled_dot_product_attention`
  with the numerics' scale passed explicitly (`attend`): the filter tokenizer (W_A's rows as L
  queries shared by the batch, the pixels as keys and values), the recurrent tokenizer (queries
  W_R = T_in W_{T->R}; under `centered` the keys are the pixels at unit RMS, the values the pixels
  as they are), the token transformer (queries T K, keys T Q, values T_in: eq. 3) and the projector
  (HW pixel queries X W_Q, keys T W_K, values the tokens or T W_V). A fused kernel runs where the
  device has one for the shapes (on CPU: equal query and value widths, unit-stride rows); the
  tokenizers then return no attention map (`models.vt.token_attention` switches to `reference`).
- `fused`: the filter and recurrent tokenizers through the op `vtbench::token_attention`
  (`models.kernels.token_attention`): keys and values read from the same pixel rows (an NCHW map
  without a copy), `centered`'s key scale applied to the logits, an online softmax over the pixels;
  a Triton kernel on CUDA, which covers the head widths C = 512-1024 that SDPA's flash kernels
  (head width <= 256) do not, and the reference math elsewhere. The token transformer and the
  projector run as under `sdpa` (`uses_sdpa`): their attention has L tokens as keys and head widths
  C_T <= 256, which SDPA's flash kernels take. No attention maps, as under `sdpa`.

The paper-convention counts (`gmacs`, `gmacs_traced`) are identical in all forms; fvcore's plain
total (`gmacs_fvcore`, which also counts element-wise work) differs by up to about 0.01 % (measured
on VT-ResNet-18/50 and VT-FPN-R50): a fused kernel's softmax is not seen, and `centered` scales
the keys instead of the logits.
"""

DEFAULT_ATTENTION_IMPL = "reference"
"""The default form, the one measured faster: on the CPU (results/speed_attention_cpu, 2 cores, fp32,
VT-ResNet-18/50 at batch 1 and 32 eager and compiled, VT-FPN-R50 at 473x473) `sdpa` / `reference` was
0.98-1.08 with no row resolved either way and the VT stage alone slower under `sdpa`, so `reference`
stays; on a GPU neither form has been timed in this checkout (`scripts/gpu_check.sh` times both)."""


def check_attention_impl(attention_impl: str) -> str:
    """Validate an `attention_impl` choice (`reference`, `sdpa` or `fused`)."""
    if attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention_impl {attention_impl!r}; choose from {', '.join(ATTENTION_IMPLS)}")
    return attention_impl


def uses_sdpa(attention_impl: str) -> bool:
    """Whether the token transformer and the projector run through SDPA: under `sdpa` and `fused` alike."""
    return check_attention_impl(attention_impl) != "reference"


def pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """A feature map (B, C, H, W) as pixel rows (B, HW, C) with unit-stride channels.

    A channels_last map already is that layout: the result is a view, no copy. An NCHW map is
    copied once, so that the fused attention kernels (which want unit-stride rows) take it.
    """
    return unit_stride_rows(x.flatten(2).transpose(1, 2))


def unit_stride_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its last dimension has unit stride (views kept), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(queries keys^T * scale) values, softmax over the keys, by `scaled_dot_product_attention`.

    queries (B, Lq, d), keys (B, Lk, d), values (B, Lk, dv) -> (B, Lq, dv). Run as one head of a
    4-D call (CUDA's fused kernels take only 4-D inputs) with `scale` explicit, never SDPA's default
    1/sqrt(d): `numerics="iccv"` has scale 1. Rows are made unit-stride (a copy only where they are
    not: `TokenLinear`'s transposed few-row outputs, NCHW pixel rows), which the CPU kernel needs.
    MACs: B Lq Lk (d + dv), the reference form's two matmuls.
    """
    q, k, v = (unit_stride_rows(t).unsqueeze(1) for t in (queries, keys, values))
    return F.scaled_dot_product_attention(q, k, v, scale=scale).squeeze(1)
