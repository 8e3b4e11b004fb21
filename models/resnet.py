"""torchvision ResNets re-wrapped so that the paper's stages are top-level children.

Children, in order: `stem` (conv1 + bn + relu + max-pool: the paper's stage 1), `stage2`..`stage5`
(torchvision `layer1`..`layer4`), `head` (global average pool + fc). VT-ResNet keeps `stem`,
`stage2`..`stage4` and replaces `stage5` by `vt`, a VT stage at the stage-4 resolution (section 4.1).

`stem="cifar"` swaps the ImageNet stem for a 3x3 stride-1 convolution without max-pool, the usual
set-up for 32x32 images; the stage-4 map is then 8x8 at 32x32 input.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models import resnet

from models.init import CLASSIFIER_RESIDUAL_INIT, init_residual_branches, residual_gains

STEMS = ("imagenet", "cifar")
DEFAULT_INPUT_SIZE = {"imagenet": 224, "cifar": 32}


def make_stem(trunk: resnet.ResNet, stem: str) -> nn.Sequential:
    """The paper's stage 1 from a torchvision ResNet, or a CIFAR stem of the same width."""
    if stem == "imagenet":
        return nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
    if stem == "cifar":
        width = trunk.conv1.out_channels
        return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    raise ValueError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")


def torchvision_trunk(depth: int, width: float = 1.0, *, residual_init: str) -> resnet.ResNet:
    """An untrained torchvision ResNet-`depth`, optionally with every stage's width scaled by `width`.

    `width` (default 1: torchvision's network) multiplies the channels of the stem and of every
    stage (64/128/256/512 planes), as in wide/slim ResNets; a CPU study uses 0.25 to train in
    minutes (about 1/16 of the MACs), and says so. Block types and depths are unchanged.

    `residual_init` names the initial weight of the last BatchNorm of every residual block, per
    stage (`models.init.RESIDUAL_INITS`: `zero`, `small`, `torchvision`, `zero_stage4`). Why it
    matters here: the map a VT module reads must start at one scale on every depth; with every block
    at the identity (`zero`; Goyal et al. 2017, timm's `zero_init_last`, torchvision's
    `zero_init_residual`) or with stage 4 at the identity (`zero_stage4`) the stage-4 map has RMS
    ~0.71 (BN + ReLU) on every depth, while torchvision's gamma 1 makes it grow with the number of
    blocks (RMS ~2 for ResNet-50, ~4 for ResNet-101 in train mode). Baselines and VT models get the
    same trunk init. The other weights are the same under every candidate (the same random draws).
    """
    constructors: dict[int, Callable[..., resnet.ResNet]] = {
        18: resnet.resnet18,
        34: resnet.resnet34,
        50: resnet.resnet50,
        101: resnet.resnet101,
    }
    if depth not in constructors:
        raise ValueError(f"unsupported ResNet depth {depth}; choose from 18, 34, 50, 101")
    gains = residual_gains(residual_init)
    trunk = constructors[depth](weights=None)
    if width != 1.0:
        trunk = _scaled_trunk(trunk, width)
    init_residual_branches(trunk, gains)
    return trunk


def _scaled_trunk(trunk: resnet.ResNet, width: float) -> resnet.ResNet:
    """Rebuild `trunk`'s stem, stages and fc at `width` x the channels, with torchvision's init."""
    if not 0 < width <= 4 or int(64 * width) < 1:
        raise ValueError(f"width must be in (0, 4], got {width!r}")
    block = type(trunk.layer1[0])
    planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
    trunk.inplanes = planes[0]
    trunk.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
    trunk.bn1 = nn.BatchNorm2d(planes[0])
    for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        setattr(trunk, name, trunk._make_layer(block, planes[i], len(getattr(trunk, name)), stride=1 if i == 0 else 2))
    trunk.fc = nn.Linear(planes[3] * block.expansion, trunk.fc.out_features)
    for m in trunk.modules():  # torchvision's ResNet init
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return trunk


def stage_channels(trunk: resnet.ResNet) -> list[int]:
    """Output channels of stages 2-5 (C2..C5)."""
    return [_block_out(layer[-1]) for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)]


def _block_out(block: nn.Module) -> int:
    """Output channels of a BasicBlock or Bottleneck."""
    last = block.conv3 if hasattr(block, "conv3") else block.conv2
    return last.out_channels


class ResNetClassifier(nn.Module):
    """ResNet with stages as top-level children: stem, stage2..stage5, head.

    Args:
        depth: 18, 34, 50 or 101.
        num_classes: classifier outputs.
        stem: "imagenet" (7x7/2 conv + max-pool) or "cifar" (3x3/1 conv, no max-pool).
        width: channel multiplier of the stem and every stage (1 = torchvision's ResNet).
        residual_init: the trunk init (`models.init.RESIDUAL_INITS`; default `CLASSIFIER_RESIDUAL_INIT`).
    """

    task = "cls"

    def __init__(self, depth: int, num_classes: int = 1000, stem: str = "imagenet", width: float = 1.0,
                 residual_init: str = CLASSIFIER_RESIDUAL_INIT):
        super().__init__()
        _check_classes(num_classes)
        trunk = torchvision_trunk(depth, width, residual_init=residual_init)
        self.num_classes = num_classes
        self.stem = make_stem(trunk, stem)  # raises on an unknown stem
        self.default_input_size = DEFAULT_INPUT_SIZE[stem]
        self.stage2, self.stage3, self.stage4, self.stage5 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(trunk.fc.in_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes)."""
        x = self.stage4(self.stage3(self.stage2(self.stem(x))))
        return self.head(self.stage5(x))


class VTResNet(nn.Module):
    """VT-ResNet: stem and stages 2-4 from torchvision, stage 5 replaced by a VT stage, token head.

    Args:
        depth: 18, 34, 50 or 101.
        vt: a factory `vt(in_channels) -> VTStage` building the VT stage on the stage-4 channels.
        head: a factory `head() -> nn.Module` mapping the VT stage output to logits.
        num_classes: classifier outputs (recorded on the model; the head must match).
        stem: "imagenet" or "cifar".
        width: channel multiplier of the stem and stages 2-4 (1 = torchvision's ResNet).
        residual_init: the trunk init (`models.init.RESIDUAL_INITS`; default `CLASSIFIER_RESIDUAL_INIT`).
    """

    task = "cls"

    def __init__(self, depth: int, vt: Callable[[int], nn.Module], head: Callable[[], nn.Module],
                 num_classes: int, stem: str = "imagenet", width: float = 1.0,
                 residual_init: str = CLASSIFIER_RESIDUAL_INIT):
        super().__init__()
        _check_classes(num_classes)
        trunk = torchvision_trunk(depth, width, residual_init=residual_init)
        self.num_classes = num_classes
        self.stem = make_stem(trunk, stem)  # raises on an unknown stem
        self.default_input_size = DEFAULT_INPUT_SIZE[stem]
        self.stage2, self.stage3, self.stage4 = trunk.layer1, trunk.layer2, trunk.layer3
        self.vt = vt(_block_out(trunk.layer3[-1]))
        self.head = head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes)."""
        x = self.stage4(self.stage3(self.stage2(self.stem(x))))
        return self.head(self.vt(x))


def _check_classes(num_classes: int) -> None:
    """Reject a classifier without outputs."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
