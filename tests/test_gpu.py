"""What only a CUDA device can check (marker gpu; skipped with a stated reason elsewhere).

Each test cross-checks a GPU figure against something independent of the code it checks: the CPU
forward of the same weights, the CPU count of the same network, a host clock around a
synchronised region, the card's own GEMM rate, or an eager forward beside its graph replay.
`scripts/gpu_check.sh` runs this file (and the gpu tests of test_latency.py) on a lent device.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch import nn

from models import build_model

NO_CUDA = "CUDA is not available on this machine"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]
FAST = dict(warmup_min_iters=3, warmup_max_iters=20, warmup_max_s=2.0, min_iters=10, min_time_s=0.2)


@pytest.fixture
def no_tf32():
    """Plain fp32 matrix products on the GPU, so that a CPU comparison is about the code, not TF32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm())


def _seeded(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, **options).eval()


@pytest.mark.parametrize("name, options, size", [
    ("vt_resnet18", {}, 64),
    ("vt_resnet50", {"tokenizer": "recurrent"}, 64),
    ("vt_resnet18", {"tokenizer": "clustering", "transformer": "mhsa"}, 64),
    ("vt_fpn_r50", {}, 96),
])
def test_cuda_forward_matches_the_cpu_forward(no_tf32, name, options, size):
    model = _seeded(name, **options)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
        out = model.to("cuda")(x.to("cuda"))
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert _relative_error(out, ref) < 1e-4


@pytest.mark.parametrize("name", ["vt_resnet18", "vt_fpn_r50"])
def test_bf16_autocast_stays_close_to_fp32(no_tf32, name):
    model = _seeded(name).to("cuda")
    x = torch.randn(4, 3, 96, 96, device="cuda")
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
    # bf16 operands: 1e-3 to 1e-2 relative error is the expected range; NaN never passes.
    assert torch.isfinite(out).all() and _relative_error(out.float(), ref) < 3e-2


@pytest.mark.parametrize("name", ["resnet18", "vt_resnet18", "vt_resnet50", "vt_fpn_r50"])
def test_counting_on_cuda_gives_the_cpu_count(name):
    from bench.measure.complexity import measure_complexity

    size = 224 if name != "vt_fpn_r50" else 128
    cpu = measure_complexity(_seeded(name), size, batch_size=1)
    gpu = measure_complexity(_seeded(name).to("cuda"), size, batch_size=1)
    assert gpu.to_metrics()["gmacs"] == pytest.approx(cpu.to_metrics()["gmacs"], rel=1e-9)
    assert gpu.to_metrics()["params_m"] == cpu.to_metrics()["params_m"]


def test_cuda_graph_replay_computes_the_eager_forward():
    from bench.measure.latency import _capture_cuda_graph, _inference_step

    model = _seeded("vt_resnet18").to("cuda")
    x = torch.randn(8, 3, 64, 64, device="cuda")
    step = _inference_step(model, x, torch.device("cuda"), torch.float32, autocast_cache=False)
    eager = step().clone()
    replay = _capture_cuda_graph(step, torch.device("cuda"))
    x.copy_(torch.randn_like(x))          # the graph reads the static input: new data, new output
    fresh = step().clone()
    replay()
    torch.cuda.synchronize()
    graphed = step._static_output
    assert torch.allclose(graphed, fresh, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(graphed, eager, rtol=1e-2, atol=1e-2)


def test_cuda_event_latency_agrees_with_a_host_clock_around_a_synchronised_loop():
    """Two independent timers on one workload: CUDA events (vtbench) and perf_counter with sync."""
    from bench.measure.latency import measure_latency

    class Gemm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4096, 4096))

        def forward(self, x):
            y = x.flatten(1)
            for _ in range(8):
                y = y @ self.weight
            return y

    model = Gemm().cuda()
    result = measure_latency(model, input_size=64, batch_size=1024, device="cuda", in_channels=1,
                             dtype="bf16", **FAST)
    x = torch.randn(1024, 1, 64, 64, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(50):
            model(x)
        torch.cuda.synchronize()
        host_ms = 1000 * (time.perf_counter() - start) / 50
    assert result["latency_ms_p50"] == pytest.approx(host_ms, rel=0.15), (result["latency_ms_p50"], host_ms)


def test_no_forward_outruns_the_cards_own_gemm_peak():
    """A model's achieved TFLOP/s (from its counted MACs) below the measured GEMM ceiling: a
    count too high or a timer too short would break this bound."""
    from bench.measure.complexity import measure_complexity
    from bench.measure.latency import measure_latency
    from bench.measure.roofline import achieved, measure_peak

    peak = measure_peak("cuda", "bf16", gemm_n=8192, copy_mb=1024, reps=5)
    assert peak["gemm_tflops"] > 10 and peak["copy_gb_s"] > 100, peak
    for name in ("resnet50", "vt_resnet50"):
        gmacs = measure_complexity(_seeded(name), 224).to_metrics()["gmacs"]
        lat = measure_latency(_seeded(name), input_size=224, batch_size=128, device="cuda", dtype="bf16",
                              channels_last=True, **FAST)
        rate = achieved(gmacs, 128, lat["latency_ms_p50"], peak)
        assert 0.01 < rate["fraction_of_peak"] < 1.0, (name, rate, peak)


def test_amp_training_on_cuda_learns_digits(tmp_path):
    from bench.measure.train import TrainConfig, train

    cfg = TrainConfig(dataset="digits", input_size=16, epochs=3, device="cuda", threads=2)
    metrics = train("vt_resnet18", {"num_classes": 10, "stem": "cifar", "width": 0.5}, cfg, tmp_path,
                    progress=False)
    assert math.isfinite(metrics["train_loss"]) and metrics["top1"] > 60, metrics
    record = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record and all(math.isfinite(row["train_loss"]) for row in record if "train_loss" in row)


def test_profile_cli_on_cuda_writes_a_judged_record(tmp_path, capsys):
    import bench.cli
    from bench.core.records import read_record

    path = tmp_path / "r.json"
    rc = bench.cli.main(["profile", "vt_resnet18", "--device", "cuda", "--dtype", "bf16", "--batch-size", "1,32",
                         "--cuda-graphs", "--min-time", "0.2", "--json", str(path)])
    assert rc == 0, capsys.readouterr()
    record = read_record(path)
    rows = record["metrics"]["latency"]
    assert [r["batch_size_requested"] for r in rows] == [1, 32]
    for row in rows:
        assert row["timer"] == "cuda_events" and row["peak_mem_kind"] == "cuda_max_allocated"
        assert row["latency_verdict"] in ("ok", "noisy") and row["latency_ms_p50"] > 0


# ------------------------------------------------------------------------- the attention form on CUDA ---

def _attention_twins(name: str, **options) -> list[nn.Module]:
    """The model in the reference and the attention form, one seed, on the GPU."""
    models = []
    for impl in ("reference", "sdpa"):
        torch.manual_seed(0)
        models.append(build_model(name, attention_impl=impl, **options).eval().to("cuda"))
    return models


def _token_space_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tokenizer's tokens, transformer's and projector's output, and the model's output."""
    from test_attention_form import _module_outputs  # tests/ is on the path (no package)

    return _module_outputs(model, x)


@pytest.mark.parametrize("transformer", ["paper", "mhsa", "none"])
@pytest.mark.parametrize("numerics", ["centered", "appendix", "iccv"])
@pytest.mark.parametrize("tokenizer", ["filter", "pooling", "clustering"])
def test_attention_form_matches_the_reference_on_cuda(no_tf32, tokenizer, numerics, transformer):
    """Every module's output of the sdpa form within 1e-4 (relative to its largest value) of the reference
    form on the GPU (later tokenizers recurrent; NCHW and channels_last maps)."""
    reference, sdpa = _attention_twins("vt_resnet18", stem="cifar", width=0.5, token_channels=128, num_classes=10,
                                       tokenizer=tokenizer, numerics=numerics, transformer=transformer,
                                       last_projector=True)
    x = torch.randn(4, 3, 32, 32, device="cuda")
    for layout in (torch.contiguous_format, torch.channels_last):
        want = _token_space_outputs(reference, x.contiguous(memory_format=layout))
        got = _token_space_outputs(sdpa, x.contiguous(memory_format=layout))
        assert got.keys() == want.keys() and len(want) > 3
        for key, ref in want.items():
            assert ((got[key] - ref).abs().max() / ref.abs().max()).item() < 1e-4, (key, layout)


@pytest.mark.parametrize("name, size", [("vt_resnet50", 64), ("vt_fpn_r50", 96)])
def test_attention_form_of_the_large_models_on_cuda(no_tf32, name, size):
    reference, sdpa = _attention_twins(name)
    x = torch.randn(2, 3, size, size, device="cuda")
    with torch.inference_mode():
        want, got = reference(x), sdpa(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got_bf16 = sdpa(x).float()
    assert _relative_error(got, want) < 1e-4
    assert torch.isfinite(got_bf16).all() and _relative_error(got_bf16, want) < 3e-2


@pytest.mark.parametrize("name", ["vt_resnet18", "vt_resnet50", "vt_fpn_r50"])
def test_attention_form_counts_the_cpu_reference_macs_on_cuda(name):
    """The fused CUDA kernels (flash / efficient / cuDNN) are counted as the reference form's two matmuls."""
    from bench.measure.complexity import measure_complexity

    size = 224 if name != "vt_fpn_r50" else 128
    cpu = measure_complexity(_seeded(name), size)
    gpu = measure_complexity(_attention_twins(name)[1], size)
    assert gpu.gmacs == pytest.approx(cpu.gmacs, rel=1e-9)
    assert gpu.gmacs_traced == pytest.approx(cpu.gmacs_traced, rel=1e-9)
    assert not gpu.unsupported_ops
