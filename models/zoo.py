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
and what the alternatives give). VT-ResNet options:

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
- zero_init_residual (True, every model, baselines included): each residual block of the trunk
  starts as the identity (`models.resnet.torchvision_trunk`); False is torchvision's default init.
- width (1.0, classification models): channel multiplier of the stem and stages (0.25 for the CPU
  accuracy studies, which say so); a VT stage then sees C x width channels, and `token_channels`
  is set by the study (it is not scaled implicitly).
"""

from __future__ import annotations

from functools import partial

from models.fpn import FPN, VTFPN, SegmentationFPN
from models.layers import DEFAULT_NUMERICS, check_numerics
from models.registry import Family, register_model
from models.resnet import STEMS, ResNetClassifier, VTResNet
from models.transformer import TRANSFORMERS
from models.vt import TokenHead, make_vt_stage


# The four families, each stated once: every variant's facts (models.registry.ModelFacts) come from
# its family and the depth and baseline given at its registration, never from its name.
_TRUNK = ("stem", "stage2", "stage3", "stage4")
RESNET = Family("resnet", task="cls", stages=(*_TRUNK, "stage5", "head"), replaced="stage5")
VT_RESNET = Family("vt_resnet", task="cls", stages=(*_TRUNK, "vt", "head"), replaced="vt")
FPN_SEG = Family("fpn", task="seg", stages=(*_TRUNK, "stage5", "fpn", "head"), replaced="fpn")
VT_FPN_SEG = Family("vt_fpn", task="seg", stages=(*_TRUNK, "stage5", "fpn", "head"), replaced="fpn")


def _resnet(depth: int, num_classes: int, stem: str, zero_init_residual: bool, width: float) -> ResNetClassifier:
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")
    return ResNetClassifier(depth, num_classes=num_classes, stem=stem, zero_init_residual=zero_init_residual,
                            width=width)


@register_model(family=RESNET, depth=18)
def resnet18(*, num_classes: int = 1000, stem: str = "imagenet", zero_init_residual: bool = True,
             width: float = 1.0):
    """torchvision ResNet-18 with stage children."""
    return _resnet(18, num_classes, stem, zero_init_residual, width)


@register_model(family=RESNET, depth=34)
def resnet34(*, num_classes: int = 1000, stem: str = "imagenet", zero_init_residual: bool = True,
             width: float = 1.0):
    """torchvision ResNet-34 with stage children."""
    return _resnet(34, num_classes, stem, zero_init_residual, width)


@register_model(family=RESNET, depth=50)
def resnet50(*, num_classes: int = 1000, stem: str = "imagenet", zero_init_residual: bool = True,
             width: float = 1.0):
    """torchvision ResNet-50 with stage children."""
    return _resnet(50, num_classes, stem, zero_init_residual, width)


@register_model(family=RESNET, depth=101)
def resnet101(*, num_classes: int = 1000, stem: str = "imagenet", zero_init_residual: bool = True,
             width: float = 1.0):
    """torchvision ResNet-101 with stage children."""
    return _resnet(101, num_classes, stem, zero_init_residual, width)


def _vt_resnet(depth: int, *, num_classes: int, stem: str, num_tokens: int, token_channels: int, tokenizer: str,
               recurrent: bool, transformer: str, projector: bool, last_projector: bool, num_modules: int,
               qk_channels, heads, kqv_groups, ff_channels, proj_channels, proj_groups: int, refresh: str,
               kmeans_iters: int, head_hidden, numerics: str, zero_init_residual: bool, width: float) -> VTResNet:
    """Validate the options and assemble a VT-ResNet."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")
    for name, value in (("num_tokens", num_tokens), ("token_channels", token_channels),
                        ("num_modules", num_modules), ("proj_groups", proj_groups)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if transformer not in TRANSFORMERS:
        raise ValueError(f"unknown transformer {transformer!r}; choose from {', '.join(TRANSFORMERS)}")
    tokenizer, recurrent = _tokenization(tokenizer, recurrent)
    transformer_kwargs = _transformer_kwargs(transformer, qk_channels, heads, kqv_groups, ff_channels)
    vt = partial(
        make_vt_stage, num_modules=num_modules, num_tokens=num_tokens, token_channels=token_channels,
        tokenizer=tokenizer, recurrent=recurrent, transformer=transformer, projector=projector,
        last_projector=last_projector, transformer_kwargs=transformer_kwargs,
        projector_kwargs={"channels": proj_channels, "groups": proj_groups},
        tokenizer_kwargs={"refresh": refresh, "kmeans_iters": kmeans_iters}, numerics=check_numerics(numerics),
    )
    head = partial(TokenHead, token_channels, num_classes, head_hidden, numerics)
    return VTResNet(depth, vt=vt, head=head, num_classes=num_classes, stem=stem, zero_init_residual=zero_init_residual,
                    width=width)


def _tokenization(tokenizer: str, recurrent: bool) -> tuple[str, bool]:
    """Map `tokenizer="recurrent"` (DESIGN.md's name for the paper's scheme) onto its two options.

    "recurrent" is the ICCV default spelled out: a filter-based first module, recurrent tokenizers
    after it (section 3.1); it contradicts `recurrent=False`.
    """
    if tokenizer != "recurrent":
        return tokenizer, recurrent
    if not recurrent:
        raise ValueError("tokenizer='recurrent' (filter-based first, recurrent after) contradicts recurrent=False")
    return "filter", True


def _transformer_kwargs(kind: str, qk_channels, heads, kqv_groups, ff_channels) -> dict:
    """Options of the chosen transformer; an mhsa-only option on another transformer is an error."""
    if kind == "mhsa":
        return {"qk_channels": qk_channels, "heads": heads or 16, "groups": kqv_groups or 8,
                "ff_channels": ff_channels}
    if heads is not None or kqv_groups is not None:
        raise ValueError(f"heads and kqv_groups apply only to transformer='mhsa', not {kind!r}")
    if kind == "paper":
        return {"qk_channels": qk_channels, "ff_channels": ff_channels}
    return {}


@register_model(family=VT_RESNET, depth=18, baseline="resnet18")
def vt_resnet18(*, num_classes: int = 1000, stem: str = "imagenet", num_tokens: int = 16,
                token_channels: int = 1024, tokenizer: str = "filter", recurrent: bool = True,
                transformer: str = "paper", projector: bool = True, last_projector: bool = False,
                num_modules: int = 2, qk_channels: int | None = None, heads: int | None = None,
                kqv_groups: int | None = None, ff_channels: int | None = None, proj_channels: int | None = None,
                proj_groups: int = 1, refresh: str = "all", kmeans_iters: int = 3, head_hidden: int | None = None,
                numerics: str = DEFAULT_NUMERICS, zero_init_residual: bool = True, width: float = 1.0):
    """VT-ResNet-18: stage 5 -> 2 VT modules at 14x14, C = 256 (Tables 2 and 8)."""
    return _vt_resnet(18, **locals())


@register_model(family=VT_RESNET, depth=34, baseline="resnet34")
def vt_resnet34(*, num_classes: int = 1000, stem: str = "imagenet", num_tokens: int = 16,
                token_channels: int = 1024, tokenizer: str = "filter", recurrent: bool = True,
                transformer: str = "paper", projector: bool = True, last_projector: bool = False,
                num_modules: int = 3, qk_channels: int | None = None, heads: int | None = None,
                kqv_groups: int | None = None, ff_channels: int | None = None, proj_channels: int | None = None,
                proj_groups: int = 1, refresh: str = "all", kmeans_iters: int = 3, head_hidden: int | None = None,
                numerics: str = DEFAULT_NUMERICS, zero_init_residual: bool = True, width: float = 1.0):
    """VT-ResNet-34: stage 5 -> 3 VT modules at 14x14, C = 256 (Tables 2 and 8)."""
    return _vt_resnet(34, **locals())


@register_model(family=VT_RESNET, depth=50, baseline="resnet50")
def vt_resnet50(*, num_classes: int = 1000, stem: str = "imagenet", num_tokens: int = 16,
                token_channels: int = 1024, tokenizer: str = "filter", recurrent: bool = True,
                transformer: str = "paper", projector: bool = True, last_projector: bool = False,
                num_modules: int = 3, qk_channels: int | None = None, heads: int | None = None,
                kqv_groups: int | None = None, ff_channels: int | None = None, proj_channels: int | None = 256,
                proj_groups: int = 16, refresh: str = "all", kmeans_iters: int = 3, head_hidden: int | None = None,
                numerics: str = DEFAULT_NUMERICS, zero_init_residual: bool = True, width: float = 1.0):
    """VT-ResNet-50: stage 5 -> 3 VT modules at 14x14, C = 1024 (Table 8)."""
    return _vt_resnet(50, **locals())


@register_model(family=VT_RESNET, depth=101, baseline="resnet101")
def vt_resnet101(*, num_classes: int = 1000, stem: str = "imagenet", num_tokens: int = 16,
                 token_channels: int = 1024, tokenizer: str = "filter", recurrent: bool = True,
                 transformer: str = "paper", projector: bool = True, last_projector: bool = False,
                 num_modules: int = 3, qk_channels: int | None = None, heads: int | None = None,
                 kqv_groups: int | None = None, ff_channels: int | None = None, proj_channels: int | None = 256,
                 proj_groups: int = 16, refresh: str = "all", kmeans_iters: int = 3, head_hidden: int | None = None,
                numerics: str = DEFAULT_NUMERICS, zero_init_residual: bool = True, width: float = 1.0):
    """VT-ResNet-101: stage 5 -> 3 VT modules at 14x14, C = 1024 (Table 8)."""
    return _vt_resnet(101, **locals())


def _check_seg(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")


@register_model(family=FPN_SEG, depth=50)
def fpn_r50(*, num_classes: int = 171, zero_init_residual: bool = True):
    """Semantic FPN on ResNet-50 (torchvision FPN + Detectron2 head; Tables 9-10)."""
    _check_seg(num_classes)
    return SegmentationFPN(50, partial(FPN), num_classes, zero_init_residual=zero_init_residual)


@register_model(family=FPN_SEG, depth=101)
def fpn_r101(*, num_classes: int = 171, zero_init_residual: bool = True):
    """Semantic FPN on ResNet-101 (torchvision FPN + Detectron2 head; Tables 9-10)."""
    _check_seg(num_classes)
    return SegmentationFPN(101, partial(FPN), num_classes, zero_init_residual=zero_init_residual)


def _vt_fpn(depth: int, *, num_classes: int, num_tokens: int, token_channels: int, tokenizer: str,
            transformer: str, qk_channels, heads, kqv_groups, ff_channels, proj_channels, proj_groups: int,
            kmeans_iters: int, numerics: str, zero_init_residual: bool) -> SegmentationFPN:
    """Validate the options and assemble a VT-FPN."""
    _check_seg(num_classes)
    for name, value in (("num_tokens", num_tokens), ("token_channels", token_channels), ("proj_groups", proj_groups)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if transformer not in TRANSFORMERS:
        raise ValueError(f"unknown transformer {transformer!r}; choose from {', '.join(TRANSFORMERS)}")
    fpn = partial(
        VTFPN, num_tokens=num_tokens, token_channels=token_channels, tokenizer=tokenizer, transformer=transformer,
        transformer_kwargs=_transformer_kwargs(transformer, qk_channels, heads, kqv_groups, ff_channels),
        proj_channels=proj_channels, proj_groups=proj_groups, kmeans_iters=kmeans_iters,
        numerics=check_numerics(numerics),
    )
    return SegmentationFPN(depth, fpn, num_classes, zero_init_residual=zero_init_residual)


@register_model(family=VT_FPN_SEG, depth=50, baseline="fpn_r50")
def vt_fpn_r50(*, num_classes: int = 171, num_tokens: int = 8, token_channels: int = 1024, tokenizer: str = "filter",
               transformer: str = "paper", qk_channels: int | None = None, heads: int | None = None,
               kqv_groups: int | None = None, ff_channels: int | None = None, proj_channels: int | None = None,
               proj_groups: int = 16, kmeans_iters: int = 3, numerics: str = DEFAULT_NUMERICS,
               zero_init_residual: bool = True):
    """VT-FPN on ResNet-50: 8 tokens x 1024 channels per level, one transformer (Tables 9-10)."""
    return _vt_fpn(50, **locals())


@register_model(family=VT_FPN_SEG, depth=101, baseline="fpn_r101")
def vt_fpn_r101(*, num_classes: int = 171, num_tokens: int = 8, token_channels: int = 1024, tokenizer: str = "filter",
                transformer: str = "paper", qk_channels: int | None = None, heads: int | None = None,
                kqv_groups: int | None = None, ff_channels: int | None = None, proj_channels: int | None = None,
                proj_groups: int = 16, kmeans_iters: int = 3, numerics: str = DEFAULT_NUMERICS,
               zero_init_residual: bool = True):
    """VT-FPN on ResNet-101: 8 tokens x 1024 channels per level, one transformer (Tables 9-10)."""
    return _vt_fpn(101, **locals())
