"""Semantic-segmentation FPN and VT-FPN on ResNet-50/101 (sections 4.2 and 5.3, Tables 9-10).

Top-level children: `stem`, `stage2`..`stage5` (the ResNet), `fpn` (the module the paper's
"FPN GFLOPs" column measures), `head` (Detectron2's semantic FPN head, counted apart).

- FPN: `torchvision.ops.FeaturePyramidNetwork([256, 512, 1024, 2048], 256)`: lateral 1x1 convs,
  top-down nearest upsampling and sums, 3x3 output convs. 55.1 G MACs at 800x1216 and 12.9 G at
  473x473 (matches the paper's 55.1 G; its LIP table prints 12.8 G).
- VT-FPN: the FPN's 3x3 output convolutions and top-down pathway are replaced by VT modules: the
  lateral 1x1 convs are kept (they bring C2..C5 to 256 channels), each level gets a filter-based
  tokenizer (8 tokens, C_T = 1024), ONE transformer relates the 32 tokens of all levels (this is the
  cross-scale path), and a projector per level writes the tokens back. The paper's 8.5 G at
  800x1216 and 2.0 G at 473x473 are both ~105 k MACs per pyramid pixel; the lateral convs account for
  ~92.5 k of them, which leaves ~13 k per pixel for tokenizer (2 x 256 x 8), projector attention
  (8 x 256 + 8 x 256) and a W_Q grouped 16 ways (256 x 256 / 16, the appendix's grouped query conv).
- Head (Detectron2 SemSegFPNHead): per level max(1, log2(stride / 4)) blocks of 3x3 conv 128 +
  GroupNorm(32) + ReLU, each followed by 2x bilinear upsampling (to the next finer level's size, so
  inputs need not be multiples of 32) for levels coarser than stride 4; the levels are summed, a 1x1
  conv predicts the classes, and bilinear upsampling restores the input size.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from models.factories import ProjectorFactory, TokenizerFactory, TransformerFactory
from models.init import SEGMENTER_RESIDUAL_INIT
from models.projector import Projector
from models.resnet import make_stem, stage_channels, torchvision_trunk
from models.tokenizers import FilterTokenizer
from models.transformer import PaperTransformer


class FPN(FeaturePyramidNetwork):
    """torchvision's FeaturePyramidNetwork taking and returning a list of maps (finest first)."""

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        """[C2..C5] -> [P2..P5]."""
        out = super().forward(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return list(out.values())


class VTFPN(nn.Module):
    """VT-FPN module: lateral 1x1 convs, per-level tokenizers, one transformer, per-level projectors.

    Args:
        in_channels_list: channels of C2..C5.
        out_channels: pyramid channels C (256).
        num_tokens: tokens per level (8).
        token_channels: token channels C_T (1024).
        tokenizer: per-level tokenizer factory `tokenizer(C, C_T, L)`, one that needs no earlier tokens
            (`models.factories.tokenizer_factory`; default filter-based).
        transformer: factory `transformer(C_T)` of the one module over the tokens of all levels
            (`models.factories.transformer_factory`; default the paper's).
        projector: per-level projector factory `projector(C, C_T)`; default the projector with W_Q
            grouped 16 ways (the appendix's grouped query convolution). VT-FPN needs its projectors:
            without them the tokens would never be read.

    The default factories take `models.layers.DEFAULT_NUMERICS`; the zoo's `vt_fpn_r*` bind every
    factory to the model's options, `numerics` among them (VT-FPN has filter tokenizers and value
    maps, so `centered` and `appendix` build the same model).
    """

    def __init__(self, in_channels_list: list[int], out_channels: int = 256, *, num_tokens: int = 8,
                 token_channels: int = 1024, tokenizer: TokenizerFactory = FilterTokenizer,
                 transformer: TransformerFactory = PaperTransformer,
                 projector: ProjectorFactory = partial(Projector, groups=16)):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels_list)
        self.tokenizers = nn.ModuleList(tokenizer(out_channels, token_channels, num_tokens) for _ in in_channels_list)
        self.transformer = transformer(token_channels)
        self.projectors = nn.ModuleList(projector(out_channels, token_channels) for _ in in_channels_list)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """[C2..C5] -> [P2..P5], each with `out_channels` channels."""
        maps = [conv(f) for conv, f in zip(self.lateral, feats)]
        tokens = [tok(m)[0] for tok, m in zip(self.tokenizers, maps)]  # each (B, L, C_T)
        sizes = [t.shape[1] for t in tokens]
        mixed = self.transformer(torch.cat(tokens, dim=1)).split(sizes, dim=1)  # all levels together
        return [proj(m, t) for proj, m, t in zip(self.projectors, maps, mixed)]


class SemanticFPNHead(nn.Module):
    """Detectron2's semantic FPN head: per-level conv/GN/ReLU/upsample towers to stride 4, sum, 1x1.

    Args:
        in_channels: pyramid channels.
        num_classes: output classes.
        channels: tower width (128).
        num_levels: pyramid levels, finest (stride 4) first.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, num_levels: int = 4):
        super().__init__()
        self.towers = nn.ModuleList(
            nn.ModuleList(_conv_gn_relu(in_channels if k == 0 else channels, channels) for k in range(max(1, level)))
            for level in range(num_levels)
        )
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """[P2..P5] and the input (H, W) -> logits (B, num_classes, H, W)."""
        out = None
        for level, (tower, x) in enumerate(zip(self.towers, feats)):
            for step, block in enumerate(tower):
                x = block(x)
                if level > 0:  # 2x up, to the size of the next finer level
                    x = F.interpolate(x, size=feats[level - 1 - step].shape[-2:], mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return F.interpolate(self.predictor(out), size=image_size, mode="bilinear", align_corners=False)


def _scaled(channels: int, width: float) -> int:
    """`channels` x `width`, rounded, at least 1 (width 1 leaves it unchanged)."""
    return channels if width == 1.0 else max(1, round(channels * width))


def _conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(32, cout), nn.ReLU(inplace=True))


class SegmentationFPN(nn.Module):
    """ResNet backbone -> FPN or VT-FPN module -> semantic FPN head, logits at the input size.

    Args:
        depth: 50 or 101.
        fpn: a factory `fpn(in_channels_list, out_channels) -> nn.Module` mapping [C2..C5] to [P2..P5].
        num_classes: segmentation classes.
        fpn_channels: pyramid channels (256).
        head_channels: head tower width (128).
        residual_init: the trunk init (`models.init.RESIDUAL_INITS`; default `SEGMENTER_RESIDUAL_INIT`,
            every block at the identity, see `models.resnet.torchvision_trunk`).
        width: channel multiplier of the trunk (stem and every stage, `models.resnet.torchvision_trunk`)
            and of the pyramid channels (`fpn_channels`); 1 (default) is the paper's network. The head
            keeps `head_channels`, and a VT-FPN's `token_channels` are set by its own option (not
            scaled implicitly), as for VT-ResNet. For CPU studies, which say so.
    """

    task = "seg"
    default_input_size = 512

    def __init__(self, depth: int, fpn, num_classes: int, fpn_channels: int = 256, head_channels: int = 128,
                 residual_init: str = SEGMENTER_RESIDUAL_INIT, width: float = 1.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        trunk = torchvision_trunk(depth, width, residual_init=residual_init)
        self.num_classes = num_classes
        self.stem = make_stem(trunk, "imagenet")
        self.stage2, self.stage3, self.stage4, self.stage5 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        pyramid = _scaled(fpn_channels, width)
        self.fpn = fpn(stage_channels(trunk), pyramid)
        self.head = SemanticFPNHead(pyramid, num_classes, head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes, H, W)."""
        c2 = self.stage2(self.stem(x))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return self.head(self.fpn([c2, c3, c4, c5]), x.shape[-2:])
