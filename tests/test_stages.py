"""Per-stage timing (bench.measure.stages): the eager hooks, one CUDA graph per stage, the roofline bounds.

The per-stage graph path is checked on the CPU with the capture and the timer passed in (a capture
that runs the step once and replays it, a timer that reads a fake clock); the real capture runs
under the `gpu` marker.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.core.errors import UsageError
from bench.measure import stages
from bench.measure.stages import GRAPHS, HOOKS, StageCaptureError, StageTimes


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x, *, shift=0.0):
        return x * self.factor + shift


class Chain(nn.Module):
    """a -> b -> (a tensor computed between stages) -> head, with a keyword argument and a size tuple."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = Scale(2.0), Scale(3.0), nn.Flatten()

    def forward(self, x):
        y = self.b(self.a(x), shift=1.0)
        return self.head(y + 0.5)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Scale(2.0)

    def forward(self, x):
        return self.a(self.a(x))


def fake_capture(log: list, outputs: list | None = None):
    """A capture that runs the step once for its static output and replays it by calling it again."""
    def capture(step, device):
        log.append(step)
        out = step()
        if outputs is not None:
            outputs.append(out)
        return step, out
    return capture


def test_each_stage_reads_the_earlier_stages_static_output_where_the_forward_passed_it_on():
    model, x = Chain(), torch.randn(2, 3)
    calls = stages.stage_calls(model, x)
    assert [name for name, *_ in calls] == ["a", "b", "head"]
    (_, _, _, a_out), (_, b_args, b_kwargs, b_out), (_, head_args, _, _) = calls
    static_a = a_out.clone()
    args, kwargs = stages.chained_inputs(b_args, b_kwargs, {id(a_out): static_a})
    assert args[0] is static_a and kwargs == {"shift": 1.0}
    # The head reads y + 0.5, which no stage returned: a static copy of its own, equal, not the eager tensor.
    (head_in,), _ = stages.chained_inputs(head_args, {}, {id(a_out): static_a, id(b_out): b_out.clone()})
    assert head_in is not head_args[0] and torch.equal(head_in, head_args[0])


def test_graph_stage_times_chains_the_captured_stages_and_gives_each_its_median():
    model, x = Chain(), torch.randn(2, 3)
    captured, outputs, order = [], [], []
    clock = {"a": iter([9.0, 0.001, 0.003, 0.002]), "b": iter([9.0, 0.010, 0.030, 0.020]),
             "head": iter([9.0, 0.1, 0.1, 0.1])}

    def timer(replay, device):
        step_name = {id(s): n for s, n in zip(captured, ("a", "b", "head"))}[id(replay)]

        def run_once():
            order.append(step_name)
            replay()
            return next(clock[step_name])
        return run_once

    times = stages.graph_stage_times(model, x, 3, device=torch.device("cpu"), capture=fake_capture(captured, outputs),
                                     timer=timer)
    assert times == pytest.approx({"a": 2.0, "b": 20.0, "head": 100.0})  # ms; pass 0 (9 s) not counted
    assert order == ["a", "b", "head"] * 4  # forward order, pass after pass
    # b's graph reads a's static output itself: what a's replay writes there, b's replay reads.
    assert torch.allclose(captured[1](), x * 2 * 3 + 1)
    with torch.inference_mode():
        outputs[0].fill_(1.0)
    assert torch.equal(captured[1](), torch.full_like(x, 4.0))


def test_a_stage_whose_capture_fails_is_named_and_the_breakdown_falls_back_to_the_hooks():
    model, x = Chain(), torch.randn(2, 3)

    def capture(step, device):
        if len(seen) == 1:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        seen.append(step)
        return step, step()

    seen: list = []
    with pytest.raises(StageCaptureError, match="capture of stage b failed: operation not permitted"):
        stages.graph_stage_times(model, x, 2, device=torch.device("cpu"), capture=capture,
                                 timer=lambda replay, device: lambda: 0.001)

    def graphs():
        raise StageCaptureError("CUDA graph capture of stage vt failed: boom")

    result = stages.graphs_or_hooks(graphs, lambda: {"vt": 1.5})
    assert result == StageTimes({"vt": 1.5}, HOOKS,
                                "CUDA graph capture of stage vt failed: boom; stages timed eager with forward hooks")
    assert stages.graphs_or_hooks(lambda: {"vt": 0.5}, lambda: {}) == StageTimes({"vt": 0.5}, GRAPHS)


def test_a_stage_called_twice_per_forward_cannot_have_a_graph_of_its_own():
    with pytest.raises(StageCaptureError, match="a run more than once per forward"):
        stages.stage_calls(Twice(), torch.randn(1, 3))


def test_measure_stages_times_with_hooks_unless_cuda_graphs_and_refuses_graphs_on_a_cpu():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("head", nn.Flatten())
    result = stages.measure_stages(model.eval(), 1, 2, 1, size=8)
    assert result.method == HOOKS and result.note is None and set(result.times) == {"stem", "head"}
    assert all(t > 0 for t in result.times.values())
    with pytest.raises(UsageError, match="CUDA graphs need a CUDA device"):
        stages.measure_stages(model, 1, 2, 1, size=8, cuda_graphs=True)


def test_stage_bounds_are_the_hand_counted_bytes_of_a_one_conv_stage_over_the_bandwidth():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 1))
    # fp32 at batch 1, 2x2: input 12 + weight 12 + bias 4 + output 16 elements = 44 x 4 B = 176 B;
    # 2 x 4 x 3 x 4 = 96 FLOPs. At 1 GB/s the bytes take 176 ns; at 1 TFLOP/s the FLOPs take 0.096 ns.
    bounds = stages.stage_bound_metrics(model, 2, 1, "fp32", gemm_tflops=1.0, copy_gb_s=1.0)
    assert bounds["stage_bound_ms_stem"] == pytest.approx(176e-9 * 1e3)
    assert set(bounds) == {"stage_bound_ms_stem", "stage_bound_unfused_ms_stem"}
    assert bounds["stage_bound_unfused_ms_stem"] >= bounds["stage_bound_ms_stem"]
    assert next(model.parameters()).device.type == "cpu"  # the model itself is left where it was
    assert stages.stage_bound_metrics(model, [2, 4], 1, "fp32", 1.0, 1.0) == {}


@pytest.mark.gpu
def test_per_stage_cuda_graphs_time_every_stage_of_a_vt_model():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from models import build_model

    model = build_model("vt_resnet18").eval().cuda()
    result = stages.measure_stages(model, 8, 5, None, size=224, device="cuda", dtype="bf16", cuda_graphs=True)
    assert result.method == GRAPHS, result.note
    assert set(result.times) == {name for name, _ in model.named_children()}
    assert all(t > 0 for t in result.times.values())
    eager = stages.stage_times(model, 8, 5, None, size=224, device="cuda", dtype="bf16")
    # A replay has no launch gaps: no stage is slower than its eager time by more than timer noise.
    assert all(result.times[s] < 1.5 * eager[s] + 0.05 for s in eager)


# ------------------------------------------------------------------ as `vtbench interleave --stages` uses them

def test_interleave_times_a_cuda_graph_cells_stages_as_graphs_and_records_how(monkeypatch):
    from bench.pipeline import interleave

    seen = []
    monkeypatch.setattr(stages, "measure_stages",
                        lambda model, batch, iters, threads, **kw: seen.append(kw) or StageTimes({"vt": 1.0}, GRAPHS))
    config = {"input_size": 224, "latency": {"device": "cuda", "batch_size": 64, "dtype": "bf16", "cuda_graphs": True}}
    assert interleave._measure_stages(None, config).method == GRAPHS
    assert seen[0]["cuda_graphs"] is True and seen[0]["dtype"] == "bf16"
    fell_back = StageTimes({"vt": 2.0}, HOOKS, "capture of stage vt failed: x; stages timed eager with forward hooks")
    assert interleave.stage_timing_metrics([StageTimes({"vt": 1.0}, GRAPHS)]) == {"stage_timing": GRAPHS}
    assert interleave.stage_timing_metrics([fell_back, fell_back]) == {"stage_timing": HOOKS,
                                                                        "stage_timing_note": fell_back.note}


def test_interleave_records_each_stages_bound_at_the_cells_measured_ceilings():
    from bench.pipeline import interleave

    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 1))
    config = {"input_size": 2, "latency": {"device": "cpu", "batch_size": 1, "dtype": "fp32"}}
    bounds = interleave._stage_bounds(model, config, {"peak_gemm_tflops": 1.0, "peak_copy_gb_s": 1.0})
    assert bounds["stage_bound_ms_stem"] == pytest.approx(176e-9 * 1e3)  # the hand count above
