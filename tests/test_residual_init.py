"""Trunk-init candidates (`models.init.RESIDUAL_INITS`): what each sets, and that nothing else moves."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet as tv

from models.fpn import FPN, SegmentationFPN
from models.init import RESIDUAL_INITS, residual_gain
from models.resnet import ResNetClassifier, torchvision_trunk


def _last_bn_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.bn3.weight if isinstance(m, tv.Bottleneck) else m.bn2.weight
            for m in model.modules() if isinstance(m, (tv.BasicBlock, tv.Bottleneck))]


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("name", list(RESIDUAL_INITS))
def test_candidate_sets_every_last_batchnorm_and_nothing_else(depth, name):
    torch.manual_seed(0)
    reference = tv.resnet18() if depth == 18 else tv.resnet50()  # torchvision's init, the same draws
    torch.manual_seed(0)
    trunk = torchvision_trunk(depth, residual_init=name)
    last = _last_bn_weights(trunk)
    assert len(last) == (8 if depth == 18 else 16)
    assert all(torch.all(w == RESIDUAL_INITS[name]) for w in last)
    skip = {id(w) for w in last}
    for (key, mine), theirs in zip(trunk.state_dict(keep_vars=True).items(), reference.state_dict().values()):
        if id(mine) not in skip:
            assert torch.equal(mine.detach(), theirs), key


def test_zero_init_residual_spells_the_zero_and_torchvision_candidates():
    assert residual_gain(None, True) == 0.0 == residual_gain("zero")
    assert residual_gain(None, False) == 1.0 == residual_gain("torchvision", False)
    assert residual_gain("small") == 0.1
    with pytest.raises(ValueError, match="contradicts residual_init='small'"):
        residual_gain("small", zero_init_residual=False)
    with pytest.raises(ValueError, match="unknown residual_init 'tiny'; choose from zero, small, torchvision"):
        residual_gain("tiny")


def test_models_take_the_candidate_at_every_width():
    scaled = ResNetClassifier(18, num_classes=10, stem="cifar", width=0.25, residual_init="small")
    assert all(torch.all(w == 0.1) for w in _last_bn_weights(scaled))
    default = ResNetClassifier(18, num_classes=10, width=0.25)
    assert all(torch.all(w == 0.0) for w in _last_bn_weights(default))
    seg = SegmentationFPN(50, FPN, 5, residual_init="torchvision")
    assert all(torch.all(w == 1.0) for w in _last_bn_weights(seg))
