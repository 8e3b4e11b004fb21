"""`width` of the segmentation FPNs: the trunk and pyramid scale, the default network does not move."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from bench.measure.complexity import measure_complexity
from models.factories import tokenizer_factory, transformer_factory
from models.fpn import FPN, VTFPN, SegmentationFPN
from models.projector import Projector

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _vt_fpn(token_channels: int):
    return partial(VTFPN, num_tokens=8, token_channels=token_channels, tokenizer=tokenizer_factory("filter"),
                   transformer=transformer_factory("paper"), projector=partial(Projector, groups=16))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_width_is_the_papers_network():
    """Parameters and MACs of fpn_r50 / vt_fpn_r50 at 96x96 as recorded before `width` existed."""
    fpn, vt = SegmentationFPN(50, FPN, 11), SegmentationFPN(50, _vt_fpn(1024), 11)
    assert (_params(fpn), _params(vt)) == (28_477_643, 32_433_355)
    assert fpn.fpn.layer_blocks[0][0].out_channels == 256 and fpn.stage5[-1].conv3.out_channels == 2048
    fpn_macs, vt_macs = measure_complexity(fpn.eval(), 96), measure_complexity(vt.eval(), 96)
    assert round(fpn_macs.stage_gmacs["fpn"], 3) == 0.522 and round(vt_macs.stage_gmacs["fpn"], 3) == 0.208


def test_width_scales_trunk_and_pyramid_and_keeps_the_head():
    model = SegmentationFPN(50, _vt_fpn(128), 11, width=0.25)
    assert model.stage5[-1].conv3.out_channels == 512 and model.fpn.lateral[0].out_channels == 64
    assert model.head.towers[0][0][0].out_channels == 128
    logits = model.eval()(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 11, 64, 64)
