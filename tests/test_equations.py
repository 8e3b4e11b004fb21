"""Each VT equation against an independent plain computation (per sample, row layout, loops)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from models import build_model, token_attention
from models.fpn import VTFPN
from models.projector import Projector
from models.tokenizers import (
    ClusteringTokenizer,
    FilterTokenizer,
    PoolingTokenizer,
    RecurrentTokenizer,
    kmeans_centroids,
)
from models.factories import tokenizer_factory, transformer_factory
from models.layers import GroupedLinear
from models.transformer import MHSATransformer, PaperTransformer

B, C, H, W, L, CT = 2, 8, 5, 6, 4, 12


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# The equations are checked on the reference attention form, whose attention maps they read; the
# attention form (attention_impl="sdpa", no maps) is held to it by tests/test_attention_form.py.
REFERENCE = {"attention_impl": "reference"}


def _rows(x: torch.Tensor, b: int) -> torch.Tensor:
    """Feature map of sample b as the paper's X: (HW, C)."""
    return x[b].reshape(x.shape[1], -1).t()


def _w(layer) -> torch.Tensor:
    """A 1x1 conv's or a linear layer's weight as the paper's right-multiplied matrix (C_in x C_out)."""
    return layer.weight.reshape(layer.weight.shape[0], -1).t()


def _block_diag(layer) -> torch.Tensor:
    """A grouped projection's weight as one dense block-diagonal right-multiplied matrix (C_in x C_out)."""
    return torch.block_diag(*layer.weight)


NUMERICS = pytest.mark.parametrize("numerics", ["centered", "appendix", "iccv"])


def _scale(width: int, numerics: str) -> float:
    """The logit factor each reading prescribes: 1/sqrt(d) (centered, appendix) or none (the ICCV equations)."""
    return 1.0 if numerics == "iccv" else 1 / math.sqrt(width)


def _deviations(t: torch.Tensor) -> torch.Tensor:
    """`centered` step 1, written out: each token minus the tokens' mean, over its own RMS; t (L, C_T)."""
    d = t - t.mean(dim=0)
    return d / d.pow(2).mean(dim=1, keepdim=True).sqrt()


@NUMERICS
def test_filter_tokenizer_equation(numerics):
    tok = FilterTokenizer(C, CT, L, numerics=numerics, **REFERENCE)
    x = torch.randn(B, C, H, W)
    tokens, attn = tok(x)
    assert tokens.shape == (B, L, CT) and attn.shape == (B, L, H * W)
    for b in range(B):
        xb = _rows(x, b)
        a = torch.softmax(xb @ _w(tok.w_a) * _scale(C, numerics), dim=0)  # softmax over HW
        expected = (a.t() @ xb) @ _w(tok.adapter)  # T = softmax_HW(X W_A)^T X, then C -> C_T
        torch.testing.assert_close(tokens[b], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attn[b], a.t(), rtol=1e-5, atol=1e-6)


def test_filter_tokenizer_without_adapter_when_channels_match():
    tok = FilterTokenizer(C, C, L, **REFERENCE)
    assert tok.adapter is None
    x = torch.randn(1, C, H, W)
    tokens, attn = tok(x)
    torch.testing.assert_close(tokens[0], attn[0] @ _rows(x, 0))


@NUMERICS
def test_recurrent_tokenizer_equation(numerics):
    tok = RecurrentTokenizer(C, CT, L, numerics=numerics, **REFERENCE)
    x, t_in = torch.randn(B, C, H, W), torch.randn(B, L, CT)
    tokens, attn = tok(x, t_in)
    for b in range(B):
        xb = _rows(x, b)
        if numerics == "centered":  # W_R = dev(T_in) W_{T->R}, dotted with unit-RMS pixels
            w_r = _deviations(t_in[b]) @ _w(tok.w_tr)
            keys = xb / xb.pow(2).mean(dim=1, keepdim=True).sqrt()
        else:
            w_r, keys = t_in[b] @ _w(tok.w_tr), xb  # W_R = T_in W_{T->R}: (L, C)
        a = torch.softmax(keys @ w_r.t() * _scale(C, numerics), dim=0)  # (HW, L)
        expected = (a.t() @ xb) @ _w(tok.adapter)
        torch.testing.assert_close(tokens[b], expected, rtol=1e-5, atol=1e-5)


def test_recurrent_tokenizer_depends_on_incoming_tokens():
    tok = RecurrentTokenizer(C, CT, L)
    x = torch.randn(1, C, H, W)
    a, _ = tok(x, torch.randn(1, L, CT))
    b, _ = tok(x, torch.randn(1, L, CT))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError):
        tok(x, None)


def test_recurrent_half_refresh_keeps_second_half():
    tok = RecurrentTokenizer(C, CT, L, refresh="half", **REFERENCE)
    x, t_in = torch.randn(1, C, H, W), torch.randn(1, L, CT)
    tokens, attn = tok(x, t_in)
    assert tokens.shape == (1, L, CT) and attn.shape == (1, L // 2, H * W)
    torch.testing.assert_close(tokens[:, : L // 2], t_in[:, L // 2 :])


def test_pooling_tokenizer_is_cell_average():
    tok = PoolingTokenizer(C, C, 6)  # 2 x 3 grid
    x = torch.randn(1, C, 4, 6)
    tokens, attn = tok(x)
    expected = x.reshape(1, C, 2, 2, 3, 2).mean(dim=(3, 5)).reshape(1, C, 6).transpose(1, 2)  # (1, L, C)
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, 6))
    torch.testing.assert_close(tokens[0], attn[0] @ _rows(x, 0))


def test_kmeans_recovers_separated_clusters():
    centers = torch.eye(C)[:3]  # three orthogonal directions
    labels = torch.arange(30) % 3
    pixels = (centers[labels] + 0.01 * torch.randn(30, C)).t().unsqueeze(0)  # (1, C, N)
    cent = kmeans_centroids(pixels, 3, iters=5)[0]
    sims = cent @ centers.t()
    assert sorted(sims.argmax(1).tolist()) == [0, 1, 2] and sims.max(1).values.min() > 0.99


def test_clustering_tokenizer_uses_centroids_as_w_a():
    tok = ClusteringTokenizer(C, C, L, iters=2)
    x = torch.randn(B, C, H, W)
    tokens, attn = tok(x)
    for b in range(B):
        cent = kmeans_centroids(x[b : b + 1].flatten(2), L, 2)[0]  # this sample alone
        a = torch.softmax(_rows(x, b) @ cent.t(), dim=0)
        torch.testing.assert_close(attn[b], a.t(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tokens[b], a.t() @ _rows(x, b), rtol=1e-5, atol=1e-5)


@NUMERICS
def test_paper_transformer_equations(numerics):
    trf = PaperTransformer(CT, qk_channels=6, ff_channels=10, numerics=numerics)
    t = torch.randn(B, L, CT)
    out = trf(t)
    for b in range(B):
        tin = t[b]  # (L, C_T)
        logits = (tin @ _w(trf.key)) @ (tin @ _w(trf.query)).t() * _scale(6, numerics)
        a = torch.softmax(logits, dim=1)  # softmax_L
        t1 = tin + a @ tin  # T'_out = T_in + softmax_L((T K)(T Q)^T) T_in
        t2 = t1 + torch.relu(t1 @ _w(trf.ff1)) @ _w(trf.ff2)  # T_out = T' + relu(T' F1) F2
        torch.testing.assert_close(out[b], t2, rtol=1e-5, atol=1e-5)


def test_grouped_linear_is_a_grouped_1x1_conv():
    layer = GroupedLinear(CT, 8, groups=4)
    assert sum(p.numel() for p in layer.parameters()) == CT * 8 // 4  # as Conv1d(CT, 8, 1, groups=4)
    t = torch.randn(B, L, CT)
    conv_weight = layer.weight.transpose(1, 2).reshape(8, CT // 4, 1)  # group j: (C_out/g, C_in/g, 1)
    expected = torch.nn.functional.conv1d(t.transpose(1, 2), conv_weight, groups=4).transpose(1, 2)
    torch.testing.assert_close(layer(t), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(t), t @ _block_diag(layer), rtol=1e-5, atol=1e-5)


def test_mhsa_transformer_matches_plain_multihead():
    heads = 2
    trf = MHSATransformer(CT, heads=heads, qk_channels=8, groups=2, ff_channels=None)
    t = torch.randn(B, L, CT)
    out = trf(t)
    for b in range(B):
        q = t[b] @ _block_diag(trf.query)  # (L, 8): grouped projection as a block-diagonal matrix
        k = t[b] @ _block_diag(trf.key)
        v = t[b] @ _block_diag(trf.value)  # (L, CT)
        parts = []
        for h in range(heads):
            qh, kh = q[:, h * 4 : (h + 1) * 4], k[:, h * 4 : (h + 1) * 4]
            vh = v[:, h * CT // heads : (h + 1) * CT // heads]
            parts.append(torch.softmax(qh @ kh.t() / math.sqrt(4), dim=1) @ vh)
        t1 = t[b] + torch.cat(parts, dim=1)
        t2 = t1 + t1 @ _w(trf.ff) + trf.ff.bias
        torch.testing.assert_close(out[b], t2, rtol=1e-5, atol=1e-5)


def test_none_transformer_is_identity():
    t = torch.randn(B, L, CT)
    assert torch.equal(transformer_factory("none")(CT)(t), t)


@NUMERICS
def test_projector_equation_and_residual(numerics):
    proj = Projector(C, C, channels=6, numerics=numerics)  # C_T = C: the ICCV equation, no value map
    assert proj.w_v is None
    x, t = torch.randn(B, C, H, W), torch.randn(B, L, C)
    out = proj(x, t)
    for b in range(B):
        xb = _rows(x, b)
        logits = (xb @ _w(proj.w_q)) @ (t[b] @ _w(proj.w_k)).t() * _scale(6, numerics)
        a = torch.softmax(logits, dim=1)  # softmax_L
        values = t[b] - t[b].mean(dim=0) if numerics == "centered" else t[b]  # `centered` step 2
        expected = xb + a @ values  # X_out = X_in + softmax_L((X W_Q)(T W_K)^T) T
        torch.testing.assert_close(_rows(out, b), expected, rtol=1e-5, atol=1e-5)


def test_centered_deviations_of_identical_tokens_are_zero_not_nan():
    tok = RecurrentTokenizer(C, CT, L, **REFERENCE)
    tokens, attn = tok(torch.randn(1, C, H, W), torch.ones(1, L, CT))
    assert torch.isfinite(tokens).all()
    torch.testing.assert_close(attn, torch.full_like(attn, 1 / (H * W)))  # zero filters: uniform attention


def test_centered_projector_with_value_map_is_the_appendix_one():
    torch.manual_seed(0)
    a = Projector(C, CT, numerics="centered")
    torch.manual_seed(0)
    b = Projector(C, CT, numerics="appendix")
    x, t = torch.randn(B, C, H, W), torch.randn(B, L, CT)
    torch.testing.assert_close(a(x, t), b(x, t))


def test_projector_with_value_map_is_residual():
    proj = Projector(C, CT)
    x, t = torch.randn(B, C, H, W), torch.randn(B, L, CT)
    with torch.no_grad():
        proj.w_v.weight.zero_()  # the residual branch vanishes: X_out = X_in
    torch.testing.assert_close(proj(x, t), x)


def test_vt_fpn_mixes_levels_through_one_transformer():
    fpn = VTFPN([4, 8], out_channels=32, num_tokens=2, token_channels=32,
                projector=partial(Projector, groups=1)).eval()
    feats = [torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)]
    base = fpn(feats)
    changed = fpn([feats[0], feats[1] + 1.0])
    assert not torch.allclose(base[0], changed[0])  # level 0 sees level 1's tokens


def test_token_attention_shapes_and_normalisation():
    model = build_model("vt_resnet18", num_classes=3, stem="cifar").eval()
    maps = token_attention(model, torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 8, 8), (2, 16, 8, 8)]
    torch.testing.assert_close(maps[0].sum(dim=(2, 3)), torch.ones(2, 16))
    with pytest.raises(ValueError):
        token_attention(build_model("resnet18", num_classes=3, stem="cifar"), torch.randn(1, 3, 32, 32))


def test_vt_fpn_token_attention_per_level():
    model = build_model("vt_fpn_r50", num_classes=3).eval()
    maps = token_attention(model, torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4), (1, 8, 2, 2)]


def test_tokenizer_factory_rejects_bad_values():
    with pytest.raises(ValueError):
        tokenizer_factory("nope")
    with pytest.raises(ValueError):
        tokenizer_factory("filter")(C, C, 0)


@pytest.mark.parametrize("kind", ["filter", "recurrent", "pooling", "clustering"])
def test_tokenizers_are_batch_independent_and_deterministic(kind):
    tok = tokenizer_factory(kind, **REFERENCE)(C, CT, L).eval()
    x, t_in = torch.randn(3, C, H, W), torch.randn(3, L, CT)
    tokens, attn = tok(x, t_in)
    alone, alone_attn = tok(x[1:2], t_in[1:2])
    torch.testing.assert_close(tokens[1:2], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn[1:2], alone_attn, rtol=1e-5, atol=1e-6)
    again, _ = tok(x, t_in)
    assert torch.equal(tokens, again)
    assert not any(p.shape[0] == 3 for p in tok.parameters())  # no weight with a batch dimension


@pytest.mark.parametrize("transformer", ["paper", "mhsa"])
def test_state_dict_of_the_channels_first_layout_loads(transformer):
    """A state dict saved with 1x1 Conv1d token weights (C_out, C_in / g, 1) loads and computes the same."""
    model = build_model("vt_resnet18", num_classes=3, stem="cifar", transformer=transformer).eval()
    old = {}
    for name, value in model.state_dict().items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, GroupedLinear):  # (g, C_in/g, C_out/g) -> grouped Conv1d (C_out, C_in/g, 1)
            value = value.transpose(1, 2).reshape(module.out_features, -1, 1)
        elif isinstance(module, torch.nn.Linear) and name.startswith("vt.") and name.endswith("weight"):
            value = value.unsqueeze(-1)
        old[name] = value.clone()
    fresh = build_model("vt_resnet18", num_classes=3, stem="cifar", transformer=transformer).eval()
    fresh.load_state_dict(old)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
