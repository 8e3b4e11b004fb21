"""Tokenizer and transformer are chosen through small factories (models.factories): a name and its
options are checked once, and an unknown name is an error that lists the valid ones."""

from __future__ import annotations

import pytest
from torch import nn

from models.factories import FIRST_TOKENIZERS, TOKENIZERS, TRANSFORMERS, tokenizer_factory, transformer_factory
from models.tokenizers import FilterTokenizer
from models.transformer import MHSATransformer, PaperTransformer


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="transformer must be one of paper, mhsa, none; got 'bogus'"):
        transformer_factory("bogus")
    with pytest.raises(ValueError, match="tokenizer must be one of filter, recurrent, pooling, clustering; got 'km'"):
        tokenizer_factory("km")
    # A first module (or a VT-FPN level) has no earlier tokens for a recurrent tokenizer.
    with pytest.raises(ValueError, match="tokenizer must be one of filter, pooling, clustering; got 'recurrent'"):
        tokenizer_factory("recurrent", choices=FIRST_TOKENIZERS)


def test_models_list_every_tokenizer_they_accept():
    """A VT-ResNet accepts `recurrent` (the paper's scheme spelled out), so its error lists it; a VT-FPN
    level has no earlier tokens, so its error does not."""
    from models import build_model

    listed = "tokenizer must be one of filter, pooling, clustering, recurrent; got 'kmeans'"
    with pytest.raises(ValueError, match=listed):
        build_model("vt_resnet18", tokenizer="kmeans")
    with pytest.raises(ValueError, match="tokenizer must be one of filter, pooling, clustering; got 'recurrent'"):
        build_model("vt_fpn_r50", tokenizer="recurrent")


def test_the_attention_form_reaches_every_attention_module():
    for impl in ("sdpa", "fused"):
        for kind in TOKENIZERS:
            assert tokenizer_factory(kind, attention_impl=impl)(8, 12, 4).attention_impl == impl, kind
        for kind in ("paper", "mhsa"):
            assert transformer_factory(kind, attention_impl=impl)(32).attention_impl == impl, kind
    with pytest.raises(ValueError, match="unknown attention_impl 'flash'; choose from reference, sdpa, fused"):
        tokenizer_factory("filter", attention_impl="flash")(8, 12, 4)


def test_every_name_builds_its_module():
    for kind in TOKENIZERS:
        tokenizer = tokenizer_factory(kind)(8, 12, 4)
        assert (tokenizer.in_channels, tokenizer.num_tokens) == (8, 4), kind
    built = {kind: transformer_factory(kind)(32) for kind in TRANSFORMERS}
    assert isinstance(built["paper"], PaperTransformer) and isinstance(built["mhsa"], MHSATransformer)
    assert isinstance(built["none"], nn.Identity)


def test_options_reach_only_the_kind_they_apply_to():
    assert tokenizer_factory("recurrent", refresh="half")(8, 12, 4).refresh == "half"
    assert tokenizer_factory("clustering", kmeans_iters=5)(8, 12, 4).iters == 5
    assert type(tokenizer_factory("filter", refresh="half", kmeans_iters=5)(8, 12, 4)) is FilterTokenizer
    assert transformer_factory("mhsa", heads=4, kqv_groups=2)(16).heads == 4
    for kind in ("paper", "none"):
        with pytest.raises(ValueError, match="apply only to transformer='mhsa'"):
            transformer_factory(kind, heads=4)
