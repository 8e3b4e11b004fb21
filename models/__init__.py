"""vtbench models: tokenizers, token-space transformers, projector, VT modules, VT-ResNet, FPN, VT-FPN.

Pure `torch.nn`; no configs, files or clusters. Entry points: `build_model`, `list_models`, and
`model_facts` (family, task, depth, baseline, stages, defaults of a registered variant).
"""

from models import zoo  # noqa: F401  (its registrations fill the registry; the registry never imports it)
from models.registry import (Family, ModelFacts, build_model, is_registered, list_families, list_models,
                             model_facts, model_options, register_model, stage_order)
from models.vt import token_attention

__all__ = ["Family", "ModelFacts", "build_model", "is_registered", "list_families", "list_models", "model_facts",
           "model_options", "register_model", "stage_order", "token_attention"]
