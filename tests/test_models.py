"""Every registered model: shapes, gradients, no NaN, batch independence, tracing, compile, options."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from models import build_model, list_models, model_facts, model_options

CLS = [n for n in list_models() if model_facts(n).task == "cls"]
SEG = [n for n in list_models() if model_facts(n).task == "seg"]
NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@functools.lru_cache(maxsize=None)
def _prototype(name: str):
    """One small-input instance per name, built once (building ResNet-101 is not free); never handed out."""
    torch.manual_seed(0)
    extra = {"stem": "cifar"} if name in CLS else {}
    return build_model(name, num_classes=NUM_CLASSES, **extra)


def _model(name: str):
    """A fresh copy of the name's prototype: a test that trains it (batch-norm statistics, gradients)
    or changes its mode leaves the next test's model as built."""
    return copy.deepcopy(_prototype(name))


def _input(name: str, batch: int, size=None) -> torch.Tensor:
    size = size or (16 if name in CLS else 64)
    hw = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, *hw)


def test_registry_names():
    assert set(list_models()) == {
        "resnet18", "resnet34", "resnet50", "resnet101", "vt_resnet18", "vt_resnet34", "vt_resnet50",
        "vt_resnet101", "fpn_r50", "fpn_r101", "vt_fpn_r50", "vt_fpn_r101",
    }


@pytest.mark.parametrize("name", list_models())
def test_attributes(name):
    model = _model(name)
    assert model.task == ("cls" if name in CLS else "seg")
    assert model.num_classes == NUM_CLASSES
    assert model.default_input_size == (32 if name in CLS else 512)
    children = [n for n, _ in model.named_children()]
    expected_last = {"resnet": ["stage5", "head"], "vt_resnet": ["vt", "head"], "fpn": ["stage5", "fpn", "head"],
                     "vt_fpn": ["stage5", "fpn", "head"]}[model_facts(name).family]
    assert children == ["stem", "stage2", "stage3", "stage4"] + expected_last


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("batch,size", [(1, None), (3, None), (2, (24, 40))])
def test_forward_shapes(name, batch, size):
    model = _model(name).eval()
    x = _input(name, batch, size)
    with torch.no_grad():
        y = model(x)
    expected = (batch, NUM_CLASSES) if name in CLS else (batch, NUM_CLASSES, *x.shape[-2:])
    assert tuple(y.shape) == expected and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["resnet18", "vt_resnet18", "vt_resnet50"])
def test_imagenet_stem(name):
    model = build_model(name, num_classes=NUM_CLASSES).eval()
    assert model.default_input_size == 224
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    model = _model(name).train()
    model.zero_grad(set_to_none=True)
    y = model(_input(name, 2))
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_batch_independence_in_eval(name):
    """A sample's output does not depend on its batch or its position in it (the seed code's defect)."""
    model = _model(name).eval()
    x = _input(name, 4)
    with torch.no_grad():
        full = model(x)
        alone = model(x[2:3])
        flipped = model(x.flip(0))
    scale = 1e-4 * (1 + full.abs().max())
    torch.testing.assert_close(full[2:3], alone, rtol=1e-4, atol=scale)
    torch.testing.assert_close(full.flip(0), flipped, rtol=1e-4, atol=scale)


@pytest.mark.parametrize("tokenizer", ["filter", "pooling", "clustering"])
@pytest.mark.parametrize("transformer", ["paper", "mhsa", "none"])
def test_vt_options_forward_backward(tokenizer, transformer):
    model = build_model("vt_resnet18", num_classes=3, stem="cifar", tokenizer=tokenizer,
                        transformer=transformer, num_tokens=8, token_channels=256)
    y = model(torch.randn(2, 3, 16, 16))
    y.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("overrides", [
    {"projector": False}, {"recurrent": False}, {"refresh": "half"}, {"last_projector": True, "num_modules": 1},
    {"head_hidden": 64}, {"proj_groups": 4, "proj_channels": 64}, {"qk_channels": 64, "ff_channels": 128},
])
def test_vt_ablation_options(overrides):
    model = build_model("vt_resnet18", num_classes=3, stem="cifar", token_channels=256, **overrides)
    y = model(torch.randn(2, 3, 16, 16))
    y.sum().backward()
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,overrides,match", [
    ("resnet18", {"tokenizer": "filter"}, "do not apply"),
    ("vt_resnet18", {"num_tokens": 0}, "num_tokens"),
    ("vt_resnet18", {"tokenizer": "bogus"}, "tokenizer"),
    ("vt_resnet18", {"tokenizer": "kmeans"}, "tokenizer"),
    ("vt_resnet18", {"transformer": "bogus"}, "transformer"),
    ("vt_resnet18", {"heads": 4}, "mhsa"),
    ("vt_resnet18", {"stem": "tiny"}, "stem"),
    ("resnet50", {"num_classes": 0}, "num_classes"),
    ("vt_fpn_r50", {"stem": "cifar"}, "do not apply"),
    ("vt_fpn_r50", {"tokenizer": "recurrent"}, "tokenizer"),
    ("nope", {}, "unknown model"),
])
def test_bad_options_raise(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, **overrides)


def test_documented_options():
    opts = model_options("vt_resnet18")
    for key in ("num_classes", "num_tokens", "token_channels", "tokenizer", "transformer", "projector", "stem"):
        assert key in opts
    assert opts["num_tokens"] == 16 and opts["token_channels"] == 1024 and opts["num_modules"] == 2
    assert model_options("vt_resnet50")["transformer"] == "paper"
    assert model_options("vt_resnet50")["proj_groups"] == 16
    assert model_options("vt_fpn_r50")["num_tokens"] == 8


@pytest.mark.parametrize("name", list_models())
def test_jit_trace(name):
    model = _model(name).eval()
    x = _input(name, 2)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_torch_compile(name):
    model = _model(name).eval()
    x = _input(name, 2)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)


def test_tokenizer_recurrent_is_the_papers_filter_then_recurrent_scheme():
    """DESIGN.md lists `recurrent` among the tokenizers: filter-based first module, recurrent after."""
    torch.manual_seed(0)
    spelled = build_model("vt_resnet18", num_classes=10, stem="cifar", tokenizer="recurrent").eval()
    torch.manual_seed(0)
    default = build_model("vt_resnet18", num_classes=10, stem="cifar").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(spelled(x), default(x))
    with pytest.raises(ValueError, match="contradicts recurrent=False"):
        build_model("vt_resnet18", tokenizer="recurrent", recurrent=False)
