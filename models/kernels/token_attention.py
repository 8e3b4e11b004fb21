"""The tokenizers' attention as one fused op: `vtbench::token_attention`.

For each sample b and query l (ICCV eq. 1 and 2, the filter and recurrent tokenizers):

    out[b, l, :] = sum_p softmax_p(scale * key_scale[b, p] * <q[b, l, :], x[b, p, :]>) * x[b, p, :]

The keys and the values are the same pixel rows x (B, HW, C); `key_scale` is the per-pixel inverse
RMS that `numerics="centered"` applies to the keys only (`models.layers.inverse_pixel_rms`), None
otherwise. Why a kernel of its own: on a GPU these are attention steps with only L = 8-16 queries
and a head width equal to the map's channels C (256-1024 on VT-ResNet stage 4); the flash kernels
of `scaled_dot_product_attention` take head widths <= 256 only, so at C = 1024 SDPA falls back to a
chain of small kernels, and SDPA needs the keys scaled into a copy of the map under `centered`.
Here keys and values are read once from the same rows, the key scale is applied to the logits, and
the softmax runs online over blocks of pixels (flash-attention style), in fp32.

The op has three implementations: a fake (meta) one for tracing and `torch.compile`, the reference
math on every device (the CPU path: a CPU model in the fused form runs, traces and is counted), and
on CUDA a Triton kernel. The backward is the reference math's gradient, recomputed from the inputs
(`_backward`): training in the fused form works and gives the reference gradients, at the price of
materialising the (B, L, HW) attention in the backward, which is small for the tokenizers (L <= 16).
MACs: B L HW C for the logits plus B L HW C for the weighted sum, the reference form's two matmuls,
registered for torch's FlopCounterMode here and for fvcore in `bench.measure.complexity`.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch.utils.flop_counter import register_flop_formula

try:  # Triton ships with CUDA builds of torch; without it the op runs its reference math everywhere.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - a torch build without triton
    triton = None

LOW_PRECISION = (torch.float16, torch.bfloat16)


def reference_token_attention(queries: torch.Tensor, pixels: torch.Tensor, key_scale: Optional[torch.Tensor],
                              scale: float) -> torch.Tensor:
    """softmax_HW(scale * key_scale * queries pixels^T) pixels, written out; fp32 math for fp16/bf16 inputs.

    queries (B, L, C), pixels (B, HW, C), key_scale (B, HW) or None -> (B, L, C) in the pixels' dtype.
    """
    q, x = _compute_dtype(queries), _compute_dtype(pixels)
    attention = _attention(q, x, key_scale, scale)
    return torch.bmm(attention, x).to(pixels.dtype)


def _compute_dtype(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 as fp32 (the kernel accumulates in fp32); fp32/fp64 as they are."""
    return t.float() if t.dtype in LOW_PRECISION else t


def _attention(q: torch.Tensor, x: torch.Tensor, key_scale: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """The (B, L, HW) softmax over the pixels."""
    return _logits(q, x, key_scale, scale).softmax(dim=-1)


def _logits(q: torch.Tensor, x: torch.Tensor, key_scale: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    logits = torch.bmm(q, x.transpose(1, 2)) * scale  # (B, L, HW)
    return logits if key_scale is None else logits * key_scale.to(logits.dtype).unsqueeze(1)


# ----------------------------------------------------------------------------------------- the op -----

@torch.library.custom_op("vtbench::token_attention", mutates_args=())
def token_attention_op(queries: torch.Tensor, pixels: torch.Tensor, key_scale: Optional[torch.Tensor],
                       scale: float) -> torch.Tensor:
    """The reference math (every device without a kernel of its own; see the module docstring)."""
    return reference_token_attention(queries, pixels, key_scale, scale)


@token_attention_op.register_fake
def _fake(queries, pixels, key_scale, scale):
    return pixels.new_empty(queries.shape)


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@token_attention_op.register_kernel("cuda")
def _cuda(queries, pixels, key_scale, scale):
    if triton is None or pixels.dtype not in KERNEL_DTYPES:  # float64 (gradcheck) takes the reference math
        return reference_token_attention(queries, pixels, key_scale, scale)
    return triton_token_attention(queries, pixels, key_scale, scale)


def _setup_context(ctx, inputs, output) -> None:
    queries, pixels, key_scale, scale = inputs
    ctx.save_for_backward(queries, pixels, key_scale)
    ctx.scale = scale


def _backward(ctx, grad_out):
    """Gradients of the reference math, the attention recomputed (nothing but the inputs is saved).

    With S = scale * ks_p <q_l, x_p>, A = softmax_p(S), O = A X:
    dA = dO X^T; dS = A (dA - rowsum(dO * O)); dq = scale (dS ks) X; the pixels get A^T dO as values
    plus scale (dS ks)^T Q as keys; d ks_p = scale sum_l dS_lp <q_l, x_p>.
    """
    queries, pixels, key_scale = ctx.saved_tensors
    q, x, d_out = _compute_dtype(queries), _compute_dtype(pixels), _compute_dtype(grad_out)
    raw = torch.bmm(q, x.transpose(1, 2)) * ctx.scale  # (B, L, HW), before the key scale
    logits = raw if key_scale is None else raw * key_scale.to(raw.dtype).unsqueeze(1)
    attention = logits.softmax(dim=-1)
    out = torch.bmm(attention, x)
    d_attention = torch.bmm(d_out, x.transpose(1, 2))
    d_logits = attention * (d_attention - (d_out * out).sum(dim=-1, keepdim=True))
    d_raw = d_logits if key_scale is None else d_logits * key_scale.to(raw.dtype).unsqueeze(1)
    d_queries = torch.bmm(d_raw, x) * ctx.scale
    d_pixels = torch.bmm(attention.transpose(1, 2), d_out) + torch.bmm(d_raw.transpose(1, 2), q) * ctx.scale
    d_key_scale = None if key_scale is None else (d_logits * raw).sum(dim=1).to(key_scale.dtype)
    return d_queries.to(queries.dtype), d_pixels.to(pixels.dtype), d_key_scale, None


token_attention_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.vtbench.token_attention)
def _flops(queries_shape, pixels_shape, *args, out_shape=None, **kwargs) -> int:
    """2 x (B L HW C + B L HW C): the reference form's logits and weighted sum, as FLOPs."""
    batch, tokens, channels = queries_shape
    return 2 * batch * tokens * pixels_shape[1] * 2 * channels


def token_attention(queries: torch.Tensor, pixels: torch.Tensor, scale: float,
                    key_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The tokenizers' attention through `vtbench::token_attention`; (B, L, C) in the pixels' dtype.

    Args:
        queries: (B, L, C); a batch stride of 0 (W_A's rows shared by the batch) is fine.
        pixels: (B, HW, C) pixel rows, the keys and the values; any strides (an NCHW map's view).
        scale: the logits' factor (`models.layers.logit_scale`).
        key_scale: (B, HW) per-pixel factor on the keys' logits, or None.
    """
    if queries.dim() != 3 or pixels.dim() != 3 or queries.shape[0] != pixels.shape[0] \
            or queries.shape[2] != pixels.shape[2]:
        raise ValueError(f"queries (B, L, C) and pixels (B, HW, C) expected, got {tuple(queries.shape)} "
                         f"and {tuple(pixels.shape)}")
    if pixels.shape[1] < 1:
        raise ValueError("a softmax over no pixels: the map has HW = 0")
    if key_scale is not None and tuple(key_scale.shape) != tuple(pixels.shape[:2]):
        raise ValueError(f"key_scale must be (B, HW) = {tuple(pixels.shape[:2])}, got {tuple(key_scale.shape)}")
    # Under autocast the map arrives in fp16/bf16 while W_A stays fp32: one dtype for the kernel.
    return token_attention_op(queries.to(pixels.dtype), pixels, key_scale, float(scale))


# ------------------------------------------------------------------------------------ Triton kernel -----

def triton_token_attention(queries: torch.Tensor, pixels: torch.Tensor, key_scale: Optional[torch.Tensor],
                           scale: float) -> torch.Tensor:
    """Launch `_token_attention_kernel`: one program per (sample, block of queries, block of output channels).

    Every program recomputes the logits over all C channels for its block of output channels: the
    logits are a small part of the work (L <= 16 queries) and this keeps the fp32 accumulator at
    BLOCK_L x BLOCK_CV whatever C is (C = 1024 would not fit in registers whole).
    """
    batch, tokens, channels = queries.shape
    hw = pixels.shape[1]
    out = torch.empty(batch, tokens, channels, device=pixels.device, dtype=pixels.dtype)
    block_l = min(64, max(16, triton.next_power_of_2(tokens)))  # tl.dot wants every tile dimension >= 16
    block_cv = min(128, max(16, triton.next_power_of_2(channels)))
    block_ck = min(64, max(16, triton.next_power_of_2(channels)))
    block_p = 64 if channels <= 256 else 32
    has_scale = key_scale is not None
    ks = key_scale.float().contiguous() if has_scale else out  # unused pointer when there is no key scale
    grid = (batch, triton.cdiv(tokens, block_l), triton.cdiv(channels, block_cv))
    _token_attention_kernel[grid](
        queries, pixels, ks, out, tokens, hw, channels, float(scale),
        *queries.stride(), *pixels.stride(), ks.stride(0) if has_scale else 0, *out.stride(),
        HAS_KEY_SCALE=has_scale, IEEE=pixels.dtype == torch.float32 or _interpreting(),
        BLOCK_L=block_l, BLOCK_P=block_p, BLOCK_CK=block_ck, BLOCK_CV=block_cv)
    return out


def _interpreting() -> bool:
    """Triton's CPU interpreter (TRITON_INTERPRET=1), whose `tl.dot` on bf16 tiles is wrong (Triton 3.8):
    there every tile is taken to fp32 first, so the interpreter checks the kernel's indexing, masking and
    online softmax for every dtype; the bf16/fp16 tensor-core products are checked on a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    @triton.jit
    def _token_attention_kernel(q_ptr, x_ptr, ks_ptr, out_ptr, L, HW, C, scale,
                                stride_qb, stride_ql, stride_qc, stride_xb, stride_xp, stride_xc,
                                stride_kb, stride_ob, stride_ol, stride_oc,
                                HAS_KEY_SCALE: tl.constexpr, IEEE: tl.constexpr, BLOCK_L: tl.constexpr,
                                BLOCK_P: tl.constexpr, BLOCK_CK: tl.constexpr, BLOCK_CV: tl.constexpr):
        """Online softmax over blocks of BLOCK_P pixels; fp32 running max, sum and accumulator."""
        b, lb, cb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = lb * BLOCK_L + tl.arange(0, BLOCK_L)
        cols_v = cb * BLOCK_CV + tl.arange(0, BLOCK_CV)
        q_base = q_ptr + b * stride_qb + rows[:, None] * stride_ql
        x_base = x_ptr + b * stride_xb
        m_i = tl.full((BLOCK_L,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_L,), tl.float32)
        acc = tl.zeros((BLOCK_L, BLOCK_CV), tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            pix = p0 + tl.arange(0, BLOCK_P)
            logits = tl.zeros((BLOCK_L, BLOCK_P), tl.float32)
            for c0 in range(0, C, BLOCK_CK):  # the dot product over all C channels, a tile at a time
                ck = c0 + tl.arange(0, BLOCK_CK)
                q = tl.load(q_base + ck[None, :] * stride_qc, mask=(rows[:, None] < L) & (ck[None, :] < C), other=0.0)
                xk = tl.load(x_base + pix[:, None] * stride_xp + ck[None, :] * stride_xc,
                             mask=(pix[:, None] < HW) & (ck[None, :] < C), other=0.0)
                if IEEE:  # fp32 products in full precision, as the reference (no TF32)
                    logits += tl.dot(q.to(tl.float32), tl.trans(xk.to(tl.float32)), input_precision="ieee")
                else:
                    logits += tl.dot(q, tl.trans(xk))
            logits = logits * scale
            if HAS_KEY_SCALE:
                ks = tl.load(ks_ptr + b * stride_kb + pix, mask=pix < HW, other=1.0)
                logits = logits * ks[None, :]
            logits = tl.where(pix[None, :] < HW, logits, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(logits, axis=1))  # finite: every block holds a pixel
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(logits - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            xv = tl.load(x_base + pix[:, None] * stride_xp + cols_v[None, :] * stride_xc,
                         mask=(pix[:, None] < HW) & (cols_v[None, :] < C), other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, xv.to(tl.float32), input_precision="ieee")
            else:  # fp16/bf16 values: the weights in the values' dtype on the tensor cores, fp32 sums
                acc = acc * alpha[:, None] + tl.dot(p.to(xv.dtype), xv)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(out_ptr + b * stride_ob + rows[:, None] * stride_ol + cols_v[None, :] * stride_oc,
                 out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < L) & (cols_v[None, :] < C))
