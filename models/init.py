"""The documented init of the VT module's token-space weights (`numerics="centered"`, the default, and `"appendix"`).

Why: with the ICCV equations taken literally and PyTorch's default init, the softmax logits of the
recurrent tokenizers and the token transformer grow with the token norm, saturate at step 0 (all
attention on one pixel, identical tokens) and pass no gradient to K, Q and W_{T->R}. The appendix
divides every logit by sqrt(d); this module sets the weights so that, with that scaling, every logit
starts at the scale of its inputs' RMS (the usual unit-variance query/key convention of transformers):

- a weight that *is* a set of query vectors (the filter tokenizer's W_A: one filter per token, dotted
  with each pixel) gets entries N(0, gain^2): its logits x . w / sqrt(C) have the pixels' RMS times gain;
- a weight that *makes* queries or keys from tokens or pixels (K, Q, W_{T->R}, W_Q, W_K) gets entries
  N(0, gain^2 / fan_in): its outputs have the inputs' RMS times gain (LeCun/Xavier-normal scaling);
  so do the adapter W_{C->C_T} (gain 1) and the projector's value map W_V (gain 0.1).

The gains were chosen on random 224x224 input in train mode (tests/test_init_health.py measures the
result for every registered VT model): the filter tokenizer's attention peaks near 0.2 over the
14x14 pixels (a token is an average over a few dozen pixels, not one), the recurrent ones below 0.5,
and the initial cross-entropy stays within 2x of ln(num_classes).

Parameter shapes, and so parameters and MACs, are the same under every numerics.

The trunk's residual blocks have named init candidates (`RESIDUAL_INITS`): the initial weight of
the last BatchNorm of every residual block, the one that scales the block's branch before the sum.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FILTER_GAIN = 3.0
"""Gain of W_A's query vectors."""
PROJECTION_GAIN = 1.0
"""Gain of the key/query projections K, Q (transformer) and W_Q, W_K (projector)."""
RECURRENT_GAIN = 2.0
"""Gain of W_{T->R} under `numerics="appendix"`, which makes the recurrent tokenizer's filters from the
incoming tokens as they come. Under `centered` see CENTERED_RECURRENT_GAIN."""
CENTERED_RECURRENT_GAIN = 2.5
"""Gain of W_{T->R} under `numerics="centered"`: the incoming tokens' deviations and the pixels are
both at unit RMS there, so each filter W_R has entries of RMS 2.5 and its logits, / sqrt(C), an RMS
of about 2.5: the attention peaks near 0.2 over 14x14 pixels, as the filter tokenizer's. Chosen over
6 seeds x VT-ResNet-18/34/50/101 at 224x224 (gains 2, 2.5, 3, 4; 2.5 had the fewest token pairs of
cosine > 0.99 at a mean peak attention of 0.19-0.26): a larger gain puts two tokens on the same pixel,
a smaller one makes them broad averages, and both make tokens alike."""
VALUE_GAIN = 0.1
"""Gain of the projector's value map W_V (C_T -> C): the projected map starts close to the input
map (a near-identity residual, as a trunk block whose last BatchNorm starts at 0), so the next module's
pixels are not all shifted by one common vector, which would make them, and its tokens, alike.
Not zero: W_Q and W_K then still get a gradient at step 0."""
ADAPTER_GAIN = 1.0
"""Gain of the tokenizer's channel adapter W_{C->C_T}: tokens keep the RMS of the pixel averages."""
HEAD_STD = 0.01
"""Std of the token head's classifier weight (bias zero): small logits at step 0, so the initial
cross-entropy is close to ln(num_classes), as in timm's ViT/ConvNeXt heads."""


RESIDUAL_INITS: dict[str, tuple[float, float, float, float]] = {
    "zero": (0.0, 0.0, 0.0, 0.0),
    "small": (0.1, 0.1, 0.1, 0.1),
    "torchvision": (1.0, 1.0, 1.0, 1.0),
    "zero_stage4": (1.0, 1.0, 0.0, 1.0),
}
"""Named trunk inits: the initial weight (gamma) of the last BatchNorm of every residual block, per stage.

The four gains are those of torchvision's layer1..layer4, the paper's stages 2-5 (a VT-ResNet has
no stage 5: its VT module reads the stage-4 map).

- `zero`: each block starts as the identity (Goyal et al. 2017; torchvision's `zero_init_residual`,
  timm's `zero_init_last`); the branch's convolutions get no gradient until gamma moves off zero,
  which slows short schedules, VT-ResNet most (results/init_study). The FPNs' default.
- `small`: gamma 0.1: every branch learns from step 0, and the stage-4 map keeps nearly the scale
  it has under `zero`, so the VT module's attention starts where the health bars want it (measured
  at 224x224, random input, seed 0: worst peak attention 0.19 / 0.20 / 0.16 and token cosine 0.976 /
  0.978 / 0.985 on VT-ResNet-18 / 50 / 101; gamma 0.25 already gives VT-ResNet-101 a cosine of
  0.996, gamma 0.5 a peak of 0.57). A classification candidate: on VT-FPN it puts one token pair at
  cosine 0.991-0.993 (128x128, seed 0; `zero` 0.985), a hair over the worst-pair bar of 0.99.
- `torchvision`: gamma 1, torchvision's own init; the reference, not a healthy VT default: on
  VT-ResNet-50 the first tokenizer's attention peaks at 0.60 and tokens repeat (cosine 1.0).
- `zero_stage4`: torchvision's init except stage 4, whose blocks start as the identity. Why: the
  tokenizer's health depends on the map it reads, and that map's scale grows with the number of
  gamma-1 blocks before it; with stage 4 at zero the map is its first block's downsampling shortcut
  (1x1 conv + BN + ReLU, RMS ~0.71, as under `zero`) on every depth, whatever stages 2-3 start as.
  The baseline gets the same gains (its stage 5 keeps gamma 1, as the VT module keeps its own init).
  The default of ResNet and VT-ResNet (`CLASSIFIER_RESIDUAL_INIT`); not of VT-FPN, which reads every stage."""


CLASSIFIER_RESIDUAL_INIT = "zero_stage4"
"""The trunk init of ResNet and VT-ResNet unless `residual_init` says otherwise: the healthy
candidate under which VT-ResNet is slowed least against its baseline on short schedules.

Measured (results/init_study/NOTES.md; digits, 32x32, CIFAR stem, 3 seeds paired by seed):
at 3 epochs VT-ResNet-18 loses 14.2 points to ResNet-18 under `zero` (53.5 vs 67.7 %) and 6.9
under `zero_stage4` (89.3 vs 96.1 %), at 8 epochs 0.4 (98.3 vs 98.7 %); VT-ResNet-50 loses 24.8
points to ResNet-50 under `zero` (45.5 vs 70.3 %) and 5.4 under `zero_stage4` (48.2 vs 53.5 %).
The cost, stated: at 3 epochs ResNet-50 itself learns slower under `zero_stage4` than under
`zero`. It keeps the step-0 health bars on every VT-ResNet (`tests/test_init_health.py`), which
`torchvision` fails on VT-ResNet-34/50 (repeated tokens)."""
SEGMENTER_RESIDUAL_INIT = "zero"
"""The trunk init of FPN and VT-FPN unless `residual_init` says otherwise: a VT-FPN tokenizes every
stage, and with stages 2-3 at gamma 1 (`zero_stage4`) its first tokenizer's attention peaks at
0.53-0.54 at step 0, over the health bar of 0.5; `zero` keeps every stage's map at one scale."""


def residual_gains(residual_init: str) -> tuple[float, float, float, float]:
    """The last-BatchNorm weights of stages 2-5 under the named candidate (`RESIDUAL_INITS`)."""
    if residual_init not in RESIDUAL_INITS:
        raise ValueError(f"unknown residual_init {residual_init!r}; choose from {', '.join(RESIDUAL_INITS)}")
    return RESIDUAL_INITS[residual_init]


def init_residual_branches(trunk: nn.Module, gains: tuple[float, ...]) -> int:
    """Set the last BatchNorm weight of every BasicBlock / Bottleneck of the trunk's stages 2-5 to its stage's gain.

    `trunk` is a torchvision ResNet (layer1..layer4); `gains` one value per stage. Returns the number
    of blocks set. No random numbers are drawn, so the other weights are the same under every gain.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    count = 0
    stages = [trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4]
    if len(gains) != len(stages):
        raise ValueError(f"expected {len(stages)} stage gains, got {len(gains)}")
    for stage, gain in zip(stages, gains):
        for module in stage.modules():
            last = module.bn3 if isinstance(module, Bottleneck) else module.bn2 if isinstance(module, BasicBlock) else None
            if last is not None:
                with torch.no_grad():
                    last.weight.fill_(gain)
                count += 1
    return count


def init_query_vectors(weight: torch.Tensor, gain: float = FILTER_GAIN) -> None:
    """Entries N(0, gain^2): rows are query vectors dotted with C-channel inputs, logits / sqrt(C)."""
    with torch.no_grad():
        weight.normal_(0.0, gain)


def init_projection(weight: torch.Tensor, gain: float = PROJECTION_GAIN) -> None:
    """Entries N(0, gain^2 / fan_in): outputs keep the RMS of the inputs (times gain)."""
    fan_in = _fan_in(weight)
    with torch.no_grad():
        weight.normal_(0.0, gain / math.sqrt(fan_in))


def init_classifier(layer: nn.Linear, std: float = HEAD_STD) -> None:
    """A small classifier: weight N(0, std^2), bias zero."""
    with torch.no_grad():
        layer.weight.normal_(0.0, std)
        if layer.bias is not None:
            layer.bias.zero_()


def _fan_in(weight: torch.Tensor) -> int:
    """Inputs per output of a Linear weight (out, in) or a Conv2d weight (out, in / groups, kh, kw)."""
    if weight.dim() not in (2, 4):
        raise ValueError(f"expected a Linear or Conv2d weight, got shape {tuple(weight.shape)}")
    return weight[0].numel()
