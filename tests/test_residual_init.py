"""Trunk-init candidates (`models.init.RESIDUAL_INITS`): what each sets, and that nothing else moves."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet as tv

from models.fpn import FPN, SegmentationFPN
from models import build_model, list_models, model_facts, model_options
from models.init import CLASSIFIER_RESIDUAL_INIT, RESIDUAL_INITS, SEGMENTER_RESIDUAL_INIT, residual_gains
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
    per_stage = [2, 2, 2, 2] if depth == 18 else [3, 4, 6, 3]
    expected = [gain for gain, blocks in zip(RESIDUAL_INITS[name], per_stage) for _ in range(blocks)]
    assert [float(w.unique()) for w in last] == pytest.approx(expected)
    skip = {id(w) for w in last}
    for (key, mine), theirs in zip(trunk.state_dict(keep_vars=True).items(), reference.state_dict().values()):
        if id(mine) not in skip:
            assert torch.equal(mine.detach(), theirs), key


def test_candidates_by_name_and_each_familys_default():
    assert residual_gains("zero") == (0.0,) * 4 and residual_gains("torchvision") == (1.0,) * 4
    assert residual_gains("small") == (0.1,) * 4
    assert residual_gains("zero_stage4") == (1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="unknown residual_init 'tiny'; choose from zero, small, torchvision, zero_stage4"):
        residual_gains("tiny")
    # classifiers: chosen by results/init_study; segmenters: VT-FPN reads every stage
    assert CLASSIFIER_RESIDUAL_INIT == "zero_stage4" and SEGMENTER_RESIDUAL_INIT == "zero"
    for name in list_models():
        want = CLASSIFIER_RESIDUAL_INIT if model_facts(name).task == "cls" else SEGMENTER_RESIDUAL_INIT
        assert model_options(name)["residual_init"] == want, name
    with pytest.raises(ValueError, match="do not apply"):  # one spelling: torchvision's boolean is gone
        build_model("resnet18", zero_init_residual=False)


def test_models_take_the_candidate_at_every_width():
    scaled = ResNetClassifier(18, num_classes=10, stem="cifar", width=0.25, residual_init="small")
    assert all(torch.all(w == 0.1) for w in _last_bn_weights(scaled))
    default = ResNetClassifier(18, num_classes=10, width=0.25)  # zero_stage4: only stage 4 at the identity
    assert [float(w.unique()) for w in _last_bn_weights(default)] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert all(torch.all(w == 0.0) for w in _last_bn_weights(SegmentationFPN(50, FPN, 5)))
    seg = SegmentationFPN(50, FPN, 5, residual_init="torchvision")
    assert all(torch.all(w == 1.0) for w in _last_bn_weights(seg))


def test_zero_stage4_gives_the_vt_module_the_map_it_reads_under_zero():
    """Stage 4 at the identity: its output is the first block's shortcut (1x1 conv + BN + ReLU) of stage 3.

    So the map the VT module reads has the same scale under `zero` and `zero_stage4` on every depth,
    while torchvision's gamma 1 makes it grow with the number of blocks before it.
    """
    rms = {}
    for name in ("zero", "zero_stage4", "torchvision"):
        torch.manual_seed(0)
        trunk = torchvision_trunk(50, residual_init=name).train()
        x = torch.randn(2, 3, 96, 96)
        x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
        with torch.no_grad():
            rms[name] = float(trunk.layer3(trunk.layer2(trunk.layer1(x))).pow(2).mean().sqrt())
    assert abs(rms["zero_stage4"] - rms["zero"]) < 0.1 * rms["zero"], rms
    assert rms["torchvision"] > 2 * rms["zero_stage4"], rms
