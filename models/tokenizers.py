"""Tokenizers: a feature map X (B, C, H, W) -> L visual tokens (B, L, C_T) and their attention (B, L, HW).

Tokens are token-major, (B, L, C_T), the paper's row layout T in R^{L x C_T}: every per-token weight
(the adapter W_{C->C_T}, W_{T->R}) is an `nn.Linear`, one GEMM over all B*L token rows of the batch
instead of B skinny per-sample GEMMs of L columns (the channels-first `Conv1d` layout, measured
slow on CPU: results/speed_cpu/FINDINGS.md). Per-pixel weights (W_A) stay 1x1 `Conv2d`s on the
NCHW feature map as it arrives from the ResNet: measured as fast as a matmul there, and no copy.

Paper (ICCV text, section 3.1):
- filter-based:   T = softmax_HW(X W_A)^T X,          W_A in R^{C x L}
- recurrent:      W_R = T_in W_{T->R};  T = softmax_HW(X W_R)^T X
- pooling-based:  the feature map average-pooled to L cells (Table 3 baseline)
- clustering:     k-means on L2-normalised pixels; the centroids serve as W_A (Appendix C)

The filter-based and recurrent tokenizers are attention with L queries over the HW pixels (keys and
values); `attention_impl="sdpa"` runs them through `scaled_dot_product_attention` and
`attention_impl="fused"` through the op `vtbench::token_attention` (a Triton kernel on CUDA,
`models.kernels.token_attention`) (`models.layers.ATTENTION_IMPLS`), with the same weights, MACs and
tokens, and then return no attention map (None): the fused kernels never form it. The pooling and
clustering tokenizers take the option and run as they are.

Bias terms are left out of the coefficient convolutions on purpose: a per-token constant added to
the logits is cancelled by the softmax over HW, so a bias there would be a parameter doing no work.
When C_T != C a token-channel adapter `W_{C->C_T}` (a 1x1 conv on the L tokens) maps the pixel
average into token space; the ICCV equations have C_T = C and no adapter, the appendix has one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.init import ADAPTER_GAIN, CENTERED_RECURRENT_GAIN, RECURRENT_GAIN, init_projection, init_query_vectors
from models.layers import (DEFAULT_ATTENTION_IMPL, DEFAULT_NUMERICS, attend, check_attention_impl, check_numerics,
                           inverse_pixel_rms, is_scaled, logit_scale, pixel_rows, token_deviations, token_linear)
from models.kernels import token_attention


class Tokenizer(nn.Module):
    """Base class: `forward(x, tokens_in=None) -> (tokens (B, L, C_T), attention (B, L, HW) or None)`.

    The attention is None only under `attention_impl="sdpa"` or `"fused"` (filter-based and recurrent tokenizers).
    """

    recurrent: bool = False

    def __init__(self, in_channels: int, token_channels: int, num_tokens: int, numerics: str = DEFAULT_NUMERICS,
                 attention_impl: str = DEFAULT_ATTENTION_IMPL):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.in_channels = in_channels
        self.token_channels = token_channels
        self.num_tokens = num_tokens
        self.numerics = check_numerics(numerics)
        self.attention_impl = check_attention_impl(attention_impl)
        # W_{C->C_T}: only when the token channel differs from the feature channel; a per-token
        # weight, so nn.Linear on token rows (one GEMM over B*L rows).
        self.adapter = (
            token_linear(in_channels, token_channels) if token_channels != in_channels else None
        )
        if self.adapter is not None and is_scaled(numerics):
            init_projection(self.adapter.weight, ADAPTER_GAIN)

    def _aggregate(self, x_flat: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over HW, then T = A X (eq. 1); x_flat (B, C, HW), logits (B, L, HW)."""
        attention = logits.softmax(dim=-1)
        tokens = torch.bmm(attention, x_flat.transpose(1, 2))  # (B, L, C): each token a pixel average
        if self.adapter is not None:
            tokens = self.adapter(tokens)
        return tokens, attention

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The attention form of `_aggregate`: softmax_HW(queries keys^T * scale) values, then the adapter."""
        tokens = attend(queries, keys, values, self.scale)  # (B, L, C)
        return self._adapt(tokens)

    def _attend_fused(self, queries: torch.Tensor, x: torch.Tensor, key_scale: torch.Tensor | None = None):
        """`_attend` through `vtbench::token_attention`: keys and values are the pixels of `x`, read once.

        `x.flatten(2).transpose(1, 2)` is a view of either layout (the kernel takes any strides), so an
        NCHW map is not copied; `key_scale` (B, HW) scales the logits of each pixel (`centered`).
        """
        tokens = token_attention(queries, x.flatten(2).transpose(1, 2), self.scale, key_scale)  # (B, L, C)
        return self._adapt(tokens)

    def _adapt(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.adapter(tokens) if self.adapter is not None else tokens


class FilterTokenizer(Tokenizer):
    """Filter-based tokenizer, T = softmax_HW(X W_A)^T X (ICCV eq. 1).

    Args:
        in_channels: feature channels C.
        token_channels: token channels C_T (an adapter C -> C_T is added when they differ).
        num_tokens: number of tokens L.
        numerics: `centered` or `appendix` (logits / sqrt(C), W_A of gain `FILTER_GAIN`; the two
            are the same here) or `iccv` (eq. 1 as printed); see `models.layers.NUMERICS`.
        attention_impl: `reference`, `sdpa` or `fused` (`models.layers.ATTENTION_IMPLS`).
    """

    def __init__(self, in_channels: int, token_channels: int, num_tokens: int, numerics: str = DEFAULT_NUMERICS,
                 attention_impl: str = DEFAULT_ATTENTION_IMPL):
        super().__init__(in_channels, token_channels, num_tokens, numerics, attention_impl)
        self.w_a = nn.Conv2d(in_channels, num_tokens, 1, bias=False)  # W_A in R^{C x L}
        self.scale = logit_scale(in_channels, numerics)
        if is_scaled(numerics):
            init_query_vectors(self.w_a.weight)

    def forward(self, x: torch.Tensor, tokens_in: torch.Tensor | None = None):
        """Tokens and attention of feature map `x`; `tokens_in` is ignored."""
        if self.attention_impl == "sdpa":
            return self._forward_sdpa(x), None
        if self.attention_impl == "fused":
            return self._attend_fused(self._queries(x.shape[0]), x), None
        logits = self.w_a(x).flatten(2) * self.scale  # (B, L, HW)
        return self._aggregate(x.flatten(2), logits)

    def _forward_sdpa(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1 as attention: W_A's L rows are the queries (shared by the batch), the pixels keys and values."""
        pixels = pixel_rows(x)  # (B, HW, C); a view of a channels_last map
        return self._attend(self._queries(x.shape[0]), pixels, pixels)

    def _queries(self, batch: int) -> torch.Tensor:
        """W_A's L rows as queries (B, L, C), shared by the batch (an expanded view, batch stride 0)."""
        return self.w_a.weight.view(1, self.num_tokens, self.in_channels).expand(batch, -1, -1)


class RecurrentTokenizer(Tokenizer):
    """Recurrent tokenizer, W_R = T_in W_{T->R}, T = softmax_HW(X W_R)^T X (ICCV eq. 2).

    Args:
        in_channels: feature channels C.
        token_channels: token channels C_T of both incoming and outgoing tokens.
        num_tokens: number of tokens L (of the incoming tokens when `refresh="all"`).
        refresh: "all" (ICCV: every token recomputed) or "half" (appendix transcription: the first
            half of the incoming tokens drive the new ones, the second half is kept as is).
        numerics: `centered` (the default: filters from the incoming tokens' deviations from their
            mean at unit RMS, `models.layers.token_deviations`, dotted with the pixels at unit RMS,
            `models.layers.inverse_pixel_rms`: a QK-normalised attention whose temperature is W_{T->R}'s
            scale, `CENTERED_RECURRENT_GAIN` at init; logits / sqrt(C)), `appendix`
            (logits / sqrt(C), W_{T->R} of gain `RECURRENT_GAIN` on the tokens as they come) or
            `iccv` (eq. 2 as printed); see `models.layers.NUMERICS`.
        attention_impl: `reference`, `sdpa` or `fused` (`models.layers.ATTENTION_IMPLS`).
    """

    recurrent = True

    def __init__(self, in_channels: int, token_channels: int, num_tokens: int, refresh: str = "all",
                 numerics: str = DEFAULT_NUMERICS, attention_impl: str = DEFAULT_ATTENTION_IMPL):
        super().__init__(in_channels, token_channels, num_tokens, numerics, attention_impl)
        if refresh not in ("all", "half"):
            raise ValueError(f"refresh must be 'all' or 'half', got {refresh!r}")
        if refresh == "half" and num_tokens < 2:
            raise ValueError("refresh='half' needs num_tokens >= 2")
        self.refresh = refresh
        self.w_tr = token_linear(token_channels, in_channels)  # W_{T->R} in R^{C_T x C}, per token
        self.scale = logit_scale(in_channels, numerics)
        if is_scaled(numerics):
            init_projection(self.w_tr.weight, CENTERED_RECURRENT_GAIN if numerics == "centered" else RECURRENT_GAIN)

    def forward(self, x: torch.Tensor, tokens_in: torch.Tensor | None = None):
        """Tokens and attention of `x`, conditioned on `tokens_in` (B, L, C_T)."""
        if tokens_in is None:
            raise ValueError("a recurrent tokenizer needs the previous module's tokens")
        kept = None
        if self.refresh == "half":
            n = tokens_in.shape[1] // 2
            tokens_in, kept = tokens_in[:, :n], tokens_in[:, n:]
        centered = self.numerics == "centered"
        drivers = token_deviations(tokens_in) if centered else tokens_in
        w_r = self.w_tr(drivers)  # (B, L', C) = T_in W_{T->R}: one filter per token, from the tokens
        if self.attention_impl == "sdpa":
            tokens, attention = self._tokens_sdpa(x, w_r, centered), None
        elif self.attention_impl == "fused":  # `centered`'s key scale goes to the kernel, applied to the logits
            key_scale = inverse_pixel_rms(x.flatten(2)).squeeze(1) if centered else None  # (B, HW)
            tokens, attention = self._attend_fused(w_r, x, key_scale), None
        else:
            x_flat = x.flatten(2)
            logits = torch.bmm(w_r, x_flat) * self.scale  # (B, L', HW) = (X W_R)^T
            if centered:  # keys are the pixels at unit RMS; the values averaged stay the pixels as they are
                logits = logits * inverse_pixel_rms(x_flat)
            tokens, attention = self._aggregate(x_flat, logits)
        if kept is not None:
            tokens = torch.cat([kept, tokens], dim=1)
        return tokens, attention

    def _tokens_sdpa(self, x: torch.Tensor, filters: torch.Tensor, centered: bool) -> torch.Tensor:
        """Eq. 2 as attention: the filters W_R are the queries, the pixels keys and values.

        Under `centered` the keys are the pixels at unit RMS (the reference form's per-pixel factor on
        the logits, moved onto the keys: an element-wise product, no MAC), the values the pixels as
        they are.
        """
        pixels = pixel_rows(x)  # (B, HW, C)
        keys = pixels * inverse_pixel_rms(pixels, dim=-1) if centered else pixels
        return self._attend(filters, keys, pixels)


class PoolingTokenizer(Tokenizer):
    """Pooling-based tokenizer: X average-pooled to an h x w grid of L = h*w cells (Table 3).

    Args:
        in_channels: feature channels C.
        token_channels: token channels C_T.
        num_tokens: number of tokens L, split into the most square grid h x w (h <= w).
    """

    def __init__(self, in_channels: int, token_channels: int, num_tokens: int, numerics: str = DEFAULT_NUMERICS,
                 attention_impl: str = DEFAULT_ATTENTION_IMPL):
        super().__init__(in_channels, token_channels, num_tokens, numerics, attention_impl)
        h = int(math.isqrt(num_tokens))
        while num_tokens % h:
            h -= 1
        self.grid = (h, num_tokens // h)

    def forward(self, x: torch.Tensor, tokens_in: torch.Tensor | None = None):
        """Tokens (cell averages) and the pooling weights as the attention."""
        b = x.shape[0]
        tokens = F.adaptive_avg_pool2d(x, self.grid).flatten(2).transpose(1, 2)  # (B, L, C)
        if self.adapter is not None:
            tokens = self.adapter(tokens)
        attention = _pooling_matrix(x.shape[-2], x.shape[-1], self.grid, x)
        return tokens, attention.unsqueeze(0).expand(b, -1, -1)


def _pooling_matrix(height: int, width: int, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """(L, HW) weights of adaptive average pooling: the Kronecker product of two 1-D poolings."""
    rows = _pool_1d(height, grid[0], like)  # (h, H)
    cols = _pool_1d(width, grid[1], like)  # (w, W)
    return torch.einsum("ay,bx->abyx", rows, cols).reshape(grid[0] * grid[1], height * width)


def _pool_1d(size: int, cells: int, like: torch.Tensor) -> torch.Tensor:
    """(cells, size) matrix of 1-D adaptive average pooling (PyTorch's start/end rule)."""
    eye = torch.eye(size, dtype=like.dtype, device=like.device).unsqueeze(0)  # (1, size, size)
    return F.adaptive_avg_pool1d(eye, cells)[0].t()


class ClusteringTokenizer(Tokenizer):
    """Clustering-based tokenizer: per-sample k-means centroids used as W_A (Appendix C).

    K-means runs on the L2-normalised pixels of each sample separately (so a sample's tokens never
    depend on its batch), spherical (cosine) assignment, a fixed number of Lloyd iterations and a
    deterministic initialisation: L pixels evenly spaced in raster order. An empty cluster keeps its
    previous centroid. The centroids are detached (k-means is not differentiated through); the
    gradient flows through X in both the logits X W_A and the pixel average, as for the filter
    tokenizer. No learned weights apart from the optional C -> C_T adapter.

    Args:
        in_channels: feature channels C.
        token_channels: token channels C_T.
        num_tokens: number of tokens L (clusters).
        iters: Lloyd iterations (default 3).
    """

    def __init__(self, in_channels: int, token_channels: int, num_tokens: int, iters: int = 3,
                 numerics: str = DEFAULT_NUMERICS, attention_impl: str = DEFAULT_ATTENTION_IMPL):
        super().__init__(in_channels, token_channels, num_tokens, numerics, attention_impl)
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.iters = iters

    def forward(self, x: torch.Tensor, tokens_in: torch.Tensor | None = None):
        """Tokens and attention with W_A = the k-means centroids of `x`'s pixels."""
        x_flat = x.flatten(2)  # (B, C, HW)
        centroids = kmeans_centroids(x_flat.detach(), self.num_tokens, self.iters)  # (B, L, C)
        logits = torch.bmm(centroids, x_flat)  # (B, L, HW) = (X W_A)^T with W_A = centroids^T
        return self._aggregate(x_flat, logits)


def kmeans_centroids(x_flat: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Spherical k-means per sample on (B, C, N) pixels; returns unit-norm centroids (B, k, C)."""
    pixels = F.normalize(x_flat, dim=1)  # (B, C, N), L2-normalised pixels
    n = pixels.shape[-1]
    init = torch.linspace(0, n - 1, k, device=pixels.device).round().long()
    centroids = pixels[..., init].transpose(1, 2)  # (B, k, C): evenly spaced pixels
    for _ in range(iters):
        assign = torch.bmm(centroids, pixels).argmax(dim=1)  # (B, N): nearest centroid by cosine
        onehot = F.one_hot(assign, k).to(pixels.dtype)  # (B, N, k)
        sums = torch.bmm(pixels, onehot).transpose(1, 2)  # (B, k, C)
        counts = onehot.sum(dim=1).unsqueeze(-1)  # (B, k, 1)
        updated = F.normalize(sums, dim=-1)
        centroids = torch.where(counts > 0, updated, centroids)
    return centroids
