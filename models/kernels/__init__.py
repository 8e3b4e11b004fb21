"""Fused kernels for the VT module's attention steps (`attention_impl="fused"`, `models.layers.ATTENTION_IMPLS`)."""

from models.kernels.token_attention import reference_token_attention, token_attention

__all__ = ["reference_token_attention", "token_attention"]
