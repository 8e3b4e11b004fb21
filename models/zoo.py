"""The registered variants: resnet18/34/50/101, vt_resnet18/34/50/101, fpn_r50/101, vt_fpn_r50/101.

Default reading of VT-ResNet (the arithmetic and the alternatives are in results/fidelity/fidelity.md):
C_T = 1024, L = 16; first tokenizer filter-based, later ones recurrent (ICCV eqs. 1-2, an adapter
C -> C_T after the pixel average, W_{T->R} in R^{C_T x C}); the ICCV transformer (eqs. 3-4) with
K, Q of C_T / 2 = 512 output channels and F1, F2 of C_T x C_T; the ICCV projector (eq. 5) with
query/key width 256 and a value map C_T -> C; no projector in the last module (its output would never
be read); head = mean of the tokens + linear. Measured at 224x224 (paper convention, fvcore):
VT-R18 1.544 G / 11.48 M (Table 8: 1.569 / 11.7), VT-R34 3.246 G / 21.13 M (Table 2: 3.299 / 21.8),
VT-R50 3.507 G / 21.68 M (Table 8: 3.412 / 21.4), VT-R101 7.219 G / 40.67 M (Table 8: 7.129 / 41.5).

Every choice the paper leaves open is an explicit option with a documented default; the defaults
are the reading that lands on the paper's complexity tables (results/fidelity/ shows the arithmetic
and what the alternatives give). Each family's options are one frozen dataclass below
(`VTResNetOptions`, ...) whose fields are the keyword options; a variant is that config with the
few fields it changes, registered with its facts. VT-ResNet options:

- num_tokens (16), token_channels C_T (1024): section 5.1 and the appendix.
- tokenizer: the first module's tokenizer (filter | pooling | clustering; default filter), or
  `recurrent`: the paper's scheme spelled out (filter-based first module, recurrent after).
- recurrent (True): later modules use the recurrent tokenizer; False repeats `tokenizer` (Table 4).
- transformer: paper | mhsa | none (Table 5); default `paper` (the ICCV equations) for all four.
- projector (True; Table 7), last_projector (False: the last module's projected map is never read).
- num_modules (2/3/3/3 for R18/34/50/101, section 5.1).
- qk_channels: key/query width of the transformer (default C_T / 2, appendix).
- heads (mhsa only, default 16), kqv_groups (mhsa only, default 8): appendix reading.
- ff_channels: feed-forward hidden width; `paper`: default C_T (F1, F2 in R^{C x C});
  `mhsa`: default None = one C_T x C_T convolution (appendix transcription).
- proj_channels: query/key width d of the projector; default None = C = 256 for R18/R34 (the ICCV
  W_Q, W_K in R^{C x C}); 256 for R50/R101 as well (C = 1024 there), the same width on every backbone.
- proj_groups: groups of the per-pixel W_Q; default 1 for R18/R34, 16 for R50/R101 (the appendix's
  grouped query convolution): with C = 1024, W_Q on all 196 pixels is the costliest weight of a module.
- refresh: recurrent tokenizer refreshes `all` tokens (ICCV, default) or `half` (appendix).
- kmeans_iters (3): Lloyd iterations of the clustering tokenizer.
- head_hidden (None): width of an optional Linear-ReLU layer in the token head (the paper has one
  linear layer; results/fidelity shows what a 2048-wide one would add).
- numerics ("centered"): every softmax logit of tokenizers, transformer and projector divided by
  sqrt(d), the token-space weights initialised as documented in `models.init` (the arXiv appendix's
  scaling), plus two parameter-free centering steps of vtbench's own, not in the paper: recurrent
  filters from the tokens' deviations from their mean, and a projector without value map adding
  the tokens' deviations (the reading that trains; `models.layers.NUMERICS` says why). "appendix":
  the scaling and init alone (the default before 2026-12-04). "iccv": the ICCV equations as
  printed, no scaling, PyTorch's default init (it collapses the recurrent tokenizers at init;
  tests/test_init_health.py). Parameters and MACs are the same under all three.
- attention_impl ("reference"): the form the VT module's attention steps run in
  (`models.layers.ATTENTION_IMPLS`): `reference` (the equations written out, attention maps formed),
  `sdpa` (`scaled_dot_product_attention`, fused where the device has a kernel) or `fused` (the
  tokenizers through one Triton kernel on CUDA, `models.kernels`; the rest as `sdpa`). The same
  parameters, state dict, initial weights, MACs and outputs (up to float summation order); only
  speed differs (experiments/speed_attention_cpu.yaml measures it).
- residual_init (every model, baselines included): the trunk init, `models.init.RESIDUAL_INITS`
  (zero | small | torchvision | zero_stage4): the initial weight of the last BatchNorm of each
  residual block, per stage. Default `zero_stage4` for ResNet and VT-ResNet (torchvision's init,
  stage 4 at the identity: chosen by results/init_study), `zero` for FPN and VT-FPN (every block at
  the identity: VT-FPN reads every stage); `torchvision` is torchvision's own init.
- width (1.0, every model): channel multiplier of the stem and stages (0.25 for the CPU
  accuracy studies, which say so); FPNs scale their pyramid channels too (`models.fpn.SegmentationFPN`);
  a VT stage then sees C x width channels, and `token_channels`
  is set by the study (it is not scaled implicitly).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Callable

from torch import nn

from models.factories import (FIRST_TOKENIZERS, ProjectorFactory, TokenizerFactory, TransformerFactory,
                              check_choice, tokenizer_factory, transformer_factory)
from models.fpn import FPN, VTFPN, SegmentationFPN
from models.init import CLASSIFIER_RESIDUAL_INIT, SEGMENTER_RESIDUAL_INIT
from models.layers import DEFAULT_ATTENTION_IMPL, DEFAULT_NUMERICS, check_attention_impl, check_numerics
from models.projector import Projector
from models.registry import Family, register_model
from models.resnet import STEMS, ResNetClassifier, VTResNet
from models.vt import TokenHead, make_vt_stage


# The four families, each stated once: every variant's facts (models.registry.ModelFacts) come from
# its family and the depth and baseline given at its registration, never from its name.
_TRUNK = ("stem", "stage2", "stage3", "stage4")
RESNET = Family("resnet", task="cls", stages=(*_TRUNK, "stage5", "head"), replaced="stage5")
VT_RESNET = Family("vt_resnet", task="cls", stages=(*_TRUNK, "vt", "head"), replaced="vt")
FPN_SEG = Family("fpn", task="seg", stages=(*_TRUNK, "stage5", "fpn", "head"), replaced="fpn")
VT_FPN_SEG = Family("vt_fpn", task="seg", stages=(*_TRUNK, "stage5", "fpn", "head"), replaced="fpn")


# Each family's options, as frozen configs whose defaults its variants share; a variant is its
# family's config with the few fields it changes (`dataclasses.replace`). The fields, in order, are
# the variant's keyword options (`build_model` overrides; `model_options` lists them).
@dataclass(frozen=True)
class ResNetOptions:
    """Options of a (baseline) ResNet classifier."""

    num_classes: int = 1000
    stem: str = "imagenet"
    width: float = 1.0
    residual_init: str = CLASSIFIER_RESIDUAL_INIT


@dataclass(frozen=True)
class VTResNetOptions:
    """Options of a VT-ResNet (the module docstring says what each means and why its default)."""

    num_classes: int = 1000
    stem: str = "imagenet"
    num_tokens: int = 16
    token_channels: int = 1024
    tokenizer: str = "filter"
    recurrent: bool = True
    transformer: str = "paper"
    projector: bool = True
    last_projector: bool = False
    num_modules: int = 3
    qk_channels: int | None = None
    heads: int | None = None
    kqv_groups: int | None = None
    ff_channels: int | None = None
    proj_channels: int | None = None
    proj_groups: int = 1
    refresh: str = "all"
    kmeans_iters: int = 3
    head_hidden: int | None = None
    numerics: str = DEFAULT_NUMERICS
    width: float = 1.0
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    residual_init: str = CLASSIFIER_RESIDUAL_INIT


@dataclass(frozen=True)
class FPNOptions:
    """Options of a semantic FPN."""

    num_classes: int = 171
    width: float = 1.0
    residual_init: str = SEGMENTER_RESIDUAL_INIT


@dataclass(frozen=True)
class VTFPNOptions:
    """Options of a VT-FPN: 8 tokens x 1024 channels per level, one transformer (Tables 9-10)."""

    num_classes: int = 171
    num_tokens: int = 8
    token_channels: int = 1024
    tokenizer: str = "filter"
    transformer: str = "paper"
    qk_channels: int | None = None
    heads: int | None = None
    kqv_groups: int | None = None
    ff_channels: int | None = None
    proj_channels: int | None = None
    proj_groups: int = 16
    kmeans_iters: int = 3
    numerics: str = DEFAULT_NUMERICS
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    width: float = 1.0
    residual_init: str = SEGMENTER_RESIDUAL_INIT


# Section 5.1: two VT modules on ResNet-18, three on the others. R50/R101 (C = 1024): the projector's
# query/key width 256 and a W_Q grouped 16 ways (the appendix), as on R18/R34 where C = 256.
VT_R18 = replace(VTResNetOptions(), num_modules=2)
VT_R_BOTTLENECK = replace(VTResNetOptions(), proj_channels=256, proj_groups=16)


def _resnet(depth: int, o: ResNetOptions) -> ResNetClassifier:
    """Validate the options and assemble a ResNet."""
    _check_stem(o.stem)
    return ResNetClassifier(depth, num_classes=o.num_classes, stem=o.stem, width=o.width,
                            residual_init=o.residual_init)


def _vt_resnet(depth: int, o: VTResNetOptions) -> VTResNet:
    """Validate the options and assemble a VT-ResNet."""
    _check_stem(o.stem)
    _check_positive(o, "num_tokens", "token_channels", "num_modules", "proj_groups")
    check_numerics(o.numerics)
    check_attention_impl(o.attention_impl)
    transformer = _transformer(o)
    tokenizer, later_tokenizer = _vt_tokenizers(o)
    vt = partial(
        make_vt_stage, num_modules=o.num_modules, num_tokens=o.num_tokens, token_channels=o.token_channels,
        tokenizer=tokenizer, later_tokenizer=later_tokenizer, transformer=transformer,
        projector=_projector(o) if o.projector else None, last_projector=o.last_projector,
    )
    head = partial(TokenHead, o.token_channels, o.num_classes, o.head_hidden, o.numerics)
    return VTResNet(depth, vt=vt, head=head, num_classes=o.num_classes, stem=o.stem, width=o.width,
                    residual_init=o.residual_init)


# A VT-ResNet's `tokenizer` option: a first module's tokenizer, or `recurrent` (the paper's scheme spelled out).
VT_RESNET_TOKENIZERS = (*FIRST_TOKENIZERS, "recurrent")


def _vt_tokenizers(o: VTResNetOptions) -> tuple[TokenizerFactory, TokenizerFactory | None]:
    """The first module's tokenizer and the later modules' (None: the first one's again).

    `tokenizer="recurrent"` (DESIGN.md's name for the paper's scheme) is the ICCV default spelled
    out: a filter-based first module, recurrent tokenizers after it (section 3.1); it contradicts
    `recurrent=False`.
    """
    first, recurrent = o.tokenizer, o.recurrent
    check_choice("tokenizer", first, VT_RESNET_TOKENIZERS)
    if first == "recurrent":
        if not recurrent:
            raise ValueError("tokenizer='recurrent' (filter-based first, recurrent after) contradicts recurrent=False")
        first = "filter"
    make = partial(tokenizer_factory, refresh=o.refresh, kmeans_iters=o.kmeans_iters, numerics=o.numerics,
                   attention_impl=o.attention_impl)
    return make(first, choices=FIRST_TOKENIZERS), (make("recurrent") if recurrent else None)


def _transformer(o: VTResNetOptions | VTFPNOptions) -> TransformerFactory:
    """The transformer factory `transformer(C_T)` of a VT model's options."""
    return transformer_factory(o.transformer, qk_channels=o.qk_channels, ff_channels=o.ff_channels, heads=o.heads,
                               kqv_groups=o.kqv_groups, numerics=o.numerics, attention_impl=o.attention_impl)


def _projector(o: VTResNetOptions | VTFPNOptions) -> ProjectorFactory:
    """The projector factory `projector(C, C_T)` of a VT model's options."""
    return partial(Projector, channels=o.proj_channels, groups=o.proj_groups, numerics=o.numerics,
                   attention_impl=o.attention_impl)


def _fpn(depth: int, o: FPNOptions) -> SegmentationFPN:
    """Validate the options and assemble a semantic FPN."""
    _check_seg(o.num_classes)
    return SegmentationFPN(depth, FPN, o.num_classes, residual_init=o.residual_init, width=o.width)


def _vt_fpn(depth: int, o: VTFPNOptions) -> SegmentationFPN:
    """Validate the options and assemble a VT-FPN."""
    _check_seg(o.num_classes)
    _check_positive(o, "num_tokens", "token_channels", "proj_groups")
    check_numerics(o.numerics)
    check_attention_impl(o.attention_impl)
    transformer = _transformer(o)
    tokenizer = tokenizer_factory(o.tokenizer, kmeans_iters=o.kmeans_iters, numerics=o.numerics,
                                  attention_impl=o.attention_impl, choices=FIRST_TOKENIZERS)
    fpn = partial(VTFPN, num_tokens=o.num_tokens, token_channels=o.token_channels, tokenizer=tokenizer,
                  transformer=transformer, projector=_projector(o))
    return SegmentationFPN(depth, fpn, o.num_classes, residual_init=o.residual_init, width=o.width)


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")


def _check_positive(o, *names: str) -> None:
    for name in names:
        value = getattr(o, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_seg(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")


def _variant(name: str, build: Callable[[int, object], nn.Module], options, *, family: Family, depth: int,
             baseline: str | None = None, doc: str) -> None:
    """Register `name`: `build(depth, options)`, each keyword override replacing one field of `options`.

    The factory's signature is the options' fields with this variant's values as defaults, so the
    registry reads its defaults (`model_options`) and checks overrides from it as from any factory.
    """

    def factory(**overrides) -> nn.Module:
        return build(depth, replace(options, **overrides))

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    factory.__signature__ = inspect.Signature([
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(options, f.name), annotation=f.type)
        for f in fields(options)
    ])
    register_model(factory, family=family, depth=depth, baseline=baseline)


_variant("resnet18", _resnet, ResNetOptions(), family=RESNET, depth=18,
         doc="torchvision ResNet-18 with stage children.")
_variant("resnet34", _resnet, ResNetOptions(), family=RESNET, depth=34,
         doc="torchvision ResNet-34 with stage children.")
_variant("resnet50", _resnet, ResNetOptions(), family=RESNET, depth=50,
         doc="torchvision ResNet-50 with stage children.")
_variant("resnet101", _resnet, ResNetOptions(), family=RESNET, depth=101,
         doc="torchvision ResNet-101 with stage children.")

_variant("vt_resnet18", _vt_resnet, VT_R18, family=VT_RESNET, depth=18, baseline="resnet18",
         doc="VT-ResNet-18: stage 5 -> 2 VT modules at 14x14, C = 256 (Tables 2 and 8).")
_variant("vt_resnet34", _vt_resnet, VTResNetOptions(), family=VT_RESNET, depth=34, baseline="resnet34",
         doc="VT-ResNet-34: stage 5 -> 3 VT modules at 14x14, C = 256 (Tables 2 and 8).")
_variant("vt_resnet50", _vt_resnet, VT_R_BOTTLENECK, family=VT_RESNET, depth=50, baseline="resnet50",
         doc="VT-ResNet-50: stage 5 -> 3 VT modules at 14x14, C = 1024 (Table 8).")
_variant("vt_resnet101", _vt_resnet, VT_R_BOTTLENECK, family=VT_RESNET, depth=101, baseline="resnet101",
         doc="VT-ResNet-101: stage 5 -> 3 VT modules at 14x14, C = 1024 (Table 8).")

_variant("fpn_r50", _fpn, FPNOptions(), family=FPN_SEG, depth=50,
         doc="Semantic FPN on ResNet-50 (torchvision FPN + Detectron2 head; Tables 9-10).")
_variant("fpn_r101", _fpn, FPNOptions(), family=FPN_SEG, depth=101,
         doc="Semantic FPN on ResNet-101 (torchvision FPN + Detectron2 head; Tables 9-10).")

_variant("vt_fpn_r50", _vt_fpn, VTFPNOptions(), family=VT_FPN_SEG, depth=50, baseline="fpn_r50",
         doc="VT-FPN on ResNet-50: 8 tokens x 1024 channels per level, one transformer (Tables 9-10).")
_variant("vt_fpn_r101", _vt_fpn, VTFPNOptions(), family=VT_FPN_SEG, depth=101, baseline="fpn_r101",
         doc="VT-FPN on ResNet-101: 8 tokens x 1024 channels per level, one transformer (Tables 9-10).")
