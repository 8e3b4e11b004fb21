"""Init health of a VT model: is its attention alive, are its tokens distinct, does every weight learn?

`init_health(model, images, targets)` runs one forward and backward pass in train mode (the state
of step 0 of training) and returns, per tokenizer, the mean peak attention over pixels, the
largest cosine between two of its tokens and the fraction of token pairs above a cosine of 0.99; per token-space submodule (each tokenizer, transformer
and projector) the gradient norm; and the initial cross-entropy. tests/test_init_health.py holds
every registered VT model to the bars of issue 10; `vtbench`-free, pure torch.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.projector import Projector
from models.tokenizers import Tokenizer


DUPLICATE_COSINE = 0.99
"""Two tokens above this cosine are counted as one token repeated (issue 10's bar)."""


@dataclasses.dataclass
class InitHealth:
    """What one step-0 pass shows; lists are in call order (tokenizers) or module order."""

    peak_attention: list[float]
    max_token_cosine: list[float]
    duplicate_pair_fraction: list[float]
    recurrent: list[bool]
    grad_norms: dict[str, float]
    zero_grad_weights: list[str]
    loss: float
    num_classes: int

    @property
    def weakest_gradient_ratio(self) -> float:
        """The smallest submodule gradient norm over the largest (1 = all alike, 0 = a dead module)."""
        return min(self.grad_norms.values()) / max(self.grad_norms.values())


def token_space_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every tokenizer, token transformer and projector of `model`, by qualified name."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, (Tokenizer, Projector)) or name.endswith("transformer"):
            if any(p.requires_grad for p in module.parameters()):
                found[name] = module
    return found


def init_health(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> InitHealth:
    """One train-mode forward and backward on (images, targets); the model's grads are overwritten."""
    model.train()
    model.zero_grad(set_to_none=True)
    tokenizers = [m for m in model.modules() if isinstance(m, Tokenizer)]
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [t.register_forward_hook(lambda mod, inp, out: outputs.append(out)) for t in tokenizers]
    try:
        logits = model(images)
    finally:
        for h in handles:
            h.remove()
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    modules = token_space_modules(model)
    return InitHealth(
        peak_attention=[attn.detach().max(dim=-1).values.mean().item() for _, attn in outputs],
        max_token_cosine=[max_pairwise_cosine(tokens.detach()) for tokens, _ in outputs],
        duplicate_pair_fraction=[duplicate_pair_fraction(tokens.detach()) for tokens, _ in outputs],
        recurrent=[t.recurrent for t in tokenizers],
        grad_norms={name: _grad_norm(m) for name, m in modules.items()},
        zero_grad_weights=[f"{name}.{p}" for name, m in modules.items() for p, w in m.named_parameters()
                           if w.grad is None or not torch.any(w.grad != 0)],
        loss=loss.item(),
        num_classes=logits.shape[1],
    )


def max_pairwise_cosine(tokens: torch.Tensor) -> float:
    """Largest cosine between two different tokens of one sample, over the batch; tokens (B, L, C)."""
    unit = F.normalize(tokens, dim=-1)
    cos = unit @ unit.transpose(1, 2)
    eye = torch.eye(cos.shape[-1], dtype=torch.bool, device=cos.device)
    return cos.masked_fill(eye, -1.0).max().item()


def duplicate_pair_fraction(tokens: torch.Tensor, cosine: float = DUPLICATE_COSINE) -> float:
    """Fraction of the (sample, i < j) token pairs whose cosine is above `cosine`; tokens (B, L, C)."""
    unit = F.normalize(tokens, dim=-1)
    cos = unit @ unit.transpose(1, 2)
    pairs = torch.triu(torch.ones_like(cos[0], dtype=torch.bool), diagonal=1)
    return (cos[:, pairs] > cosine).float().mean().item() if pairs.any() else 0.0


def _grad_norm(module: nn.Module) -> float:
    """L2 norm of all of a module's parameter gradients together (missing gradients count as zero)."""
    total = sum(float(p.grad.pow(2).sum()) for p in module.parameters() if p.grad is not None)
    return math.sqrt(total)


def step0_health(name: str, seed: int = 0, residual_init: str | None = None, **options) -> InitHealth:
    """`init_health` of the registered model `name` on one seeded random batch: 224x224 x4 for
    classification, 128x128 x2 for segmentation (the batch tests/test_init_health.py holds to its bars).

    `residual_init` (a `models.init.RESIDUAL_INITS` name) is passed as the model option; None
    leaves the model's default trunk init.
    """
    from models import build_model

    torch.manual_seed(seed)
    if residual_init is not None:
        options = {**options, "residual_init": residual_init}
    model = build_model(name, **options)
    seg = model.task == "seg"
    size, batch = (128, 2) if seg else (224, 4)
    images = torch.randn(batch, 3, size, size)
    targets = torch.randint(0, model.num_classes, (batch, size, size) if seg else (batch,))
    return init_health(model, images, targets)
