"""vtbench models: tokenizers, token-space transformers, projector, VT modules, VT-ResNet, FPN, VT-FPN.

Pure `torch.nn`; no configs, files or clusters. Entry points: `build_model`, `list_models`.
"""

from models.registry import build_model, list_models, model_options, register_model
from models.vt import token_attention

__all__ = ["build_model", "list_models", "model_options", "register_model", "token_attention"]
