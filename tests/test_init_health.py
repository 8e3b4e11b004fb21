"""Every registered VT model at its default options, and under every healthy trunk-init candidate, is alive at step 0.

On random input in train mode (step 0 of training), for every VT model of the registry:
- no tokenizer's mean peak attention over pixels is above 0.5 (attention is not on one pixel);
- no two tokens of a module have a cosine above 0.99 (filter-based and recurrent tokenizers);
- every token-space weight gets a non-zero gradient, and no tokenizer, transformer or projector
  has a gradient norm below 1e-3 of the largest of them;
- the initial cross-entropy is within 2x of ln(num_classes).
These are checked on one seeded batch, as the issue states them. The largest pairwise cosine is a
worst case over 4 x 120 token pairs, and on other batches it sometimes crosses 0.99 for one pair
(two tokens whose attention lands on the same high-norm pixel: seen for 1 of 6 batches of
VT-ResNet-18/34/50, filter tokenizer included), so the population is checked too: over three
batches, at most 1 % of a tokenizer's token pairs are near-duplicates (measured: at most 0.2 %
under the default numerics; 84-100 % under `numerics="appendix"`, where the recurrent tokens are
one token repeated).
The `appendix` and literal ICCV readings are checked to collapse as measured, so the options keep
reproducing what they are documented to do (models.layers.NUMERICS).
The trunk-init candidates (`models.init.RESIDUAL_INITS`): `zero` (the default) meets every bar on
every VT model and `small` on every VT-ResNet; `torchvision` is the reference and is checked to fail
them on VT-ResNet-50 as documented.
"""

from __future__ import annotations

import math

import pytest

from models import build_model, list_models
from models.health import step0_health
from models.layers import NUMERICS

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VT_MODELS = [n for n in list_models() if n.startswith("vt_")]
# Trunk-init candidates held to every bar: `zero` (the default) on every VT model, `small` on the
# VT-ResNets, the models of the init study. Not VT-FPN: there `small` puts one token pair of 4 x 28
# at cosine 0.991-0.993 (seed 0; `zero` 0.985), a hair over the worst-pair bar (models.init.RESIDUAL_INITS).
CASES = [(name, "zero") for name in VT_MODELS] + [(name, "small") for name in VT_MODELS if "fpn" not in name]
PEAK_MAX, COSINE_MAX, GRAD_RATIO_MIN, LOSS_FACTOR = 0.5, 0.99, 1e-3, 2.0
DUPLICATE_PAIRS_MAX = 0.01  # fraction of token pairs above COSINE_MAX, over several batches


def _step0(name: str, seed: int = 0, residual_init: str = "zero", **options):
    """init_health of `name` on a seeded random batch (`models.health.step0_health`)."""
    return step0_health(name, seed, residual_init, **options)


@pytest.fixture(scope="module")
def health():
    """One step-0 pass per VT model and healthy trunk-init candidate, shared by the tests below."""
    return {(name, init): _step0(name, residual_init=init) for name, init in CASES}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_attention_is_not_on_one_pixel(health, case):
    assert max(health[case].peak_attention) <= PEAK_MAX, health[case].peak_attention


@pytest.mark.parametrize("case", CASES, ids=str)
def test_no_two_tokens_are_alike(health, case):
    h = health[case]
    assert max(h.max_token_cosine) <= COSINE_MAX, list(zip(h.recurrent, h.max_token_cosine))


@pytest.mark.parametrize("case", [c for c in CASES if "fpn" not in c[0]], ids=str)
def test_recurrent_tokens_are_distinct_over_batches(health, case):
    """The population bar, first batch shared with the tests above, two more seeds."""
    name, init = case
    runs = [health[case]] + [_step0(name, seed, residual_init=init) for seed in (1, 2)]
    worst = max(f for h in runs for f in h.duplicate_pair_fraction)
    assert worst <= DUPLICATE_PAIRS_MAX, [h.duplicate_pair_fraction for h in runs]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_token_space_weight_gets_a_gradient(health, case):
    assert health[case].zero_grad_weights == []


@pytest.mark.parametrize("case", CASES, ids=str)
def test_no_token_space_module_is_starved(health, case):
    h = health[case]
    assert h.weakest_gradient_ratio >= GRAD_RATIO_MIN, h.grad_norms


@pytest.mark.parametrize("case", CASES, ids=str)
def test_initial_loss_is_near_chance(health, case):
    h = health[case]
    chance = math.log(h.num_classes)
    assert chance / LOSS_FACTOR <= h.loss <= chance * LOSS_FACTOR, (h.loss, chance)


def test_torchvision_trunk_init_repeats_vt_resnet50_tokens_as_documented():
    """gamma 1 in every block: the stage-4 map grows with depth and the first tokenizer's tokens repeat."""
    h = _step0("vt_resnet50", residual_init="torchvision")
    assert max(h.max_token_cosine) > COSINE_MAX and max(h.peak_attention) > PEAK_MAX


def test_iccv_reading_collapses_as_printed():
    """The literal equations at 224x224: VT-ResNet-50's recurrent tokenizers put all attention on one pixel."""
    h = _step0("vt_resnet50", numerics="iccv", zero_init_residual=False)
    assert max(p for p, rec in zip(h.peak_attention, h.recurrent) if rec) > 0.9
    assert h.loss > 4 * math.log(h.num_classes)


@pytest.mark.parametrize("name", ["vt_resnet18", "vt_resnet50"])
def test_appendix_reading_repeats_one_recurrent_token(name):
    """Without the centering steps the recurrent tokens are one token repeated (why `centered` is the default)."""
    h = _step0(name, numerics="appendix")
    assert max(f for f, rec in zip(h.duplicate_pair_fraction, h.recurrent) if rec) > 0.5
    assert min(f for f, rec in zip(h.duplicate_pair_fraction, h.recurrent) if not rec) <= DUPLICATE_PAIRS_MAX


def test_appendix_reading_starves_the_middle_projector_when_tokens_are_values():
    """C_T = C (VT-ResNet-50): without step 2 module 2's projector gets < 1e-3 of the largest gradient."""
    assert _step0("vt_resnet50", numerics="appendix").weakest_gradient_ratio < GRAD_RATIO_MIN


def test_numerics_change_no_parameter_count():
    for name in ("vt_resnet18", "vt_resnet50", "vt_fpn_r50"):
        counts = {n: sum(p.numel() for p in build_model(name, numerics=n).parameters()) for n in NUMERICS}
        assert len(set(counts.values())) == 1, counts
