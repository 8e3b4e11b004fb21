"""Every registered VT model at its default options is alive at step 0 (issue 10's bars).

On random input in train mode (step 0 of training), for every VT model of the registry:
- no tokenizer's mean peak attention over pixels is above 0.5 (attention is not on one pixel);
- no two tokens of a filter-based (first) tokenizer have a cosine above 0.99;
- every token-space weight gets a non-zero gradient, and no tokenizer, transformer or projector
  has a gradient norm below 1e-3 of the largest of them;
- the initial cross-entropy is within 2x of ln(num_classes).
The literal ICCV reading (`numerics="iccv"`) is checked to collapse as reported, so the option keeps
reproducing the equations as printed.

Two bars are not met by the equations at init, and are strict xfails (they fail loudly the day
they pass): the recurrent tokenizers' tokens are near-identical (cosine > 0.999), and for
VT-ResNet-50/101 the middle projector's gradient falls below 1e-3 of the largest. Why: a recurrent
tokenizer's filters W_R = T_in W_{T->R} are linear in the incoming tokens, which at init share one
dominant direction (averages of non-negative BN+ReLU pixels: cosine ~0.96-0.98 after the filter
tokenizer, ~0.99 after the transformer's T + A T); any W_{T->R} scales the shared part and the
differences alike, so the filters, and the attention, are near-identical. With C_T = C (R50/R101)
the projector of module 2 then attends over identical tokens and its W_Q, W_K barely move the loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from models import build_model, list_models
from models.health import init_health

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VT_MODELS = [n for n in list_models() if n.startswith("vt_")]
PEAK_MAX, COSINE_MAX, GRAD_RATIO_MIN, LOSS_FACTOR = 0.5, 0.99, 1e-3, 2.0


def _step0(name: str, **options):
    """init_health of `name` on a seeded random batch: 224x224 x4 (classification), 128x128 x2 (seg)."""
    torch.manual_seed(0)
    model = build_model(name, **options)
    seg = model.task == "seg"
    size, batch = (128, 2) if seg else (224, 4)
    images = torch.randn(batch, 3, size, size)
    targets = torch.randint(0, model.num_classes, (batch, size, size) if seg else (batch,))
    return init_health(model, images, targets)


@pytest.fixture(scope="module")
def health():
    """One step-0 pass per VT model, shared by the tests below."""
    return {name: _step0(name) for name in VT_MODELS}


@pytest.mark.parametrize("name", VT_MODELS)
def test_attention_is_not_on_one_pixel(health, name):
    assert max(health[name].peak_attention) <= PEAK_MAX, health[name].peak_attention


@pytest.mark.parametrize("name", VT_MODELS)
def test_filter_tokens_are_distinct(health, name):
    h = health[name]
    first = [c for c, rec in zip(h.max_token_cosine, h.recurrent) if not rec]
    assert first and max(first) <= COSINE_MAX, h.max_token_cosine


@pytest.mark.xfail(strict=True, reason="recurrent tokenizers start from near-identical tokens (module docstring)")
@pytest.mark.parametrize("name", [n for n in VT_MODELS if "fpn" not in n])
def test_recurrent_tokens_are_distinct(health, name):
    h = health[name]
    assert max(c for c, rec in zip(h.max_token_cosine, h.recurrent) if rec) <= COSINE_MAX


@pytest.mark.parametrize("name", VT_MODELS)
def test_every_token_space_weight_gets_a_gradient(health, name):
    assert health[name].zero_grad_weights == []


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="module 2's projector attends over identical "
                                                                "tokens when C_T = C (module docstring)"))
    if n in ("vt_resnet50", "vt_resnet101") else n
    for n in VT_MODELS
])
def test_no_token_space_module_is_starved(health, name):
    h = health[name]
    assert h.weakest_gradient_ratio >= GRAD_RATIO_MIN, h.grad_norms


@pytest.mark.parametrize("name", VT_MODELS)
def test_initial_loss_is_near_chance(health, name):
    h = health[name]
    chance = math.log(h.num_classes)
    assert chance / LOSS_FACTOR <= h.loss <= chance * LOSS_FACTOR, (h.loss, chance)


def test_iccv_reading_collapses_as_printed():
    """The literal equations at 224x224: VT-ResNet-50's recurrent tokenizers put all attention on one pixel."""
    h = _step0("vt_resnet50", numerics="iccv", zero_init_residual=False)
    assert max(p for p, rec in zip(h.peak_attention, h.recurrent) if rec) > 0.9
    assert h.loss > 4 * math.log(h.num_classes)


def test_numerics_change_no_parameter_count():
    for name in ("vt_resnet18", "vt_fpn_r50"):
        counts = {n: sum(p.numel() for p in build_model(name, numerics=n).parameters()) for n in ("appendix", "iccv")}
        assert counts["appendix"] == counts["iccv"]
