"""Per-token weights on token-major tokens (B, L, C): `nn.Linear` and its grouped variant.

Tokens are (B, L, C), the paper's row layout, so a per-token weight is one GEMM over all B*L token
rows of the batch (`nn.Linear`); the former channels-first 1x1 `Conv1d` on (B, C, L) ran B skinny
per-sample GEMMs of L columns, 81 % of the VT stage's CPU time (results/speed_cpu/FINDINGS.md).

State dicts saved with that earlier layout still load: a 1x1 `Conv1d` weight (C_out, C_in, 1)
becomes the `nn.Linear` weight (C_out, C_in), a grouped one the `GroupedLinear` blocks.
"""

from __future__ import annotations

import torch
from torch import nn

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
    layer = nn.Linear(in_features, out_features, bias=bias)
    layer._register_load_state_dict_pre_hook(_from_conv1d_weight)
    return layer


def _from_conv1d_weight(state_dict, prefix, *args) -> None:
    """Load a 1x1 `Conv1d` weight of the earlier channels-first token layout (C_out, C_in, 1)."""
    weight = state_dict.get(prefix + "weight")
    if weight is not None and weight.dim() == 3 and weight.shape[-1] == 1:
        state_dict[prefix + "weight"] = weight.squeeze(-1)  # (C_out, C_in): nn.Linear's layout


NUMERICS = ("appendix", "iccv")
"""How the VT module's softmax logits are scaled and its token-space weights initialised.

- `appendix` (the default, the one that trains): every attention logit is divided by sqrt(d), d the
  width of the dot product it comes from, as in the arXiv appendix (and in every transformer since
  Vaswani et al.); the token-space weights get the documented init of `models.init` (attention
  weights of unit gain, a small classifier), so that no softmax is saturated at step 0.
- `iccv`: the ICCV equations (1-5) taken literally, no scaling, PyTorch's default init. At 224x224
  this collapses the recurrent tokenizers of VT-ResNet-34/50/101 onto one pixel and leaves their
  K, Q and W_{T->R} without gradient (tests/test_init_health.py shows it); kept to reproduce the
  equations as printed.
"""


def check_numerics(numerics: str) -> str:
    """Validate a `numerics` choice (`appendix` or `iccv`)."""
    if numerics not in NUMERICS:
        raise ValueError(f"unknown numerics {numerics!r}; choose from {', '.join(NUMERICS)}")
    return numerics


def logit_scale(width: int, numerics: str) -> float:
    """The factor on a softmax's logits: 1/sqrt(width) (`appendix`) or 1 (`iccv`, the equations as printed)."""
    return width ** -0.5 if check_numerics(numerics) == "appendix" else 1.0
