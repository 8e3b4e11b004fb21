"""Every registered model, at its defaults and at a few chosen options, built under a fixed seed, has
a recorded fingerprint.

The fingerprint pins what a refactor of `models/` must keep: the parameter count, the state_dict's
keys and shapes (hashed), the initial weights (their float64 absolute sum: a change in construction
order draws different weights), the MACs of one forward pass (torch's FlopCounterMode / 2) and that
forward's output on a fixed input. MACs are counted with vtbench's handles
(`bench.measure.complexity.flop_counter`: a fused attention kernel counts as its two matmuls), so the
`attention_impl="sdpa"` cases pin the reference form's figures. The values were recorded at commit dbb27ac, before the zoo became
frozen option configs; the ResNet and VT-ResNet entries at their default trunk init were recorded
again when that default became `zero_stage4` (only the initial weights and outputs moved: the same
parameters, keys and MACs). Regenerate them with `python tests/test_model_fingerprint.py` only
for a change that is meant to change the models, and say so in its commit.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from bench.measure.complexity import flop_counter
from models import build_model, list_models, model_facts, model_options
from models.layers import DEFAULT_ATTENTION_IMPL

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SEED = 0
SIZE = {"cls": 64, "seg": 64}  # small inputs: the forward pins behaviour, not the paper's sizes

# Non-default choices that go through the tokenizer and transformer factories and the options the
# variants share (default options alone would leave them unpinned).
VARIANTS = [
    ("vt_resnet18", {"transformer": "mhsa"}),
    ("vt_resnet18", {"transformer": "mhsa", "heads": 4, "kqv_groups": 2, "ff_channels": 512}),
    ("vt_resnet18", {"transformer": "none", "projector": False}),
    ("vt_resnet18", {"tokenizer": "pooling", "recurrent": False}),
    ("vt_resnet18", {"tokenizer": "clustering", "kmeans_iters": 2}),
    ("vt_resnet18", {"refresh": "half", "last_projector": True, "head_hidden": 64, "numerics": "iccv"}),
    ("vt_resnet18", {"stem": "cifar", "width": 0.25, "token_channels": 64, "num_classes": 10,
                     "numerics": "appendix", "residual_init": "torchvision"}),
    ("vt_resnet50", {"proj_channels": None, "proj_groups": 1, "qk_channels": 256, "num_modules": 2}),
    ("vt_fpn_r50", {"transformer": "mhsa", "tokenizer": "clustering", "num_tokens": 4}),
    ("vt_fpn_r50", {"transformer": "none", "tokenizer": "pooling", "proj_channels": 128, "numerics": "iccv"}),
    ("resnet18", {"stem": "cifar", "width": 0.5, "residual_init": "torchvision"}),
    ("fpn_r50", {"num_classes": 20, "residual_init": "torchvision"}),
]
CASES = {name: (name, {}) for name in list_models()} | {
    f"{name} " + ",".join(f"{k}={v}" for k, v in overrides.items()): (name, overrides) for name, overrides in VARIANTS}
# The attention form (`attention_impl="sdpa"`) of these cases has their fingerprint: the same parameters,
# keys, initial weights and MACs, outputs within the tolerance.
SDPA_OF = ("vt_resnet18", "vt_resnet50", "vt_fpn_r50", "vt_resnet18 transformer=mhsa",
           "vt_resnet18 refresh=half,last_projector=True,head_hidden=64,numerics=iccv",
           "vt_resnet18 stem=cifar,width=0.25,token_channels=64,num_classes=10,numerics=appendix,residual_init=torchvision")
SDPA_TWINS = {f"{case}{',' if ' ' in case else ' '}attention_impl=sdpa": case for case in SDPA_OF}
CASES |= {twin: (CASES[case][0], CASES[case][1] | {"attention_impl": "sdpa"}) for twin, case in SDPA_TWINS.items()}

# case: (params, sha256[:16] of "key shape" lines, |weights| sum, MACs at SIZE, output sum, |output| sum)
EXPECTED = {
    'fpn_r101': (47490411, '3635afe39c15a3e0', 1531518.495, 995786752, 22124.71925, 618044.90165),
    'fpn_r50': (28498283, '325be8dab4f5c1c0', 815496.624, 692748288, -95520.29233, 717982.86025),
    'resnet101': (44549160, '2f8b407a9b92d477', 1474134.473, 638730240, -9.90282, 600.38266),
    'resnet18': (11689512, '079dfc8232141b23', 235353.023, 148557824, -17.74623, 342.5718),
    'resnet34': (21797672, '0d910ad7dff50d9e', 450556.389, 299552768, -40.24887, 1593.7471),
    'resnet50': (25557032, 'df10ec84baabb2e9', 758168.917, 335691776, 39.34857, 1076.46218),
    'vt_fpn_r101': (51446123, 'a13e306800efef8e', 1640875.212, 926826496, 22194.85651, 563593.40919),
    'vt_fpn_r50': (32453995, '95380b9c6ec274b0', 924698.793, 623788032, 84730.00085, 619377.04417),
    'vt_resnet101': (40668200, 'a1df818ca072a796', 1432126.283, 768516096, 6.51129, 456.01737),
    'vt_resnet18': (11479592, '26fd7ea187b5156e', 266582.417, 239378432, -17.57652, 500.93857),
    'vt_resnet34': (21126952, '4d6c68140dbe061b', 501015.123, 440311808, -69.67088, 1965.3919),
    'vt_resnet50': (21676072, '1c06e3306842a731', 716406.427, 465477632, -19.58954, 884.00545),
    'vt_resnet18 transformer=mhsa': (7811624, 'f90f0cff6f81f7d7', 204582.015, 180658176, 6.63583, 285.00732),
    'vt_resnet18 transformer=mhsa,heads=4,kqv_groups=2,ff_channels=512':
        (9385512, 'c90c7de017dac9b5', 234607.727, 205824000, -17.48082, 277.34356),
    'vt_resnet18 transformer=none,projector=False':
        (4598312, 'cdb23d689dfcb08e', 138203.378, 128360448, -5.00349, 237.63791),
    'vt_resnet18 tokenizer=pooling,recurrent=False':
        (11213352, 'f6cafc61e525d02f', 240278.736, 234921984, 8.62929, 526.65155),
    'vt_resnet18 tokenizer=clustering,kmeans_iters=2':
        (11475496, '43e961c2f908201a', 256681.884, 239640576, 5.87491, 509.6445),
    'vt_resnet18 refresh=half,last_projector=True,head_hidden=64,numerics=iccv':
        (11175016, 'f28a1d3ead1d7869', 222153.284, 243792384, -1.04878, 241.56346),
    'vt_resnet18 stem=cifar,width=0.25,token_channels=64,num_classes=10,numerics=appendix,residual_init=torchvision':
        (213146, '2a3c594cc9aa55a8', 16127.908, 109822592, -0.27038, 4.69318),
    'vt_resnet50 proj_channels=None,proj_groups=1,qk_channels=256,num_modules=2':
        (17973288, 'f0db27c5c55b0517', 601995.113, 405053440, 21.28506, 732.81073),
    'vt_fpn_r50 transformer=mhsa,tokenizer=clustering,num_tokens=4':
        (30611819, 'bbd502396ebe4128', 874399.778, 531030016, -135758.93838, 694291.09769),
    'vt_fpn_r50 transformer=none,tokenizer=pooling,proj_channels=128,numerics=iccv':
        (28767595, '4290c82e09792e7a', 820459.316, 514920448, 23858.32948, 669913.35577),
    'resnet18 stem=cifar,width=0.5,residual_init=torchvision':
        (3052040, '8c8d2ec4f9fd93fe', 88216.055, 557443072, -21.89641, 1243.26332),
    'fpn_r50 num_classes=20,residual_init=torchvision':
        (28478804, '7b0d7ea7c7994b74', 829744.568, 687800320, -5521.07171, 70274.21557),
}
EXPECTED |= {twin: EXPECTED[case] for twin, case in SDPA_TWINS.items()}


def fingerprint(name: str, overrides: dict) -> tuple:
    """The fingerprint of `name` built with `overrides` under SEED (eval mode, one image of SIZE)."""
    torch.manual_seed(SEED)
    model = build_model(name, **overrides).eval()
    state = model.state_dict()
    keys = "\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    params = sum(p.numel() for p in model.parameters())
    weight_abs = sum(p.detach().double().abs().sum().item() for p in model.parameters())
    size = SIZE[model_facts(name).task]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad(), flop_counter() as counter:
        out = model(x).double()
    return (params, hashlib.sha256(keys.encode()).hexdigest()[:16], round(weight_abs, 3),
            counter.get_total_flops() // 2, round(out.sum().item(), 5), round(out.abs().sum().item(), 5))


@pytest.mark.parametrize("case", list(CASES))
def test_model_matches_its_recorded_fingerprint(case):
    """Same parameters, state_dict keys, initial weights, MACs and outputs as when recorded."""
    params, keys, weight_abs, macs, out_sum, out_abs = fingerprint(*CASES[case])
    want = EXPECTED[case]
    assert (params, keys, macs) == (want[0], want[1], want[3])
    # Float sums: exact on one machine; the tolerance only absorbs summation order across BLAS builds.
    assert weight_abs == pytest.approx(want[2], rel=1e-7)
    assert (out_sum, out_abs) == pytest.approx((want[4], want[5]), rel=1e-4, abs=1e-4)


# Every variant's options, in order, with their defaults, as recorded at dbb27ac (plus those added
# since, at the end: `attention_impl`, whose default is the form measured faster, FPN `width`,
# `residual_init`, which replaced the boolean `zero_init_residual` when the classifiers' default
# became `zero_stage4`): build_model accepts exactly these names and `model_options` /
# `model_facts(name).defaults` report exactly these values.
_RESNET = {"num_classes": 1000, "stem": "imagenet", "width": 1.0, "residual_init": "zero_stage4"}
_VT_RESNET = {"num_classes": 1000, "stem": "imagenet", "num_tokens": 16, "token_channels": 1024, "tokenizer": "filter",
              "recurrent": True, "transformer": "paper", "projector": True, "last_projector": False, "num_modules": 3,
              "qk_channels": None, "heads": None, "kqv_groups": None, "ff_channels": None, "proj_channels": None,
              "proj_groups": 1, "refresh": "all", "kmeans_iters": 3, "head_hidden": None, "numerics": "centered",
              "width": 1.0, "attention_impl": DEFAULT_ATTENTION_IMPL, "residual_init": "zero_stage4"}
_FPN = {"num_classes": 171, "width": 1.0, "residual_init": "zero"}
_VT_FPN = {"num_classes": 171, "num_tokens": 8, "token_channels": 1024, "tokenizer": "filter", "transformer": "paper",
           "qk_channels": None, "heads": None, "kqv_groups": None, "ff_channels": None, "proj_channels": None,
           "proj_groups": 16, "kmeans_iters": 3, "numerics": "centered",
           "attention_impl": DEFAULT_ATTENTION_IMPL, "width": 1.0, "residual_init": "zero"}
OPTIONS = {
    "resnet18": _RESNET, "resnet34": _RESNET, "resnet50": _RESNET, "resnet101": _RESNET,
    "vt_resnet18": _VT_RESNET | {"num_modules": 2}, "vt_resnet34": _VT_RESNET,
    "vt_resnet50": _VT_RESNET | {"proj_channels": 256, "proj_groups": 16},
    "vt_resnet101": _VT_RESNET | {"proj_channels": 256, "proj_groups": 16},
    "fpn_r50": _FPN, "fpn_r101": _FPN, "vt_fpn_r50": _VT_FPN, "vt_fpn_r101": _VT_FPN,
}


@pytest.mark.parametrize("name", list_models())
def test_options_and_defaults_are_as_recorded(name):
    """The same option names, in the same order, with the same defaults."""
    assert list(model_options(name).items()) == list(OPTIONS[name].items())
    assert dict(model_facts(name).defaults) == OPTIONS[name]


def test_every_case_has_a_fingerprint():
    assert set(list_models()) <= set(CASES) and sorted(EXPECTED) == sorted(CASES)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for label, (model_name, options) in CASES.items():
        if label in SDPA_TWINS:
            continue
        print(f"    {label!r}: {fingerprint(model_name, options)!r},")
