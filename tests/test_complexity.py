"""Trust checks of bench.measure.complexity: torchvision ResNets and tiny modules with hand-derived counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench.measure.complexity import AGREE_TOL_PCT, count_executed, measure_complexity
from models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("ctor,paper", [(torchvision.models.resnet18, 1.814), (torchvision.models.resnet50, 4.089)])
def test_torchvision_resnets_match_paper(ctor, paper):
    result = measure_complexity(ctor(weights=None), 224)
    assert abs(result.gmacs - paper) / paper < 0.005
    assert result.gmacs_fvcore > result.gmacs  # fvcore also counts batch norm and pooling
    assert result.gmacs_traced == pytest.approx(result.gmacs, rel=1e-9)  # trace and execution agree here
    assert result.counter_gap_pct == pytest.approx(0.0, abs=1e-9) and result.counter_agree
    assert result.counter_warning is None


class TinyAttention(nn.Module):
    """Tokens (1, 5, 8) from a 1x1 conv on a (1, 8, 1, 5) map; q, k, v linear 8 -> 6; softmax attention."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1, bias=False)
        self.q, self.k, self.v = nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(8, 6)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (1, 5, 8)
        a = torch.softmax(torch.bmm(self.q(t), self.k(t).transpose(1, 2)), dim=-1)  # (1, 5, 5)
        return torch.bmm(a, self.v(t))


def test_tiny_attention_hand_count():
    result = measure_complexity(TinyAttention(), (1, 5))
    conv = 5 * 3 * 8  # 1x1 conv, 5 pixels
    linear = 3 * 5 * 8 * 6  # q, k, v on 5 tokens
    products = 2 * 5 * 5 * 6  # QK^T and AV
    assert result.gmacs * 1e9 == pytest.approx(conv + linear + products)
    assert result.gmacs_fvcore * 1e9 == pytest.approx(conv + linear + products + 5 * 5)  # + softmax, 1 per element
    assert result.gmacs_traced * 1e9 == pytest.approx(conv + linear + products)
    assert result.unsupported_ops == {}
    assert result.stage_gmacs["stem"] * 1e9 == pytest.approx(conv)


class TinySDPA(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1, bias=False)

    def forward(self, x):
        t = self.proj(x).flatten(2).view(1, 2, 4, 5).transpose(2, 3)  # (1, 2 heads, 5 tokens, 4)
        return F.scaled_dot_product_attention(t, t, t)


def test_sdpa_hand_count():
    result = measure_complexity(TinySDPA(), (1, 5))
    conv = 5 * 3 * 8
    sdpa = 2 * (5 * 5 * 4 + 5 * 5 * 4)  # per head: QK^T and AV
    assert result.gmacs * 1e9 == pytest.approx(conv + sdpa)
    assert result.gmacs_traced * 1e9 == pytest.approx(conv + sdpa)


class ContiguousSDPA(nn.Module):
    """Contiguous (B, heads, L, E) inputs: on CPU this runs `_scaled_dot_product_flash_attention_for_cpu`,
    a kernel FlopCounterMode has no formula for (TinySDPA's transposed view takes the math path)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1, bias=False)

    def forward(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2).reshape(1, 5, 2, 4).transpose(1, 2).contiguous()
        return F.scaled_dot_product_attention(t, t, t)


def test_sdpa_cpu_kernel_is_counted():
    result = measure_complexity(ContiguousSDPA(), (1, 5))
    conv, sdpa = 5 * 3 * 8, 2 * (5 * 5 * 4 + 5 * 5 * 4)
    assert result.gmacs * 1e9 == pytest.approx(conv + sdpa)
    assert result.counter_agree


def _attention_ops_run_on_cpu(q, k, v) -> set[str]:
    """The aten ops an SDPA call dispatches to on this CPU (names as `aten::op`)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[str] = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(f"aten::{func._opname}")
            return func(*args, **(kwargs or {}))

    with Record():
        F.scaled_dot_product_attention(q, k, v, scale=0.5)
    return {op for op in seen if "attention" in op}


# The fused attention kernels of CUDA: (op, inputs (B, L, heads, E) rather than (B, heads, L, E)).
CUDA_ATTENTION_OPS = [("_scaled_dot_product_flash_attention", False),
                      ("_scaled_dot_product_efficient_attention", False),
                      ("_scaled_dot_product_cudnn_attention", False),
                      ("_flash_attention_forward", True), ("_efficient_attention_forward", True)]


def _call_on_meta(op: str, q, k, v):
    """Call a CUDA attention kernel on meta tensors (its meta kernel: shapes only, no device needed)."""
    aten = torch.ops.aten
    lq, lk = q.shape[-2], k.shape[-2]
    inner = [t.transpose(1, 2) for t in (q, k, v)]  # (B, L, heads, E)
    calls = {
        "_scaled_dot_product_flash_attention": lambda: aten._scaled_dot_product_flash_attention(q, k, v),
        "_scaled_dot_product_efficient_attention":
            lambda: aten._scaled_dot_product_efficient_attention(q, k, v, None, False),
        "_scaled_dot_product_cudnn_attention": lambda: aten._scaled_dot_product_cudnn_attention(q, k, v, None, False),
        "_flash_attention_forward":
            lambda: aten._flash_attention_forward(*inner, None, None, lq, lk, 0.0, False, False),
        "_efficient_attention_forward":
            lambda: aten._efficient_attention_forward(*inner, None, None, None, lq, lk, 0.0, 0),
    }
    return calls[op]()


def test_sdpa_is_counted_alike_on_cpu_and_cuda():
    """The attention form (models.layers.attend) is counted as its two matmuls whichever kernel SDPA picks.

    On this CPU: trace the kernels SDPA runs (flash_attention_for_cpu for unit-stride rows of equal
    query and value widths, the math form otherwise) and the op the JIT trace records; both counters
    must have a handle for each. CUDA's kernels cannot run here: their meta kernels run under the
    executed counter, and each must have an fvcore handle, all giving B x heads x Lq x Lk x (d + dv).
    """
    from bench.measure.complexity import EXTRA_HANDLES, PAPER_OPS, SDPA_OPS, flop_counter, sdpa_flop_jit

    b, heads, lq, lk, d = 2, 3, 5, 7, 16
    q, k = torch.randn(b, heads, lq, d), torch.randn(b, heads, lk, d)
    cpu_ops = _attention_ops_run_on_cpu(q, k, torch.randn(b, heads, lk, d))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in cpu_ops
    graph = torch.jit.trace(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), (q, k, k)).graph
    traced = {node.kind() for node in graph.nodes()}
    assert "aten::scaled_dot_product_attention" in traced
    counted = {str(op).replace("aten.", "aten::") for op in flop_counter().flop_registry}
    for op in cpu_ops | {f"aten::{name}" for name, _ in CUDA_ATTENTION_OPS}:
        assert op in EXTRA_HANDLES and op.removeprefix("aten::") in PAPER_OPS, op
        assert op in counted, op
    assert set(SDPA_OPS) >= {name for name, _ in CUDA_ATTENTION_OPS}
    for dv in (d, 2 * d):
        m = [torch.empty(s, device="meta") for s in ((b, heads, lq, d), (b, heads, lk, d), (b, heads, lk, dv))]
        for op, _ in CUDA_ATTENTION_OPS:
            if dv != d and "flash" in op:
                continue  # flash kernels take equal widths only
            with flop_counter() as counter:
                _call_on_meta(op, *m)
            assert counter.get_total_flops() // 2 == b * heads * lq * lk * (d + dv), (op, dv)


class _Shape:
    """A stand-in for a JIT value of known shape (what fvcore's `get_shape` reads)."""

    def __init__(self, *shape):
        self.shape = list(shape)

    def isCompleteTensor(self):  # noqa: N802 (torch._C.Value's name)
        return True

    def type(self):
        return self

    def sizes(self):
        return self.shape


@pytest.mark.parametrize("op, inner", CUDA_ATTENTION_OPS + [("_scaled_dot_product_flash_attention_for_cpu", False)])
def test_fvcore_attention_handles_count_the_two_matmuls(op, inner):
    from bench.measure.complexity import EXTRA_HANDLES

    b, heads, lq, lk, d, dv = 2, 3, 5, 7, 16, 32
    shapes = [(b, lq, heads, d), (b, lk, heads, d), (b, lk, heads, dv)] if inner else \
        [(b, heads, lq, d), (b, heads, lk, d), (b, heads, lk, dv)]
    assert EXTRA_HANDLES[f"aten::{op}"]([_Shape(*s) for s in shapes], []) == b * heads * lq * lk * (d + dv)


@pytest.mark.parametrize("name, options", [("resnet18", {}), ("vt_resnet18", {}),
                                           ("vt_resnet18", {"attention_impl": "sdpa"})])
def test_fvcore_default_total_is_what_fvcore_gives_out_of_the_box(name, options):
    """`gmacs_fvcore_default` (timm's infer_gmacs) equals plain FlopCountAnalysis(model, x).total()."""
    from fvcore.nn import FlopCountAnalysis

    torch.manual_seed(0)
    model = build_model(name, num_classes=10, stem="cifar", **options).eval()
    result = measure_complexity(model, 32)
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, torch.randn(1, 3, 32, 32))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        plain = analysis.total() / 1e9
    assert result.gmacs_fvcore_default == pytest.approx(plain, rel=1e-9)
    if not options:  # fvcore's defaults count norms, not softmax or additions
        assert result.gmacs < result.gmacs_fvcore_default < result.gmacs_fvcore
    else:  # nor SDPA: out of the box, fvcore undercounts the attention form
        assert result.gmacs_fvcore_default < result.gmacs
    metrics = result.to_metrics()
    assert metrics["gmacs_fvcore_default"] == result.gmacs_fvcore_default
    assert "gmacs_fvcore_default" in metrics["counting"]


class TokensThen(nn.Module):
    """A 1x1 conv makes 5 tokens of 8 channels from a (1, 5) image; `block` runs on them (batch first)."""

    def __init__(self, block: nn.Module, **call_kwargs):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1, bias=False)
        self.block, self.call_kwargs = block, call_kwargs

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (B, 5, 8)
        if isinstance(self.block, nn.MultiheadAttention):
            return self.block(t, t, t, **self.call_kwargs)[0]
        return self.block(t)


# Hand counts for 5 tokens of E = 8 channels, 2 heads of 4: the 1x1 conv, then in-projection
# (q, k, v: 3 x 5 x 8 x 8), QK^T and AV (2 heads x 2 x 5 x 5 x 4), out-projection (5 x 8 x 8).
CONV, MHA = 5 * 3 * 8, 3 * 5 * 8 * 8 + 2 * 2 * 5 * 5 * 4 + 5 * 8 * 8
FFN = 2 * 5 * 8 * 16  # TransformerEncoderLayer's two linear layers, 8 -> 16 -> 8


@pytest.mark.parametrize("need_weights", [True, False])  # bmm path / scaled_dot_product_attention path
def test_fused_multihead_attention_is_counted(need_weights):
    model = TokensThen(nn.MultiheadAttention(8, 2, batch_first=True), need_weights=need_weights).eval()
    with torch.no_grad():  # the fast path really is taken under eval + no_grad, and hides everything
        fused, _, _ = count_executed(model, torch.randn(1, 3, 1, 5))
    assert fused == CONV
    result = measure_complexity(model, (1, 5))
    assert result.gmacs * 1e9 == pytest.approx(CONV + MHA)
    assert result.gmacs_traced * 1e9 == pytest.approx(CONV + MHA) and result.counter_agree
    assert result.stage_gmacs["block"] * 1e9 == pytest.approx(MHA)
    assert result.to_metrics()["counting"]["mha_fastpath"].startswith("disabled while counting")
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_fused_transformer_encoder_layer_is_counted():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    result = measure_complexity(TokensThen(layer), (1, 5))
    assert result.gmacs * 1e9 == pytest.approx(CONV + MHA + FFN)
    assert result.counter_agree


def test_vit_b_16_matches_torchvision_published_ops():
    """The issue's first example: 11.27 G before the fast path was turned off; torchvision publishes 17.564."""
    result = measure_complexity(torchvision.models.vit_b_16(), 224)
    published = torchvision.models.ViT_B_16_Weights.DEFAULT.meta["_ops"]
    assert abs(result.gmacs - published) / published < 0.015
    assert result.counter_agree


class DeadBranch(nn.Module):
    """Runs two 1x1 convs and returns one: a trace drops `unused`, execution pays for it."""

    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, x):
        self.unused(x)
        return self.used(x)


def test_counter_disagreement_is_reported(caplog):
    with caplog.at_level("WARNING", logger="bench.measure.complexity"):
        result = measure_complexity(DeadBranch(), 2)
    conv = 4 * 3 * 4  # 4 pixels x 3 -> 4 channels
    assert result.gmacs * 1e9 == pytest.approx(2 * conv)  # executed: both convs
    assert result.gmacs_traced * 1e9 == pytest.approx(conv)  # traced: the one that reaches the output
    assert result.counter_gap_pct == pytest.approx(-50.0) and not result.counter_agree
    metrics = result.to_metrics()
    assert metrics["counter_agree"] is False and metrics["counter_gap_pct"] == pytest.approx(-50.0)
    assert "disagree by -50.00 %" in metrics["counter_warning"] and "differs in unused" in metrics["counter_warning"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [metrics["counter_warning"]]


def test_agreement_threshold():
    result = measure_complexity(DeadBranch(), 2)
    result.gmacs_traced = result.gmacs * (1 + AGREE_TOL_PCT / 100 * 0.99)
    assert result.counter_agree and result.counter_warning is None
    result.gmacs_traced = result.gmacs * (1 - AGREE_TOL_PCT / 100 * 1.01)
    assert not result.counter_agree and result.counter_warning


def test_vt_last_projector_executed_not_traced():
    """The issue's second example: the last projector runs, but its map is never read."""
    model = build_model("vt_resnet18", num_classes=10, stem="cifar", last_projector=True)
    result = measure_complexity(model, 32)
    projector = result.module_gmacs["vt.blocks.1.projector"]
    assert projector > 0 and result.module_gmacs_traced["vt.blocks.1.projector"] == 0
    assert result.gmacs - result.gmacs_traced == pytest.approx(projector, rel=1e-9)
    assert not result.counter_agree


def test_module_rows_follow_the_model_and_skip_containers():
    result = measure_complexity(build_model("vt_resnet18", num_classes=10, stem="cifar"), 32)
    rows = result.module_rows(3)
    names = [r["module"] for r in rows]
    assert names[0] == "(model)" and rows[0]["gmacs"] == result.gmacs
    assert "vt.blocks" not in names  # a ModuleList holds modules, it does not run
    block = names.index("vt.blocks.0")
    assert rows[block]["depth"] == 2
    assert names[block + 1:block + 4] == ["vt.blocks.0.tokenizer", "vt.blocks.0.transformer", "vt.blocks.0.projector"]
    assert all(r["depth"] == 3 for r in rows[block + 1:block + 4])
    parts = rows[block + 1:block + 4]
    assert sum(r["gmacs"] for r in parts) == pytest.approx(rows[block]["gmacs"])
    assert sum(r["params_m"] for r in parts) == pytest.approx(rows[block]["params_m"])
    assert [r["module"] for r in result.module_rows(1)] == ["(model)", "stem", "stage2", "stage3", "stage4", "vt", "head"]
    with pytest.raises(ValueError):
        result.module_rows(-1)


class WithCumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.cumsum(self.conv(x), dim=-1)


def test_unsupported_ops_are_reported():
    result = measure_complexity(WithCumsum(), 4)
    assert result.unsupported_ops == {"aten::cumsum": 1}
    assert result.to_metrics()["unsupported_ops"] == {"aten::cumsum": 1}


def test_batch_size_gives_per_image_counts():
    model = TinyAttention()
    one, four = measure_complexity(model, (1, 5)), measure_complexity(model, (1, 5), batch_size=4)
    assert four.gmacs == pytest.approx(one.gmacs) and four.params_m == one.params_m


def test_stages_sum_to_total_and_metrics_are_flat():
    model = build_model("vt_resnet18", num_classes=10, stem="cifar")
    result = measure_complexity(model, 32)
    metrics = result.to_metrics()
    stages = ["stem", "stage2", "stage3", "stage4", "vt", "head"]
    assert sum(metrics[f"gmacs_{s}"] for s in stages) == pytest.approx(metrics["gmacs"])
    assert sum(metrics[f"params_m_{s}"] for s in stages) == pytest.approx(metrics["params_m"])
    assert metrics["gmacs_traced"] == pytest.approx(metrics["gmacs"], rel=1e-9) and metrics["counter_agree"]
    assert metrics["unsupported_ops"] == {}
    assert model.training  # the mode is restored


def test_bad_batch_size():
    with pytest.raises(ValueError):
        measure_complexity(TinyAttention(), 4, batch_size=0)


def test_counting_leaves_batchnorm_statistics_and_mode_untouched():
    """fvcore traces lazily; the trace must run in eval mode so BN running stats never move."""
    from models import build_model

    model = build_model("resnet18", num_classes=10, stem="cifar").train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    measure_complexity(model, 16)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
