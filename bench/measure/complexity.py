"""Multiply-accumulates and parameters, total, per stage and per module, counted two ways.

All numbers are MACs per image, reported as `gmacs*`. Which counter produced which figure:

- `gmacs` (the headline, the paper's convention, *executed*): `torch.utils.flop_counter.FlopCounterMode`
  watches the forward that actually runs (eval mode, no grad) and counts only matrix products and
  convolutions (mm, addmm, bmm, baddbmm, convolution, scaled-dot-product attention); its FLOPs / 2.
  Handles are added here for the ops it has no formula for: the CPU kernel of
  `scaled_dot_product_attention` (`_scaled_dot_product_flash_attention_for_cpu`, QK^T and AV) and
  mv/addmv/dot. Every fused attention kernel, CPU or CUDA, counts B x heads x Lq x Lk x (d + dv),
  the reference form's two matmuls, so a model counts the same MACs in either attention form
  (`models.layers.ATTENTION_IMPLS`) on either device; SDPA's math fallback runs, and is counted as,
  those two matmuls. The tokenizers' fused op `vtbench::token_attention` (`attention_impl="fused"`)
  counts B x L x HW x 2C by the formula registered beside it, and by `token_attention_flop_jit` here. Bias additions, batch norm (folded at inference), pooling, softmax, upsampling and
  element-wise operations are not counted. This gives exactly 1.814/3.664/4.089/7.801 G for
  torchvision's ResNet-18/34/50/101 at 224x224, the paper's Table 8 and torchvision's `_ops`.
- `gmacs_traced` (paper convention, *traced*): fvcore's `by_operator()` on its JIT trace, summed over
  the matrix products (`conv`, `linear`, `addmm`, `mm`, `matmul`, `einsum`, `bmm`, `baddbmm`, and
  `scaled_dot_product_attention` and its fused kernels, `SDPA_OPS`, with handles registered here).
  A trace keeps only the work that reaches the output, so work that runs but whose result is unused
  (a projector whose map the head never reads) is missing from it.
- `gmacs_fvcore`: fvcore's plain total on the same trace, which also counts batch/group norm, pooling
  and upsampling, plus the handles registered here for ops fvcore leaves at zero: softmax (one per
  element), max-pooling and mean (one per input element), additions, subtractions, multiplications,
  divisions, powers and reciprocal square roots (residuals, scaled logits, the `centered` numerics'
  token and pixel scalings: one per output element).
- `gmacs_fvcore_default`: fvcore's total with fvcore's own handles only, as
  `FlopCountAnalysis(model, x).total()` gives it out of the box (timm's `benchmark.py` `infer_gmacs`):
  `gmacs_fvcore` less the operators only vtbench's handles count.
- `counter_gap_pct` = (traced - executed) / executed * 100, signed; `counter_agree` is |gap| <= 0.5 %.
  When the counters disagree, `counter_warning` says so in one line and it is logged as a WARNING.
- Fused attention: under eval + no_grad, `nn.MultiheadAttention` and `nn.TransformerEncoderLayer` take
  PyTorch's fast path (`aten::_native_multi_head_attention`, `aten::_transformer_encoder_layer_fwd`),
  one opaque op that neither counter can see into. Counting turns the fast path off
  (`torch.backends.mha.set_fastpath_enabled(False)`, restored after) so the same matrix products run
  unfused and are counted; `counting["mha_fastpath"]` says so in every record.
- `unsupported_ops`: every operator in fvcore's trace with no handle that fvcore does not ignore, with
  its count, so an undercount of the traced figures is never silent.
- Per stage (`gmacs_<child>`, `params_m_<child>`, for each top-level child; vtbench models name them
  stem, stage2..stage5 or vt, fpn, head) and per module (`ComplexityResult.module_rows`): *executed*
  MACs, measured by hooks around each module's forward, so stages sum to the headline `gmacs` (less
  any work the model's own forward does outside its children). The traced per-module figures are kept
  beside them (`module_gmacs_traced`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from math import prod
from typing import Any, Iterator

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS
from fvcore.nn.jit_handles import elementwise_flop_counter, get_shape
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.core.util import image_hw

log = logging.getLogger(__name__)

# scaled_dot_product_attention and the kernels it dispatches to (CPU: flash_attention_for_cpu; CUDA:
# flash, efficient, cuDNN, and their inner forwards; a backend's overrideable one). A JIT trace records
# the top-level op; a handle for every kernel keeps a trace that records one of them counted too.
SDPA_OPS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable",
            "_flash_attention_forward", "_efficient_attention_forward")
# The tokenizers' fused attention (`attention_impl="fused"`, models/kernels/token_attention.py): a custom
# op, counted as the reference form's two matmuls by fvcore here and by FlopCounterMode through the
# formula registered beside the op.
TOKEN_ATTENTION_OP = "vtbench::token_attention"
# fvcore's simplified op names that are matrix products: the paper's "FLOPs".
PAPER_OPS = ("conv", "linear", "addmm", "mm", "matmul", "einsum", "bmm", "baddbmm", *SDPA_OPS,
             TOKEN_ATTENTION_OP.split("::")[1])
# Pure layout ops fvcore does not list as ignored; they cost nothing.
_ZERO_COST_OPS = ("aten::view_as", "aten::reshape_as", "aten::expand_as")
# Counters that differ by more than this are reported as disagreeing (issue 11).
AGREE_TOL_PCT = 0.5
# What produced each figure, carried in every record (`metrics["counting"]`).
COUNTING = {
    "gmacs": "executed: torch FlopCounterMode, matrix products and convolutions, FLOPs / 2",
    "gmacs_traced": "traced: fvcore JIT trace, by_operator over matrix products and convolutions",
    "gmacs_fvcore": "traced: fvcore total (also norms, pooling, softmax, additions)",
    "gmacs_fvcore_default": "traced: fvcore total with fvcore's own handles only, as timm's benchmark.py infer_gmacs",
    "stages_and_modules": "executed",
    "mha_fastpath": "disabled while counting (fused attention counted as its unfused matrix products)",
}


# ----------------------------------------------------------------------------- fvcore handles -----

def sdpa_flop_jit(inputs, outputs) -> int:
    """MACs of scaled_dot_product_attention: Lq*Lk*E for QK^T plus Lq*Lk*Ev for AV, per batch x head.

    Inputs laid out (batch..., L, E), as every `SDPA_OPS` kernel but the two inner CUDA forwards takes them.
    """
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def inner_attention_flop_jit(inputs, outputs) -> int:
    """MACs of `_flash_attention_forward` / `_efficient_attention_forward`: inputs (B, L, heads, E)."""
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return q[0] * q[2] * q[1] * k[1] * (q[-1] + v[-1])


def token_attention_flop_jit(inputs, outputs) -> int:
    """MACs of `vtbench::token_attention(queries (B, L, C), pixels (B, HW, C), ...)`: B L HW C each for the
    logits and the weighted sum of the pixels."""
    q, x = get_shape(inputs[0]), get_shape(inputs[1])
    return q[0] * q[1] * x[1] * 2 * q[2]


def baddbmm_flop_jit(inputs, outputs) -> int:
    """MACs of baddbmm(input, b1, b2): the batched product b1 @ b2 (the addition is not counted)."""
    b1, b2 = get_shape(inputs[1]), get_shape(inputs[2])
    return prod(b1) * b2[-1]


EXTRA_HANDLES = {
    **{f"aten::{op}": sdpa_flop_jit for op in SDPA_OPS if not op.endswith("_attention_forward")},
    **{f"aten::{op}": inner_attention_flop_jit for op in SDPA_OPS if op.endswith("_attention_forward")},
    TOKEN_ATTENTION_OP: token_attention_flop_jit,
    "aten::baddbmm": baddbmm_flop_jit,
    "aten::softmax": elementwise_flop_counter(1, 0),
    "aten::max_pool2d": elementwise_flop_counter(1, 0),
    "aten::mean": elementwise_flop_counter(1, 0),
    "aten::add": elementwise_flop_counter(0, 1),
    "aten::add_": elementwise_flop_counter(0, 1),
    "aten::mul": elementwise_flop_counter(0, 1),
    "aten::mul_": elementwise_flop_counter(0, 1),
    "aten::div": elementwise_flop_counter(0, 1),
    "aten::div_": elementwise_flop_counter(0, 1),
    "aten::sub": elementwise_flop_counter(0, 1),
    "aten::pow": elementwise_flop_counter(0, 1),
    "aten::rsqrt": elementwise_flop_counter(0, 1),
}


# ---------------------------------------------------------------- FlopCounterMode handles (FLOPs) -----

def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of a fused attention kernel: 2 x (QK^T + AV), any number of leading batch/head dims."""
    return 2 * prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _inner_attention_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `_flash_attention_forward` / `_efficient_attention_forward`, whose inputs are (B, L, heads, E).

    torch's own formulas read these shapes as (B, heads, L, E), which miscounts (or raises) unless
    L equals the number of heads; these two inner kernels are counted here instead.
    """
    return 2 * q[0] * q[2] * q[1] * k[1] * (q[-1] + v[-1])


def _mv_flops(mat, vec, *args, out_shape=None, **kwargs) -> int:
    return 2 * mat[0] * mat[1]


def _addmv_flops(bias, mat, vec, *args, out_shape=None, **kwargs) -> int:
    return 2 * mat[0] * mat[1]


def _dot_flops(a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0]


def _executed_handles() -> dict[Any, Any]:
    """Formulas for executed ops FlopCounterMode leaves at zero (skipping ops this torch lacks)."""
    aten = torch.ops.aten
    wanted = {"_scaled_dot_product_flash_attention_for_cpu": _sdpa_flops,
              "_scaled_dot_product_fused_attention_overrideable": _sdpa_flops,
              "_flash_attention_forward": _inner_attention_flops,
              "_efficient_attention_forward": _inner_attention_flops,
              "mv": _mv_flops, "addmv": _addmv_flops, "dot": _dot_flops, "vdot": _dot_flops}
    return {getattr(aten, name): fn for name, fn in wanted.items() if hasattr(aten, name)}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts the ops `_executed_handles` adds (FLOPs: MACs x 2)."""
    return FlopCounterMode(display=False, custom_mapping=_executed_handles())


# ------------------------------------------------------------------------------------ result -----

@dataclass
class ComplexityResult:
    """MACs (per image) and parameters of one model at one input size (see the module docstring)."""

    gmacs: float
    gmacs_traced: float
    gmacs_fvcore: float
    params_m: float
    stage_gmacs: dict[str, float] = field(default_factory=dict)
    stage_params_m: dict[str, float] = field(default_factory=dict)
    module_gmacs: dict[str, float] = field(default_factory=dict)
    module_gmacs_traced: dict[str, float] = field(default_factory=dict)
    module_params_m: dict[str, float] = field(default_factory=dict)
    module_depths: dict[str, int] = field(default_factory=dict)
    by_operator_gmacs: dict[str, float] = field(default_factory=dict)
    executed_by_operator_gmacs: dict[str, float] = field(default_factory=dict)
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    input_size: tuple[int, int] = (224, 224)
    batch_size: int = 1

    @property
    def gmacs_fvcore_default(self) -> float:
        """fvcore's total with only its own handles (timm's `infer_gmacs`): `gmacs_fvcore` less the
        operators that only `EXTRA_HANDLES` count."""
        added = {op.split("::", 1)[-1] for op in EXTRA_HANDLES if op not in _DEFAULT_SUPPORTED_OPS}
        return self.gmacs_fvcore - sum(v for op, v in self.by_operator_gmacs.items() if op in added)

    @property
    def counter_gap_pct(self) -> float | None:
        """(traced - executed) / executed * 100; None when nothing executed but the trace counts some."""
        if self.gmacs == 0:
            return 0.0 if self.gmacs_traced == 0 else None
        return 100.0 * (self.gmacs_traced - self.gmacs) / self.gmacs

    @property
    def counter_agree(self) -> bool:
        """True when the traced and executed counts are within AGREE_TOL_PCT of each other."""
        gap = self.counter_gap_pct
        return gap is not None and abs(gap) <= AGREE_TOL_PCT

    @property
    def counter_warning(self) -> str | None:
        """One line saying the counters disagree, by how much and where; None when they agree."""
        if self.counter_agree:
            return None
        gap = self.counter_gap_pct
        where = [s for s in self.stage_gmacs if not _close(self.stage_gmacs[s], self.module_gmacs_traced.get(s, 0.0))]
        return (f"MAC counters disagree by {'n/a' if gap is None else f'{gap:+.2f} %'}: traced (fvcore) "
                f"{self.gmacs_traced:.4f} G vs executed (FlopCounterMode) {self.gmacs:.4f} G; "
                f"gmacs is the executed count"
                + (f"; differs in {', '.join(where)}" if where else "")
                + " (a trace drops work whose output is unused; an op counted by one counter only also shows here)")

    def to_metrics(self) -> dict:
        """Flat metrics for a record: gmacs (executed), gmacs_traced, gmacs_fvcore, agreement, stages."""
        metrics: dict = {
            "gmacs": self.gmacs,
            "gmacs_traced": self.gmacs_traced,
            "gmacs_fvcore": self.gmacs_fvcore,
            "gmacs_fvcore_default": self.gmacs_fvcore_default,
            "counter_gap_pct": self.counter_gap_pct,
            "counter_agree": self.counter_agree,
            "counter_warning": self.counter_warning,
            "params_m": self.params_m,
        }
        metrics.update({f"gmacs_{k}": v for k, v in self.stage_gmacs.items()})
        metrics.update({f"params_m_{k}": v for k, v in self.stage_params_m.items()})
        metrics["unsupported_ops"] = dict(self.unsupported_ops)
        metrics["counting"] = dict(COUNTING)
        return metrics

    def module_rows(self, depth: int) -> list[dict]:
        """Per-module rows down to `depth` (0: the model itself), in the model's own registration order.

        Depth counts the modules that run: an `nn.ModuleList` / `nn.ModuleDict` only holds modules and
        has no forward, so it is not a level and gets no row (VT-ResNet's `vt.blocks.0` is at depth 2,
        its tokenizer, transformer and projector at depth 3).
        """
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        rows = []
        for name, level in self.module_depths.items():
            if level <= depth:
                rows.append({"module": name or "(model)", "depth": level, "gmacs": self.module_gmacs.get(name),
                             "gmacs_traced": self.module_gmacs_traced.get(name), "params_m": self.module_params_m[name]})
        return rows


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= AGREE_TOL_PCT / 100 * max(abs(a), abs(b)) + 1e-12


# ---------------------------------------------------------------------------------- counting -----

@contextlib.contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Turn PyTorch's fused MHA / encoder-layer fast path off for the block, restore it after."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def measure_complexity(model: nn.Module, input_size, batch_size: int = 1) -> ComplexityResult:
    """Count MACs (executed, traced, fvcore total) and parameters of `model`, per image."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = image_hw(input_size)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    images = torch.randn(batch_size, 3, height, width, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), mha_fastpath_disabled():
            # fvcore traces lazily, on the first query: query it here, in eval mode, so the trace
            # neither updates batch-norm statistics nor fails on train-mode-only shapes.
            analysis = _fvcore_analysis(model, images)
            by_op, per_module = analysis.by_operator(), analysis.by_module_and_operator()
            total, unsupported = analysis.total(), _unsupported(analysis)
            executed, executed_modules, executed_by_op = count_executed(model, images)
    finally:
        model.train(was_training)
    result = _result(model, executed, executed_modules, executed_by_op, by_op, per_module, total,
                     unsupported, batch_size)
    result.input_size = (height, width)
    if result.counter_warning:
        log.warning("%s", result.counter_warning)
    return result


def _result(model, executed, executed_modules, executed_by_op, by_op, per_module, total, unsupported,
            batch_size) -> ComplexityResult:
    """Assemble a ComplexityResult from the raw MAC counts (divided by the batch, in G)."""
    g = 1e9 * batch_size
    children = [name for name, _ in model.named_children()]
    modules = {name: mod for name, mod in model.named_modules()}
    module_params = {name: _params(mod) / 1e6 for name, mod in modules.items()}
    traced = {name: _paper_sum(per_module.get(name, {})) / g for name in modules}
    return ComplexityResult(
        gmacs=executed / g,
        gmacs_traced=_paper_sum(by_op) / g,
        gmacs_fvcore=total / g,
        params_m=_params(model) / 1e6,
        stage_gmacs={c: executed_modules.get(c, 0.0) / g for c in children},
        stage_params_m={c: module_params[c] for c in children},
        module_gmacs={name: executed_modules[name] / g for name in modules if name in executed_modules},
        module_gmacs_traced=traced,
        module_params_m=module_params,
        module_depths=module_depths(model),
        by_operator_gmacs={k: v / g for k, v in sorted(by_op.items())},
        executed_by_operator_gmacs={k: v / g for k, v in sorted(executed_by_op.items())},
        unsupported_ops=unsupported,
        batch_size=batch_size,
    )


_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def module_depths(model: nn.Module) -> dict[str, int]:
    """Depth of each module that runs (the model 0, its children 1, ...); containers are not a level."""
    modules = dict(model.named_modules())
    depths = {"": 0}
    for name, mod in modules.items():
        if name:
            parent = name.rpartition(".")[0]
            depths[name] = depths[parent] + (0 if isinstance(modules[parent], _CONTAINERS) else 1)
    return {name: d for name, d in depths.items() if not isinstance(modules[name], _CONTAINERS)}


def count_executed(module: nn.Module, *inputs) -> tuple[float, dict[str, float], dict[str, float]]:
    """MACs that run in `module(*inputs)`: (total, per-module inclusive totals by name, per-op totals).

    FlopCounterMode counts at dispatch, as each op runs; hooks around every submodule's forward read
    the running total, so a module's figure is what ran inside it (its children included). A module
    called twice counts twice; one never called is absent. Scripted submodules take no hooks: their
    MACs count towards their parent.
    """
    names = {}
    for name, mod in module.named_modules():
        names.setdefault(mod, name)
    per_module: dict[str, float] = defaultdict(float)
    starts: dict[nn.Module, list[int]] = defaultdict(list)
    with flop_counter() as counter:
        def before(mod, _args):
            starts[mod].append(counter.get_total_flops())

        def after(mod, _args, _out):
            per_module[names[mod]] += (counter.get_total_flops() - starts[mod].pop()) / 2

        hooked = [m for m in names if not isinstance(m, torch.jit.ScriptModule)]
        handles = [h for m in hooked for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
        try:
            module(*inputs)
        finally:
            for handle in handles:
                handle.remove()
    by_op = {str(op).replace("aten.", ""): v / 2 for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() / 2, dict(per_module), by_op


def _fvcore_analysis(model: nn.Module, images: torch.Tensor) -> FlopCountAnalysis:
    """fvcore analysis with vtbench's extra handles; warnings off (unsupported ops are returned)."""
    analysis = FlopCountAnalysis(model, images)
    analysis.set_op_handle(**EXTRA_HANDLES)
    analysis.set_op_handle(**{op: None for op in _ZERO_COST_OPS})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def _paper_sum(by_op) -> float:
    return float(sum(v for k, v in by_op.items() if k in PAPER_OPS))


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _unsupported(analysis: FlopCountAnalysis) -> dict[str, int]:
    ops = Counter(analysis.unsupported_ops())
    if ops:
        log.debug("fvcore met ops without a handle (not counted in the traced figures): %s", dict(ops))
    return dict(sorted(ops.items()))

