"""Token-space transformers on tokens (B, L, C_T): `paper`, `mhsa` and `none` (Table 5's no-op).

Layout: tokens are token-major, (B, L, C_T), the paper's row layout T in R^{L x C_T}, so every
per-token weight is a right-multiplied matrix applied by `nn.Linear`: one GEMM over all B*L token
rows of the batch. (As channels-first 1x1 `Conv1d`s on (B, C_T, L) they ran as B skinny GEMMs of
L = 16 columns each, 81 % of the VT stage's CPU time; see results/speed_cpu/FINDINGS.md.) K and Q
stay two projections: fusing them into one was measured slower.

`paper` is the ICCV equations (section 3.2, eqs. 3-4) at the appendix's widths:
    T'_out = T_in + softmax_L((T_in K)(T_in Q)^T / sqrt(d)) T_in
    T_out  = T'_out + relu(T'_out F1) F2
no heads, no value projection, no normalisation, no biases. The 1/sqrt(d) on the logits and the
init of K and Q are the appendix's numerics (`numerics="centered"`, the default, or `"appendix"`: the same here; see
`models.layers.NUMERICS`); `numerics="iccv"` drops both and is eq. 3 as printed. The equations give
K, Q in R^{C x C}; their output width d (`qk_channels`) is an open choice, default C_T / 2 as in the
appendix transcription (this is what brings VT-ResNet-18/34 onto Tables 2 and 8; see
results/fidelity). F1 is C_T x `ff_channels`, F2 is `ff_channels` x C_T.

`mhsa` is the appendix reading: grouped projections for key, query and value (`groups`; the
appendix's grouped 1x1 convolutions, here `GroupedLinear`, a block-diagonal weight applied as one
batched matmul over the groups),
key/query of `qk_channels` (default C_T / 2), `heads` heads with 1/sqrt(d_head) scaling via
`scaled_dot_product_attention`, and a feed-forward that is either one C_T x C_T convolution
(`ff_channels=None`, the transcription's `tokens + ff_conv(tokens)`) or relu(T F1) F2.

`attention_impl` (`models.layers.ATTENTION_IMPLS`): `reference` writes `paper`'s attention out
(bmm, softmax, bmm); `sdpa` runs it through `scaled_dot_product_attention` with the numerics' scale
explicit. `mhsa` runs SDPA in both forms; `sdpa` passes its 1/sqrt(d_head) explicitly and gives the
fused kernels unit-stride rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import (DEFAULT_ATTENTION_IMPL, DEFAULT_NUMERICS, attend, check_attention_impl, check_numerics,
                           is_scaled, logit_scale, token_linear, unit_stride_rows, uses_sdpa)
from models.init import init_projection


class PaperTransformer(nn.Module):
    """The ICCV token-space transformer (eqs. 3-4) at appendix widths: attention without values, a ReLU MLP.

    Args:
        channels: token channels C_T.
        qk_channels: output width d of K and Q (default C_T // 2, the appendix's width).
        ff_channels: hidden width of the feed-forward F1/F2 (default C_T).
        numerics: `centered` or `appendix` (the same here: logits / sqrt(d), unit-gain K and Q) or `iccv`
            (eq. 3 as printed).
        attention_impl: `reference`, `sdpa` or `fused` (`models.layers.ATTENTION_IMPLS`).
    """

    def __init__(self, channels: int, qk_channels: int | None = None, ff_channels: int | None = None,
                 numerics: str = DEFAULT_NUMERICS, attention_impl: str = DEFAULT_ATTENTION_IMPL):
        super().__init__()
        qk = qk_channels or channels // 2
        ff = ff_channels or channels
        self.scale = logit_scale(qk, check_numerics(numerics))
        self.attention_impl = check_attention_impl(attention_impl)
        # Right-multiplied weights on token rows (nn.Linear stores them transposed): one GEMM over B*L rows.
        self.key = token_linear(channels, qk)  # K
        self.query = token_linear(channels, qk)  # Q
        self.ff1 = token_linear(channels, ff)  # F1
        self.ff2 = token_linear(ff, channels)  # F2
        if is_scaled(numerics):
            for weight in (self.key.weight, self.query.weight):
                init_projection(weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, C_T) -> (B, L, C_T)."""
        k, q = self.key(tokens), self.query(tokens)  # (B, L, d): T K and T Q
        if uses_sdpa(self.attention_impl):  # SDPA's queries are T K and its keys T Q: row i dots (T K)_i with (T Q)_j
            tokens = tokens + attend(k, q, tokens, self.scale)
        else:
            scores = torch.bmm(k, q.transpose(1, 2)) * self.scale  # (B, L, L): [i, j] = (T K)_i . (T Q)_j
            attention = scores.softmax(dim=-1)  # softmax_L over j
            tokens = tokens + torch.bmm(attention, tokens)  # T_in + A T_in (eq. 3)
        return tokens + self.ff2(F.relu(self.ff1(tokens)))  # eq. 4


class MHSATransformer(nn.Module):
    """Appendix-style multi-head self-attention over tokens with grouped 1x1 projections.

    Args:
        channels: token channels C_T.
        heads: attention heads (default 16).
        qk_channels: key/query width (default C_T // 2).
        groups: groups of the key, query and value projections (default 8).
        ff_channels: None for one C_T x C_T feed-forward layer (appendix), or the hidden
            width of relu(T F1) F2.
        attention_impl: `reference`, `sdpa` or `fused` (`models.layers.ATTENTION_IMPLS`; SDPA in both, see
            the module docstring).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 16,
        qk_channels: int | None = None,
        groups: int = 8,
        ff_channels: int | None = None,
        attention_impl: str = DEFAULT_ATTENTION_IMPL,
    ):
        super().__init__()
        qk = qk_channels or channels // 2
        for width in (qk, channels):
            if width % heads or width % groups:
                raise ValueError(f"width {width} must be divisible by heads={heads} and groups={groups}")
        self.heads = heads
        self.scale = (qk // heads) ** -0.5  # the appendix's 1/sqrt(d_head), whatever `numerics` says
        self.attention_impl = check_attention_impl(attention_impl)
        self.key = token_linear(channels, qk, groups)
        self.query = token_linear(channels, qk, groups)
        self.value = token_linear(channels, channels, groups)
        if ff_channels is None:
            self.ff = token_linear(channels, channels, bias=True)
        else:
            self.ff = nn.Sequential(
                token_linear(channels, ff_channels, bias=True),
                nn.ReLU(inplace=True),
                token_linear(ff_channels, channels, bias=True),
            )

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, h * d) -> (B, h, L, d)."""
        b, n, c = t.shape
        return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, C_T) -> (B, L, C_T)."""
        b, n, c = tokens.shape
        q, k, v = self._split(self.query(tokens)), self._split(self.key(tokens)), self._split(self.value(tokens))
        if uses_sdpa(self.attention_impl):
            q, k, v = (unit_stride_rows(t) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, d_v), scaled by 1/sqrt(d_qk / h)
        tokens = tokens + out.transpose(1, 2).reshape(b, n, c)
        return tokens + self.ff(tokens)
