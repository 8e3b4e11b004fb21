"""Multiply-accumulates and parameters, total and per stage, in the paper's convention and fvcore's.

Conventions (all numbers are MACs per image, reported as `gmacs*`):

- `gmacs` (the paper's convention): fvcore's `by_operator()` summed over the matrix products only,
  `conv`, `linear`, `addmm`, `mm`, `matmul`, `einsum`, `bmm`, plus the two matrix products inside
  `scaled_dot_product_attention` (QK^T and AV; a handle registered here, fvcore has none). Batch norm
  (folded at inference), pooling, softmax, upsampling and element-wise operations are not counted.
  This sum gives exactly 1.814/3.664/4.089/7.801 G for torchvision's ResNet-18/34/50/101 at 224x224,
  the paper's Table 8 and torchvision's published `_ops`.
- `gmacs_fvcore`: fvcore's plain total, which also counts batch/group norm, pooling and upsampling,
  plus the handles registered here for ops fvcore leaves at zero: softmax (one per element),
  max-pooling and mean (one per input element), residual additions (one per output element).
- `gmacs_flopcounter`: `torch.utils.flop_counter.FlopCounterMode`'s total / 2 (it counts 2 FLOPs per
  MAC and only matrix products and convolutions), an independent cross-check of `gmacs`.
- `unsupported_ops`: every operator fvcore met with no handle and did not ignore, with its count,
  so an undercount is never silent.
- Per stage: `gmacs_<child>` (paper convention) and `params_m_<child>` for each top-level child of the
  model (vtbench models name them stem, stage2..stage5 or vt, fpn, head).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from math import prod

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import elementwise_flop_counter, get_shape
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

# fvcore's simplified op names that are matrix products: the paper's "FLOPs".
PAPER_OPS = ("conv", "linear", "addmm", "mm", "matmul", "einsum", "bmm", "scaled_dot_product_attention")
# Pure layout ops fvcore does not list as ignored; they cost nothing.
_ZERO_COST_OPS = ("aten::view_as", "aten::reshape_as", "aten::expand_as")


def sdpa_flop_jit(inputs, outputs) -> int:
    """MACs of scaled_dot_product_attention: Lq*Lk*E for QK^T plus Lq*Lk*Ev for AV, per batch x head."""
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch = prod(q[:-2])
    lq, e = q[-2], q[-1]
    lk, ev = k[-2], v[-1]
    return batch * lq * lk * (e + ev)


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::softmax": elementwise_flop_counter(1, 0),
    "aten::max_pool2d": elementwise_flop_counter(1, 0),
    "aten::mean": elementwise_flop_counter(1, 0),
    "aten::add": elementwise_flop_counter(0, 1),
    "aten::add_": elementwise_flop_counter(0, 1),
}


@dataclass
class ComplexityResult:
    """MACs (per image) and parameters of one model at one input size."""

    gmacs: float
    gmacs_fvcore: float
    gmacs_flopcounter: float
    params_m: float
    stage_gmacs: dict[str, float] = field(default_factory=dict)
    stage_params_m: dict[str, float] = field(default_factory=dict)
    by_operator_gmacs: dict[str, float] = field(default_factory=dict)
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    input_size: tuple[int, int] = (224, 224)
    batch_size: int = 1

    def to_metrics(self) -> dict:
        """Flat metrics for a record: gmacs, gmacs_fvcore, params_m, per-stage values, ..."""
        metrics: dict = {
            "gmacs": self.gmacs,
            "gmacs_fvcore": self.gmacs_fvcore,
            "gmacs_flopcounter": self.gmacs_flopcounter,
            "params_m": self.params_m,
        }
        metrics.update({f"gmacs_{k}": v for k, v in self.stage_gmacs.items()})
        metrics.update({f"params_m_{k}": v for k, v in self.stage_params_m.items()})
        metrics["unsupported_ops"] = dict(self.unsupported_ops)
        return metrics


def measure_complexity(model: nn.Module, input_size, batch_size: int = 1) -> ComplexityResult:
    """Count MACs (paper convention, fvcore total, FlopCounterMode) and parameters of `model`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = _hw(input_size)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    images = torch.randn(batch_size, 3, height, width, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # fvcore traces lazily, on the first query: query it here, in eval mode, so the trace
            # neither updates batch-norm statistics nor fails on train-mode-only shapes.
            analysis = _fvcore_analysis(model, images)
            by_op = analysis.by_operator()
            per_module = analysis.by_module_and_operator()
            total = analysis.total()
            unsupported = _unsupported(analysis)
            flopcounter = _flopcounter_macs(model, images)
    finally:
        model.train(was_training)
    children = [name for name, _ in model.named_children()]
    return ComplexityResult(
        gmacs=_paper_sum(by_op) / batch_size / 1e9,
        gmacs_fvcore=total / batch_size / 1e9,
        gmacs_flopcounter=flopcounter / batch_size / 1e9,
        params_m=_params(model) / 1e6,
        stage_gmacs={c: _paper_sum(per_module.get(c, {})) / batch_size / 1e9 for c in children},
        stage_params_m={c: _params(getattr(model, c)) / 1e6 for c in children},
        by_operator_gmacs={k: v / batch_size / 1e9 for k, v in sorted(by_op.items())},
        unsupported_ops=unsupported,
        input_size=(height, width),
        batch_size=batch_size,
    )


def _fvcore_analysis(model: nn.Module, images: torch.Tensor) -> FlopCountAnalysis:
    """fvcore analysis with vtbench's extra handles; warnings off (unsupported ops are returned)."""
    analysis = FlopCountAnalysis(model, images)
    analysis.set_op_handle(**EXTRA_HANDLES)
    analysis.set_op_handle(**{op: None for op in _ZERO_COST_OPS})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def _flopcounter_macs(model: nn.Module, images: torch.Tensor) -> float:
    """Total FLOPs / 2 from torch.utils.flop_counter (matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() / 2


def _paper_sum(by_op) -> float:
    return float(sum(v for k, v in by_op.items() if k in PAPER_OPS))


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _unsupported(analysis: FlopCountAnalysis) -> dict[str, int]:
    ops = Counter(analysis.unsupported_ops())
    if ops:
        log.debug("fvcore met ops without a handle (not counted): %s", dict(ops))
    return dict(sorted(ops.items()))


def _hw(input_size) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = input_size
    return int(height), int(width)
