"""The VT module (tokenizer -> transformer -> projector), a VT stage of stacked modules, the token head.

A VT stage replaces ResNet's stage 5 (section 4.1): it acts on the stage-4 map (14x14 at 224x224),
the first module's tokenizer is filter-based and the later ones recurrent (unless told otherwise),
and the classification head averages the last module's output tokens and applies a linear layer.

Layouts: feature maps (B, C, H, W); tokens (B, L, C_T), token-major (the paper's row layout), so
every per-token weight is an `nn.Linear`, one GEMM over all B*L token rows (faster on CPU than the
former channels-first 1x1 Conv1d, which ran B skinny GEMMs of L columns); attention (B, L, HW).
`token_attention` reshapes the latter to (B, L, H, W); a recurrent tokenizer with `refresh="half"` reports only the L/2 tokens it recomputes.

`attention_impl` (`models.layers.ATTENTION_IMPLS`) picks the form the attention steps of tokenizers,
transformer and projector run in; `attention_form(model, impl)` switches a built model's modules for
a block (`token_attention` runs the reference form, which forms the maps).

The last module of a stage that feeds a token head has no projector by default
(`last_projector=False`): its projected feature map would never be read, so its weights would
receive no gradient and its MACs would do no work.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from models.factories import ProjectorFactory, TokenizerFactory, TransformerFactory
from models.init import init_classifier
from models.layers import DEFAULT_NUMERICS, check_attention_impl, is_scaled
from models.projector import Projector
from models.tokenizers import Tokenizer


class VTModule(nn.Module):
    """One visual-transformer module: tokens from X (and earlier tokens), relate them, project back.

    Args:
        tokenizer: a `Tokenizer`.
        transformer: a module mapping tokens (B, L, C_T) to tokens.
        projector: a `Projector`, or None to leave the feature map unchanged.
    """

    def __init__(self, tokenizer: Tokenizer, transformer: nn.Module, projector: Projector | None):
        super().__init__()
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.projector = projector

    def forward(self, x: torch.Tensor, tokens_in: torch.Tensor | None = None):
        """x (B, C, H, W), tokens_in (B, L, C_T) or None -> (x_out, tokens_out)."""
        tokens, _ = self.tokenizer(x, tokens_in)
        tokens = self.transformer(tokens)
        if self.projector is not None:
            x = self.projector(x, tokens)
        return x, tokens


class VTStage(nn.Module):
    """A stack of VT modules; returns the last feature map and the last tokens."""

    def __init__(self, modules: list[VTModule]):
        super().__init__()
        self.blocks = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor):
        """x (B, C, H, W) -> (x_out, tokens (B, L, C_T))."""
        tokens = None
        for block in self.blocks:
            x, tokens = block(x, tokens)
        return x, tokens


class TokenHead(nn.Module):
    """Classification head: mean over tokens, optional hidden layer, linear classifier (section 4.1).

    Args:
        token_channels: token channels C_T.
        num_classes: output classes.
        hidden: None (the paper: one linear layer) or the width of a Linear-ReLU layer before it.
        numerics: `centered` or `appendix` (a small classifier init, `models.init.init_classifier`) or
            `iccv` (PyTorch's default init).
    """

    def __init__(self, token_channels: int, num_classes: int, hidden: int | None = None,
                 numerics: str = DEFAULT_NUMERICS):
        super().__init__()
        if hidden:
            self.hidden = nn.Sequential(nn.Linear(token_channels, hidden), nn.ReLU(inplace=True))
            token_channels = hidden
        else:
            self.hidden = nn.Identity()
        self.fc = nn.Linear(token_channels, num_classes)
        if is_scaled(numerics):
            init_classifier(self.fc)

    def forward(self, stage_out) -> torch.Tensor:
        """(x, tokens (B, L, C_T)) from a VTStage -> logits (B, num_classes)."""
        _, tokens = stage_out
        return self.fc(self.hidden(tokens.mean(dim=1)))


def make_vt_stage(
    in_channels: int,
    *,
    num_modules: int,
    num_tokens: int,
    token_channels: int,
    tokenizer: TokenizerFactory,
    later_tokenizer: TokenizerFactory | None,
    transformer: TransformerFactory,
    projector: ProjectorFactory | None,
    last_projector: bool,
) -> VTStage:
    """Build a VT stage of `num_modules` modules from the factories of its parts.

    Args:
        in_channels: channels C of the feature map the stage acts on.
        num_modules: VT modules in the stage.
        num_tokens: tokens L per module.
        token_channels: token channels C_T.
        tokenizer: the first module's tokenizer (`models.factories.tokenizer_factory`).
        later_tokenizer: the later modules' tokenizer (the paper: recurrent), or None to repeat `tokenizer`.
        transformer: each module's transformer (`models.factories.transformer_factory`).
        projector: `projector(in_channels, token_channels) -> Projector`, or None for no projector.
        last_projector: whether the last module has a projector too (its output map is read only
            by a head that reads feature maps).
    """
    if num_modules < 1:
        raise ValueError(f"num_modules must be >= 1, got {num_modules}")
    blocks = []
    for i in range(num_modules):
        make_tokenizer = later_tokenizer if (i > 0 and later_tokenizer is not None) else tokenizer
        tok = make_tokenizer(in_channels, token_channels, num_tokens)
        trf = transformer(token_channels)
        keep = projector is not None and (last_projector or i < num_modules - 1)
        blocks.append(VTModule(tok, trf, projector(in_channels, token_channels) if keep else None))
    return VTStage(blocks)


@contextlib.contextmanager
def attention_form(model: nn.Module, attention_impl: str) -> Iterator[nn.Module]:
    """Run every module of `model` that has an attention form in `attention_impl` inside the block."""
    check_attention_impl(attention_impl)
    switched = {m: m.attention_impl for m in model.modules() if hasattr(m, "attention_impl")}
    try:
        for module in switched:
            module.attention_impl = attention_impl
        yield model
    finally:
        for module, before in switched.items():
            module.attention_impl = before


def token_attention(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every tokenizer's attention over pixels, one (B, L, H, W) tensor per tokenizer, in call order.

    The model runs in the reference attention form (the fused form never forms the maps), whatever
    form it was built with; its `attention_impl` is restored after.
    """
    tokenizers = [m for m in model.modules() if isinstance(m, Tokenizer)]
    if not tokenizers:
        raise ValueError(f"{type(model).__name__} has no tokenizers")
    maps: list[torch.Tensor] = []

    def hook(module, inputs, output):
        height, width = inputs[0].shape[-2:]
        attention = output[1]
        maps.append(attention.reshape(attention.shape[0], attention.shape[1], height, width))

    handles = [t.register_forward_hook(hook) for t in tokenizers]
    try:
        with torch.no_grad(), attention_form(model, "reference"):
            model(images)
    finally:
        for h in handles:
            h.remove()
    return maps
