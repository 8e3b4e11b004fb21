"""The CPU fast paths of models.layers give the plain forms' outputs, gradients and MACs (issue 15).

`TokenLinear` (few token rows as W x^T), `PixelConv` (a grouped 1x1 convolution as one bmm) and the
recurrent tokenizer's logit-side pixel RMS are other kernel orders of the same products: each is
checked against the plain form written out here, and every VT model against itself under
`plain_kernels()`.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from bench.measure.complexity import flop_counter
from models import build_model, list_models
from models.layers import SMALL_ROWS_MAX, PixelConv, TokenLinear, inverse_pixel_rms, plain_kernels
from models.projector import Projector
from models.tokenizers import RecurrentTokenizer, Tokenizer
from models.transformer import MHSATransformer, PaperTransformer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VT_MODELS = [n for n in list_models() if n.startswith("vt_")]


@pytest.mark.parametrize("rows", [1, 16, SMALL_ROWS_MAX, SMALL_ROWS_MAX + 1, 512])
def test_token_linear_matches_f_linear_forward_and_backward(rows):
    torch.manual_seed(0)
    layer = TokenLinear(96, 40, bias=False)
    x = torch.randn(2, rows, 96, requires_grad=True) if rows % 2 == 0 else torch.randn(rows, 96, requires_grad=True)
    out = layer(x)
    want = F.linear(x, layer.weight)
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    got_x, got_w = torch.autograd.grad(out, (x, layer.weight), grad)
    want_x, want_w = torch.autograd.grad(want, (x, layer.weight), grad)
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5)


def test_token_linear_takes_the_fast_path_only_for_few_rows_without_bias():
    layer, biased = TokenLinear(64, 32, bias=False), TokenLinear(64, 32, bias=True)
    with mock.patch("models.layers.F.linear", wraps=F.linear) as linear:
        layer(torch.randn(1, 16, 64))
        assert linear.call_count == 0  # batch 1, L = 16: W x^T
        layer(torch.randn(1, SMALL_ROWS_MAX + 1, 64))
        biased(torch.randn(1, 16, 64))
        with plain_kernels():
            layer(torch.randn(1, 16, 64))
        assert linear.call_count == 3


@pytest.mark.parametrize("batch", [1, 3])
def test_pixel_conv_matches_the_grouped_convolution(batch):
    torch.manual_seed(0)
    conv = PixelConv(64, 32, groups=8)
    x = torch.randn(batch, 64, 5, 7)
    want = F.conv2d(x, conv.weight, groups=8)
    torch.testing.assert_close(conv(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-5, atol=1e-5)
    assert conv.weight.shape == (32, 8, 1, 1)  # a Conv2d weight: state dicts and parameters unchanged
    with mock.patch("models.layers.torch.bmm", wraps=torch.bmm) as bmm:
        conv(x)
        with plain_kernels():
            conv(x)
        assert bmm.call_count == 1


def test_recurrent_logits_scaled_after_the_product_equal_the_product_with_unit_rms_pixels():
    torch.manual_seed(0)
    x_flat, filters = torch.randn(2, 48, 30) * 3, torch.randn(2, 4, 48)
    unit_pixels = x_flat / x_flat.pow(2).mean(dim=1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(torch.bmm(filters, x_flat) * inverse_pixel_rms(x_flat),
                               torch.bmm(filters, unit_pixels), rtol=1e-5, atol=1e-5)
    tokenizer = RecurrentTokenizer(48, 64, num_tokens=4).eval()
    tokens, attention = tokenizer(x_flat.view(2, 48, 5, 6), torch.randn(2, 4, 64))
    assert torch.allclose(attention.sum(-1), torch.ones(2, 4))


def _module_outputs_and_macs(model, x) -> tuple[dict[str, torch.Tensor], int]:
    """Every tokenizer's, transformer's and projector's output, the model's, and the MACs."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, out):
            outputs[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules()
               if isinstance(m, (Tokenizer, PaperTransformer, MHSATransformer, Projector))]
    try:
        with torch.no_grad(), flop_counter() as counter:
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    outputs["output"] = out if torch.is_tensor(out) else next(v for v in out.values() if torch.is_tensor(v))
    return outputs, counter.get_total_flops() // 2


@pytest.mark.parametrize("name", VT_MODELS)
@pytest.mark.parametrize("batch", [1, 2])
def test_every_vt_model_gives_the_plain_outputs_and_macs(name, batch):
    """Each token-space module's output, relative to its largest value: measured <= 2.5e-6."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).eval()
    x = torch.randn(batch, 3, 64, 64)
    fast, fast_macs = _module_outputs_and_macs(model, x)
    with plain_kernels():
        plain, plain_macs = _module_outputs_and_macs(model, x)
    assert fast_macs == plain_macs
    assert fast.keys() == plain.keys() and len(fast) > 3
    for key, want in plain.items():
        torch.testing.assert_close(fast[key], want, rtol=0, atol=2e-5 * want.abs().max().item(), msg=key)
