"""Projector: tokens back onto the feature map (ICCV section 3.3).

    X_out = X_in + softmax_L((X_in W_Q)(T W_K)^T) T

W_Q acts on every pixel (C -> d), W_K on every token (C_T -> d); d = `channels` (the equations'
C x C gives d = C). When C_T != C the tokens are brought to C channels by a value map
W_V (C_T -> C), which the ICCV equations do not need (they have C_T = C) and the appendix has.
`groups` makes W_Q a grouped 1x1 convolution (appendix reading), the only per-pixel weight here.

Layouts: the feature map stays NCHW and W_Q a 1x1 `Conv2d` on it (measured as fast as a matmul on
CPU, and no layout copy); tokens are (B, L, C_T), so W_K and W_V are `nn.Linear`s, one GEMM over
all B*L token rows.

`attention_impl="sdpa"` (and `"fused"`: `models.layers.ATTENTION_IMPLS`) runs eq. 5 as cross-attention through
`scaled_dot_product_attention`: the HW pixels X W_Q are the queries, the L tokens T W_K the keys,
the tokens (or T W_V) the values, softmax over L, the numerics' scale explicit. Its (B, HW, C)
output is added to the map as a channels_last-strided view (no copy back to NCHW).
"""

from __future__ import annotations

import torch
from torch import nn

from models.init import VALUE_GAIN, init_projection
from models.layers import (DEFAULT_ATTENTION_IMPL, DEFAULT_NUMERICS, PixelConv, attend, check_attention_impl,
                           check_numerics, is_scaled, logit_scale, token_linear, uses_sdpa)


class Projector(nn.Module):
    """Residual cross-attention from pixels (queries) to tokens (keys and values).

    Args:
        in_channels: feature channels C.
        token_channels: token channels C_T.
        channels: query/key width d (default C).
        groups: groups of the per-pixel query convolution W_Q (default 1).
        numerics: `centered` (the default: `appendix`, and without a value map the tokens' deviations
            from their mean are added, `models.layers.NUMERICS` step 2), `appendix` (logits / sqrt(d),
            unit-gain W_Q and W_K, W_V of gain `VALUE_GAIN`) or `iccv` (eq. 5 as printed).
        attention_impl: `reference` (attention written out) or `sdpa` (`models.layers.ATTENTION_IMPLS`).
    """

    def __init__(self, in_channels: int, token_channels: int, channels: int | None = None, groups: int = 1,
                 numerics: str = DEFAULT_NUMERICS, attention_impl: str = DEFAULT_ATTENTION_IMPL):
        super().__init__()
        self.attention_impl = check_attention_impl(attention_impl)
        d = channels or in_channels
        if in_channels % groups or d % groups:
            raise ValueError(f"projector groups={groups} must divide C={in_channels} and d={d}")
        self.w_q = PixelConv(in_channels, d, groups)  # W_Q, a (grouped) 1x1 convolution
        self.w_k = token_linear(token_channels, d)  # W_K, per token
        self.w_v = token_linear(token_channels, in_channels) if token_channels != in_channels else None
        self.scale = logit_scale(d, check_numerics(numerics))
        self.center_values = numerics == "centered" and self.w_v is None
        if is_scaled(numerics):
            init_projection(self.w_q.weight)
            init_projection(self.w_k.weight)
            if self.w_v is not None:
                init_projection(self.w_v.weight, VALUE_GAIN)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), tokens (B, L, C_T) -> (B, C, H, W)."""
        if uses_sdpa(self.attention_impl):
            return self._forward_sdpa(x, tokens)
        q = self.w_q(x).flatten(2)  # (B, d, HW) = (X W_Q)^T
        k = self.w_k(tokens)  # (B, L, d) = T W_K
        attention = (torch.bmm(k, q) * self.scale).softmax(dim=1)  # (B, L, HW), softmax over L
        values = self.w_v(tokens) if self.w_v is not None else tokens  # (B, L, C)
        if self.center_values:  # the mean token would reach every pixel alike (NUMERICS, step 2)
            values = values - values.mean(dim=1, keepdim=True)
        return x + torch.bmm(values.transpose(1, 2), attention).view_as(x)  # (A^T T)^T, NCHW

    def _forward_sdpa(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Eq. 5 as cross-attention: pixel queries X W_Q, token keys T W_K, the values as in `forward`."""
        b, c, h, w = x.shape
        queries = self.w_q(x).flatten(2).transpose(1, 2)  # (B, HW, d); a view of a channels_last map
        values = self.w_v(tokens) if self.w_v is not None else tokens  # (B, L, C)
        if self.center_values:
            values = values - values.mean(dim=1, keepdim=True)
        out = attend(queries, self.w_k(tokens), values, self.scale)  # (B, HW, C), softmax over the L tokens
        return x + out.transpose(1, 2).view(b, c, h, w)  # a channels_last-strided view of the rows
