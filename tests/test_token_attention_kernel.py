"""The tokenizers' fused attention (`attention_impl="fused"`, `vtbench::token_attention`) against the reference.

- the Triton kernel, run by Triton's CPU interpreter in a subprocess (TRITON_INTERPRET=1 must be set
  before triton is imported, so never in this process), against the reference math: odd L, HW and C,
  NCHW-view and expanded (batch stride 0) inputs, with and without the key scale, fp32 and bf16;
- the op on CPU (its reference math) against `models.layers.attend` (SDPA), its registered backward
  against autograd through the reference math, its fake implementation;
- whole models in the fused form against the reference form: outputs, weights, gradients, MACs;
- on CUDA (marker gpu) the Triton kernel itself against the reference math.

Tolerance: max |fused - reference| / max |reference|. Measured here: fp32 at most 8.9e-7 (interpreted
kernel) and 9e-8 (models: on CPU the op runs the reference math, the same matmuls); bf16 (bf16 inputs
and output, fp32 accumulation) at most 4.5e-3, one bf16 rounding of the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.measure.complexity import measure_complexity
from models import build_model, token_attention
from models.kernels.token_attention import reference_token_attention, token_attention_op
from models.kernels import token_attention as fused_attention
from models.layers import NUMERICS, attend
from models.tokenizers import FilterTokenizer, RecurrentTokenizer
from models.vt import attention_form

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-5
BF16_TOL = 1e-2
ROOT = Path(__file__).resolve().parents[1]
TINY = {"stem": "cifar", "width": 0.25, "num_classes": 10}  # stage-4 maps of C = 64 channels, 8x8 at 32x32
# (B, L, HW, C, key scale, queries shared by the batch, pixels as an NCHW map's view)
KERNEL_CASES = [(2, 4, 1, 8, False, False, False), (2, 16, 70, 33, True, False, True),
                (2, 9, 64, 64, False, True, True), (2, 5, 37, 64, True, True, False),
                (2, 12, 65, 8, True, False, False), (1, 3, 5, 130, False, False, True),
                (1, 70, 9, 16, True, True, False)]  # C = 130: two blocks of output channels; L = 70: two of queries

INTERPRETER_SCRIPT = r"""
import json, sys
import torch
from models.kernels.token_attention import reference_token_attention, triton_token_attention

def inputs(b, l, hw, c, with_scale, shared, nchw, dtype):
    g = torch.Generator().manual_seed(b * 1000 + l * 100 + hw + c)
    q = torch.randn(1 if shared else b, l, c, generator=g).expand(b, -1, -1).to(dtype)
    x = torch.randn(b, c, hw, generator=g) * 2  # NCHW map flattened: pixel rows as a strided view
    x = (x if nchw else x.transpose(1, 2).contiguous().transpose(1, 2)).transpose(1, 2).to(dtype)
    ks = torch.rand(b, hw, generator=g) + 0.5 if with_scale else None
    return q, x, ks

errors = []
for case in json.loads(sys.argv[1]):
    *shape, dtype = case
    q, x, ks = inputs(*shape, getattr(torch, dtype))
    got = triton_token_attention(q, x, ks, shape[3] ** -0.5)
    want = reference_token_attention(q, x, ks, shape[3] ** -0.5)
    errors.append({"case": case, "dtype": str(got.dtype), "shape": list(got.shape),
                   "error": ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()})
print(json.dumps(errors))
"""


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


# --------------------------------------------------------------------------------- Triton interpreter ---

def test_triton_kernel_under_the_interpreter_matches_the_reference():
    """One subprocess (the interpreter needs TRITON_INTERPRET=1 before triton is imported) runs every case."""
    pytest.importorskip("triton")
    cases = [[*case, "float32"] for case in KERNEL_CASES] + [[2, 7, 45, 33, True, True, True, "bfloat16"],
                                                             [2, 16, 70, 64, False, False, False, "bfloat16"]]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", INTERPRETER_SCRIPT, json.dumps(cases)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == len(cases)
    for result in results:
        b, l, hw, c, *_, dtype = result["case"]
        assert result["shape"] == [b, l, c] and result["dtype"] == f"torch.{dtype}"
        assert result["error"] <= (TOL if dtype == "float32" else BF16_TOL), result


# -------------------------------------------------------------------------------------- the op on CPU ---

def _inputs(b=2, l=6, hw=35, c=24, dtype=torch.float32, with_scale=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, l, c, generator=g, dtype=dtype)
    x = torch.randn(b, c, hw, generator=g, dtype=dtype).transpose(1, 2) * 2  # an NCHW map's pixel rows
    ks = torch.rand(b, hw, generator=g, dtype=dtype) + 0.5 if with_scale else None
    return q, x, ks


@pytest.mark.parametrize("with_scale", [False, True])
def test_op_is_the_attention_of_sdpa(with_scale):
    """The op equals SDPA with the key scale folded into the keys (the `sdpa` form's recurrent tokenizer)."""
    q, x, ks = _inputs(with_scale=with_scale)
    keys = x * ks.unsqueeze(-1) if with_scale else x
    want = attend(q, keys, x, 0.2)
    got = fused_attention(q, x, 0.2, ks)
    assert got.shape == (2, 6, 24) and _relative_error(got, want) <= TOL


def test_op_keeps_low_precision_dtypes_and_accumulates_in_fp32():
    q, x, ks = _inputs(with_scale=True)
    want = reference_token_attention(q.double(), x.double(), ks.double(), 0.2)
    got = fused_attention(q.bfloat16(), x.bfloat16(), 0.2, ks)
    assert got.dtype == torch.bfloat16 and _relative_error(got, want) <= BF16_TOL


def test_op_rejects_shapes_it_cannot_take():
    q, x, _ = _inputs()
    with pytest.raises(ValueError, match="queries"):
        fused_attention(q[..., :5], x, 1.0)
    with pytest.raises(ValueError, match="key_scale"):
        fused_attention(q, x, 1.0, torch.ones(2, 3))
    with pytest.raises(ValueError, match="HW = 0"):
        fused_attention(q, x[:, :0], 1.0)


@pytest.mark.parametrize("with_scale", [False, True])
def test_op_gradients_pass_gradcheck(with_scale):
    """The registered backward (recomputed reference math) against finite differences, in float64."""
    q, x, ks = _inputs(b=2, l=3, hw=7, c=5, dtype=torch.float64, with_scale=with_scale)
    inputs = [t.detach().clone().requires_grad_() for t in (q, x.contiguous())]
    if with_scale:
        inputs.append(ks.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda *t: token_attention_op(t[0], t[1], t[2] if with_scale else None, 0.7),
                                    inputs)


def test_op_gradients_equal_autograd_through_the_reference_math():
    q, x, ks = (t.detach().requires_grad_() for t in _inputs())
    weights = torch.randn(2, 6, 24)
    grads = []
    for fn in (lambda: (fused_attention(q, x, 0.2, ks) * weights).sum(),
               lambda: ((torch.bmm(q, x.transpose(1, 2)) * 0.2 * ks.unsqueeze(1)).softmax(-1) @ x * weights).sum()):
        grads.append(torch.autograd.grad(fn(), (q, x, ks)))
    for got, want in zip(*grads):
        assert _relative_error(got, want) <= TOL


def test_op_has_a_fake_implementation():
    """Shape propagation without data (torch.compile, meta tensors) through the registered fake."""
    q, x, ks = (t.to("meta") for t in _inputs(dtype=torch.bfloat16))
    out = token_attention_op(q, x, ks, 0.5)
    assert out.device.type == "meta" and out.shape == (2, 6, 24) and out.dtype == torch.bfloat16
    torch.library.opcheck(token_attention_op, _inputs(with_scale=True)[:3] + (0.5,))


# ---------------------------------------------------------------------------------------- tokenizers ---

@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("numerics", NUMERICS)
def test_tokenizers_in_the_fused_form(numerics, layout):
    torch.manual_seed(0)
    x = (torch.randn(2, 32, 5, 7) * 2).contiguous(memory_format=layout)
    tokens_in = torch.randn(2, 6, 48)
    for tokenizer, args in ((FilterTokenizer(32, 48, 6, numerics=numerics), (x,)),
                            (RecurrentTokenizer(32, 48, 6, numerics=numerics), (x, tokens_in))):
        tokenizer.eval()
        with torch.no_grad(), attention_form(tokenizer, "reference"):
            want, attention = tokenizer(*args)
        with torch.no_grad(), attention_form(tokenizer, "fused"):
            got, none = tokenizer(*args)
        assert attention is not None and none is None  # the fused op forms no map
        assert got.shape == want.shape == (2, 6, 48) and _relative_error(got, want) <= TOL, type(tokenizer).__name__


# -------------------------------------------------------------------------------------------- models ---

def _twins(name: str, **options):
    """The model in the reference and the fused form, built under one seed."""
    models = []
    for impl in ("reference", "fused"):
        torch.manual_seed(0)
        models.append(build_model(name, attention_impl=impl, **options).eval())
    return models


def _assert_same_weights(reference, fused) -> None:
    want, got = reference.state_dict(), fused.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("tokenizer", [{"tokenizer": "filter"}, {"tokenizer": "filter", "recurrent": False}],
                         ids=["filter+recurrent", "filter-only"])
def test_vt_resnet18_fused_gives_the_reference_outputs(tokenizer, numerics):
    reference, fused = _twins("vt_resnet18", **TINY, token_channels=32, numerics=numerics, **tokenizer)
    _assert_same_weights(reference, fused)
    assert {b.tokenizer.attention_impl for b in fused.vt.blocks} == {"fused"}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            assert _relative_error(fused(x.contiguous(memory_format=layout)), want) <= TOL, layout


@pytest.mark.parametrize("numerics", ["centered", "iccv"])
def test_vt_fpn_fused_gives_the_reference_outputs(numerics):
    reference, fused = _twins("vt_fpn_r50", num_classes=5, numerics=numerics)
    _assert_same_weights(reference, fused)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _relative_error(fused(x), reference(x)) <= TOL


def test_fused_form_trains_with_the_reference_gradients():
    reference, fused = _twins("vt_resnet18", **TINY, token_channels=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (reference, fused):
        model.train()
        F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    want, got = grads
    tokenizer_grads = [n for n in want if ".tokenizer." in n]
    assert tokenizer_grads and all(want[n].abs().max() > 0 for n in tokenizer_grads)
    for name in want:
        assert (got[name] - want[name]).abs().max() <= 1e-4 * want[name].abs().max() + 1e-12, name


@pytest.mark.slow
def test_compiled_fused_form_gives_the_reference_outputs():
    """The grid's compiled cells: inductor traces the op through its fake implementation (measured 3e-7)."""
    reference, fused = _twins("vt_resnet18", **TINY, token_channels=32)
    compiled = torch.compile(fused)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            assert _relative_error(compiled(x.contiguous(memory_format=layout)), want) <= TOL, layout


def test_token_attention_maps_come_from_the_reference_form():
    reference, fused = _twins("vt_resnet18", **TINY, token_channels=32)
    x = torch.randn(2, 3, 32, 32)
    for got, want in zip(token_attention(fused, x), token_attention(reference, x), strict=True):
        assert got.shape == (2, 16, 8, 8) and torch.equal(got, want)
    assert {b.tokenizer.attention_impl for b in fused.vt.blocks} == {"fused"}


@pytest.mark.parametrize("name", ["vt_resnet18", "vt_resnet50", "vt_fpn_r50"])
def test_fused_form_counts_the_reference_macs(name):
    """Both counters (FlopCounterMode, fvcore) see the op and count it as the reference form's two matmuls."""
    reference, fused = (measure_complexity(model, 64) for model in _twins(name))
    assert (fused.gmacs, fused.gmacs_traced) == (reference.gmacs, reference.gmacs_traced)
    assert fused.stage_gmacs == reference.stage_gmacs and fused.params_m == reference.params_m
    assert fused.executed_by_operator_gmacs.get("vtbench.token_attention", 0) > 0
    assert fused.by_operator_gmacs.get("token_attention", 0) > 0
    assert not fused.unsupported_ops


# ---------------------------------------------------------------------------------------------- CUDA ---

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, BF16_TOL)])
@pytest.mark.parametrize("b, l, hw, c", [(2, 16, 196, 256), (4, 16, 196, 1024), (3, 9, 37, 33), (2, 8, 1, 512)])
def test_cuda_triton_kernel_matches_the_reference(b, l, hw, c, dtype, tol):
    for with_scale in (False, True):
        q, x, ks = (None if t is None else t.to("cuda") for t in _inputs(b, l, hw, c, with_scale=with_scale))
        want = reference_token_attention(q.double(), x.double(), None if ks is None else ks.double(), c ** -0.5)
        got = fused_attention(q.to(dtype), x.to(dtype), c ** -0.5, ks)
        assert got.dtype == dtype and _relative_error(got, want) <= tol, with_scale
        shared = q[:1].to(dtype).expand(b, -1, -1)  # W_A's rows: one set of queries, batch stride 0
        want = reference_token_attention(shared.double(), x.double(), None if ks is None else ks.double(), c ** -0.5)
        assert _relative_error(fused_attention(shared, x.to(dtype), c ** -0.5, ks), want) <= tol, with_scale


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_cuda_fused_model_gives_the_reference_outputs():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        reference, fused = (m.to("cuda") for m in _twins("vt_resnet50", num_classes=10))
        x = torch.randn(2, 3, 224, 224, device="cuda")
        with torch.no_grad():
            assert _relative_error(fused(x), reference(x)) <= 1e-4
            with torch.autocast("cuda", dtype=torch.bfloat16):
                assert _relative_error(fused(x), reference(x)) <= 5e-2
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
