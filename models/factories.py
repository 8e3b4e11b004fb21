"""Small factories for the VT choices: tokenizer and transformer by name (DESIGN.md: choices are passed
in as callables, as timm passes `act_layer` and `norm_layer`).

`tokenizer_factory` and `transformer_factory` check a name and its options once, when a model is
configured, and return a callable that the VT stage or the VT-FPN module calls with the widths it
knows: `tokenizer(in_channels, token_channels, num_tokens)` and `transformer(token_channels)` (a
projector is passed the same way, as `partial(Projector, ...)`: it has no named kinds). The
modules that build VT stages never branch on a name; a new tokenizer or transformer is one entry in
a table below.
"""

from __future__ import annotations

from functools import partial
from types import MappingProxyType
from typing import Callable, Collection

from torch import nn

from models.layers import DEFAULT_ATTENTION_IMPL, DEFAULT_NUMERICS
from models.projector import Projector
from models.tokenizers import (ClusteringTokenizer, FilterTokenizer, PoolingTokenizer, RecurrentTokenizer,
                               Tokenizer)
from models.transformer import MHSATransformer, PaperTransformer

TokenizerFactory = Callable[[int, int, int], Tokenizer]  # (in_channels, token_channels, num_tokens) -> tokenizer
TransformerFactory = Callable[[int], nn.Module]  # token_channels -> a module on tokens (B, L, C_T)
ProjectorFactory = Callable[[int, int], Projector]  # (in_channels, token_channels) -> projector

# name -> (class, {model option: the class's keyword}): the options a tokenizer takes. The others do
# not apply to it and are not passed (`refresh` concerns only a recurrent tokenizer).
TOKENIZERS = MappingProxyType({
    "filter": (FilterTokenizer, {}),
    "recurrent": (RecurrentTokenizer, {"refresh": "refresh"}),
    "pooling": (PoolingTokenizer, {}),
    "clustering": (ClusteringTokenizer, {"kmeans_iters": "iters"}),
})
# Tokenizers that need no earlier tokens: those of a VT stage's first module and of every VT-FPN level.
FIRST_TOKENIZERS = tuple(kind for kind in TOKENIZERS if kind != "recurrent")


def tokenizer_factory(kind: str, *, refresh: str = "all", kmeans_iters: int = 3, numerics: str = DEFAULT_NUMERICS,
                      attention_impl: str = DEFAULT_ATTENTION_IMPL,
                      choices: Collection[str] = tuple(TOKENIZERS)) -> TokenizerFactory:
    """The tokenizer `kind` (one of `choices`) with the options that apply to it, as a factory."""
    check_choice("tokenizer", kind, choices)
    cls, takes = TOKENIZERS[kind]
    given = {"refresh": refresh, "kmeans_iters": kmeans_iters}
    return partial(cls, numerics=numerics, attention_impl=attention_impl,
                   **{keyword: given[option] for option, keyword in takes.items()})


def _paper(*, qk_channels, ff_channels, heads, kqv_groups, numerics, attention_impl) -> TransformerFactory:
    """The ICCV transformer (eqs. 3-4) at the appendix's widths."""
    return partial(PaperTransformer, qk_channels=qk_channels, ff_channels=ff_channels, numerics=numerics,
                   attention_impl=attention_impl)


def _mhsa(*, qk_channels, ff_channels, heads, kqv_groups, numerics, attention_impl) -> TransformerFactory:
    """The appendix's multi-head transformer: always scaled (SDPA) and default-initialised, whatever
    `numerics` says (the appendix reading)."""
    return partial(MHSATransformer, heads=heads or 16, qk_channels=qk_channels, groups=kqv_groups or 8,
                   ff_channels=ff_channels, attention_impl=attention_impl)


def _none(*, qk_channels, ff_channels, heads, kqv_groups, numerics, attention_impl) -> TransformerFactory:
    """Table 5's row without a token-space operation: it has no weights, so no width applies."""
    return _identity


def _identity(token_channels: int) -> nn.Module:
    return nn.Identity()


TRANSFORMERS = MappingProxyType({"paper": _paper, "mhsa": _mhsa, "none": _none})


def transformer_factory(kind: str, *, qk_channels: int | None = None, ff_channels: int | None = None,
                        heads: int | None = None, kqv_groups: int | None = None,
                        numerics: str = DEFAULT_NUMERICS,
                        attention_impl: str = DEFAULT_ATTENTION_IMPL) -> TransformerFactory:
    """The transformer `kind` with its options, as a factory; `heads` and `kqv_groups` set on another
    transformer than `mhsa` are an error (they would silently do nothing)."""
    check_choice("transformer", kind, TRANSFORMERS)
    if kind != "mhsa" and (heads is not None or kqv_groups is not None):
        raise ValueError(f"heads and kqv_groups apply only to transformer='mhsa', not {kind!r}")
    return TRANSFORMERS[kind](qk_channels=qk_channels, ff_channels=ff_channels, heads=heads, kqv_groups=kqv_groups,
                              numerics=numerics, attention_impl=attention_impl)


def check_choice(what: str, kind: str, choices: Collection[str]) -> None:
    """Reject a name that is not one of `choices`, listing them (`what must be one of a, b; got 'x'`)."""
    choices = tuple(choices)  # a tuple: an unhashable value from a grid is rejected, not a TypeError
    if kind not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}; got {kind!r}")
