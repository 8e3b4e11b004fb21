"""Token-space transformers on tokens (B, C_T, L): `paper`, `mhsa` and `none` (Table 5's no-op).

`paper` follows the ICCV equations (section 3.2) exactly:
    T'_out = T_in + softmax_L((T_in K)(T_in Q)^T) T_in
    T_out  = T'_out + relu(T'_out F1) F2
no heads, no value projection, no normalisation, no 1/sqrt(d) scaling, no biases. The equations give
K, Q in R^{C x C}; their output width (`qk_channels`) is an open choice, default C_T / 2 as in the
appendix transcription (this is what brings VT-ResNet-18/34 onto Tables 2 and 8; see
results/fidelity). F1 is C_T x `ff_channels`, F2 is `ff_channels` x C_T.

`mhsa` is the appendix reading: grouped 1x1 convolutions for key, query and value (`groups`),
key/query of `qk_channels` (default C_T / 2), `heads` heads with 1/sqrt(d_head) scaling via
`scaled_dot_product_attention`, and a feed-forward that is either one C_T x C_T convolution
(`ff_channels=None`, the transcription's `tokens + ff_conv(tokens)`) or relu(T F1) F2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TRANSFORMERS = ("paper", "mhsa", "none")


class PaperTransformer(nn.Module):
    """The ICCV token-space transformer (eqs. 3-4): one softmax attention without values, a ReLU MLP.

    Args:
        channels: token channels C_T.
        qk_channels: output width of K and Q (default C_T // 2).
        ff_channels: hidden width of the feed-forward F1/F2 (default C_T).
    """

    def __init__(self, channels: int, qk_channels: int | None = None, ff_channels: int | None = None):
        super().__init__()
        qk = qk_channels or channels // 2
        ff = ff_channels or channels
        self.key = nn.Conv1d(channels, qk, 1, bias=False)  # K
        self.query = nn.Conv1d(channels, qk, 1, bias=False)  # Q
        self.ff1 = nn.Conv1d(channels, ff, 1, bias=False)  # F1
        self.ff2 = nn.Conv1d(ff, channels, 1, bias=False)  # F2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C_T, L) -> (B, C_T, L)."""
        k, q = self.key(tokens), self.query(tokens)  # (B, d, L)
        scores = torch.bmm(k.transpose(1, 2), q)  # (B, L, L): [i, j] = (T K)_i . (T Q)_j
        attention = scores.softmax(dim=-1)  # softmax_L over j
        tokens = tokens + torch.bmm(tokens, attention.transpose(1, 2))  # T_in + A T_in (eq. 3)
        return tokens + self.ff2(F.relu(self.ff1(tokens)))  # eq. 4


class MHSATransformer(nn.Module):
    """Appendix-style multi-head self-attention over tokens with grouped 1x1 projections.

    Args:
        channels: token channels C_T.
        heads: attention heads (default 16).
        qk_channels: key/query width (default C_T // 2).
        groups: groups of the key, query and value 1x1 convolutions (default 8).
        ff_channels: None for one C_T x C_T feed-forward convolution (appendix), or the hidden
            width of relu(T F1) F2.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 16,
        qk_channels: int | None = None,
        groups: int = 8,
        ff_channels: int | None = None,
    ):
        super().__init__()
        qk = qk_channels or channels // 2
        for width in (qk, channels):
            if width % heads or width % groups:
                raise ValueError(f"width {width} must be divisible by heads={heads} and groups={groups}")
        self.heads = heads
        self.key = nn.Conv1d(channels, qk, 1, groups=groups, bias=False)
        self.query = nn.Conv1d(channels, qk, 1, groups=groups, bias=False)
        self.value = nn.Conv1d(channels, channels, 1, groups=groups, bias=False)
        if ff_channels is None:
            self.ff = nn.Conv1d(channels, channels, 1)
        else:
            self.ff = nn.Sequential(
                nn.Conv1d(channels, ff_channels, 1), nn.ReLU(inplace=True), nn.Conv1d(ff_channels, channels, 1)
            )

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, h * d, L) -> (B, h, L, d)."""
        b, c, n = t.shape
        return t.view(b, self.heads, c // self.heads, n).transpose(2, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C_T, L) -> (B, C_T, L)."""
        b, c, n = tokens.shape
        q, k, v = self._split(self.query(tokens)), self._split(self.key(tokens)), self._split(self.value(tokens))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, d_v), scaled by 1/sqrt(d_qk / h)
        tokens = tokens + out.transpose(2, 3).reshape(b, c, n)
        return tokens + self.ff(tokens)


def make_transformer(kind: str, channels: int, **kwargs) -> nn.Module:
    """Build a token-space transformer by name (`paper`, `mhsa`, `none`)."""
    if kind == "paper":
        return PaperTransformer(channels, qk_channels=kwargs.get("qk_channels"), ff_channels=kwargs.get("ff_channels"))
    if kind == "mhsa":
        return MHSATransformer(channels, **kwargs)
    if kind == "none":
        return nn.Identity()  # Table 5: no token-space operation
    raise ValueError(f"unknown transformer {kind!r}; choose from {', '.join(TRANSFORMERS)}")
