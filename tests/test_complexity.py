"""Trust checks of bench.complexity: torchvision ResNets and tiny modules with hand-derived counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench.complexity import measure_complexity
from models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("ctor,paper", [(torchvision.models.resnet18, 1.814), (torchvision.models.resnet50, 4.089)])
def test_torchvision_resnets_match_paper(ctor, paper):
    result = measure_complexity(ctor(weights=None), 224)
    assert abs(result.gmacs - paper) / paper < 0.005
    assert result.gmacs_fvcore > result.gmacs  # fvcore also counts batch norm and pooling
    assert result.gmacs_flopcounter == pytest.approx(result.gmacs, rel=1e-6)


class TinyAttention(nn.Module):
    """Tokens (1, 5, 8) from a 1x1 conv on a (1, 8, 1, 5) map; q, k, v linear 8 -> 6; softmax attention."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1, bias=False)
        self.q, self.k, self.v = nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(8, 6)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (1, 5, 8)
        a = torch.softmax(torch.bmm(self.q(t), self.k(t).transpose(1, 2)), dim=-1)  # (1, 5, 5)
        return torch.bmm(a, self.v(t))


def test_tiny_attention_hand_count():
    result = measure_complexity(TinyAttention(), (1, 5))
    conv = 5 * 3 * 8  # 1x1 conv, 5 pixels
    linear = 3 * 5 * 8 * 6  # q, k, v on 5 tokens
    products = 2 * 5 * 5 * 6  # QK^T and AV
    assert result.gmacs * 1e9 == pytest.approx(conv + linear + products)
    assert result.gmacs_fvcore * 1e9 == pytest.approx(conv + linear + products + 5 * 5)  # + softmax, 1 per element
    assert result.gmacs_flopcounter * 1e9 == pytest.approx(conv + linear + products)
    assert result.unsupported_ops == {}
    assert result.stage_gmacs["stem"] * 1e9 == pytest.approx(conv)


class TinySDPA(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1, bias=False)

    def forward(self, x):
        t = self.proj(x).flatten(2).view(1, 2, 4, 5).transpose(2, 3)  # (1, 2 heads, 5 tokens, 4)
        return F.scaled_dot_product_attention(t, t, t)


def test_sdpa_hand_count():
    result = measure_complexity(TinySDPA(), (1, 5))
    conv = 5 * 3 * 8
    sdpa = 2 * (5 * 5 * 4 + 5 * 5 * 4)  # per head: QK^T and AV
    assert result.gmacs * 1e9 == pytest.approx(conv + sdpa)
    assert result.gmacs_flopcounter * 1e9 == pytest.approx(conv + sdpa)


class WithCumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.cumsum(self.conv(x), dim=-1)


def test_unsupported_ops_are_reported():
    result = measure_complexity(WithCumsum(), 4)
    assert result.unsupported_ops == {"aten::cumsum": 1}
    assert result.to_metrics()["unsupported_ops"] == {"aten::cumsum": 1}


def test_batch_size_gives_per_image_counts():
    model = TinyAttention()
    one, four = measure_complexity(model, (1, 5)), measure_complexity(model, (1, 5), batch_size=4)
    assert four.gmacs == pytest.approx(one.gmacs) and four.params_m == one.params_m


def test_stages_sum_to_total_and_metrics_are_flat():
    model = build_model("vt_resnet18", num_classes=10, stem="cifar")
    result = measure_complexity(model, 32)
    metrics = result.to_metrics()
    stages = ["stem", "stage2", "stage3", "stage4", "vt", "head"]
    assert sum(metrics[f"gmacs_{s}"] for s in stages) == pytest.approx(metrics["gmacs"])
    assert sum(metrics[f"params_m_{s}"] for s in stages) == pytest.approx(metrics["params_m"])
    assert metrics["gmacs_flopcounter"] == pytest.approx(metrics["gmacs"], rel=1e-6)
    assert metrics["unsupported_ops"] == {}
    assert model.training  # the mode is restored


def test_bad_batch_size():
    with pytest.raises(ValueError):
        measure_complexity(TinyAttention(), 4, batch_size=0)


def test_counting_leaves_batchnorm_statistics_and_mode_untouched():
    """fvcore traces lazily; the trace must run in eval mode so BN running stats never move."""
    from models import build_model

    model = build_model("resnet18", num_classes=10, stem="cifar").train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    measure_complexity(model, 16)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
