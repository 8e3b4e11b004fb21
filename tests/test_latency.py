"""Trust checks of bench.measure.latency: a known delay is measured as such, OOM backs off, state is restored."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

from bench.core.errors import UsageError
from bench.core.noise import judge_latency
from bench.measure.latency import OutOfMemory, is_oom, latency_env, measure_latency, summarize

FAST = dict(min_time_s=0.2, min_iters=5, warmup_max_iters=10)  # threads=1 where given: the CI box is shared
NO_CUDA = "CUDA is not available on this machine"


class Sleeper(nn.Module):
    """A forward that takes a known time: a sleep, timed by the forward itself, and a tiny linear layer.

    On a loaded machine a sleep overshoots by the scheduler's wake-up delay, so the time each call
    really took is recorded in `durations`: that is the known time the harness must agree with.
    """

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.fc = nn.Linear(3, 2)
        self.durations: list[float] = []

    def forward(self, x):
        start = time.perf_counter()
        time.sleep(self.seconds)
        self.durations.append(time.perf_counter() - start)
        return self.fc(x.mean((2, 3)))


class OOMAbove(nn.Module):
    """Raises the CUDA out-of-memory error for any batch above `limit` (simulated OOM)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.fc = nn.Linear(3, 2)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} GiB")
        return self.fc(x.mean((2, 3)))


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_known_sleep_is_measured_within_10_percent_with_spread():
    nominal = 0.02
    model = Sleeper(nominal)
    result = measure_latency(model, input_size=8, batch_size=2, threads=1, **FAST)
    p50 = result["latency_ms_p50"] / 1000
    known = statistics.median(model.durations)
    assert abs(p50 - known) / known < 0.10, (known, result)
    assert nominal <= p50 < 2 * nominal, result  # a sleep never undershoots
    assert result["latency_ms_p20"] <= result["latency_ms_p50"] <= result["latency_ms_p80"]
    assert result["latency_iters"] >= 5 and result["latency_samples"] >= 5
    assert result["throughput_img_s"] == pytest.approx(2 / p50)
    assert result["batch_size_used"] == 2 and result["mode"] == "inference"
    assert result["warmup_iters"] >= 3


def test_threads_and_training_flag_are_restored():
    before = torch.get_num_threads()
    model = tiny_cnn().train()
    result = measure_latency(model, input_size=16, batch_size=2, threads=1, **FAST)
    assert result["threads"] == 1
    assert torch.get_num_threads() == before
    assert model.training


def test_train_step_runs_backward_and_keeps_weights():
    model = tiny_cnn().eval()
    weight = model[0].weight.detach().clone()
    result = measure_latency(model, input_size=16, batch_size=4, train_step=True, threads=1, **FAST)
    assert result["mode"] == "train_step"
    assert model[0].weight.grad is not None
    assert torch.equal(model[0].weight.detach(), weight)  # lr=0: every kernel runs, no update
    assert not model.training


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cpu_autocast_and_channels_last(dtype):
    result = measure_latency(tiny_cnn(), input_size=16, batch_size=2, dtype=dtype, channels_last=True,
                             threads=1, **FAST)
    assert result["dtype"] == dtype and result["channels_last"]


def test_oom_is_retried_at_half_batch_and_recorded():
    model = OOMAbove(limit=5)
    result = measure_latency(model, input_size=4, batch_size=16, **FAST)
    assert result["batch_size_used"] == 4 and result["batch_size_requested"] == 16
    assert result["oom_retries"] == 2
    assert model.batches[:3] == [16, 8, 4]


def test_oom_without_retry_or_at_batch_one_raises_out_of_memory():
    with pytest.raises(OutOfMemory) as info:
        measure_latency(OOMAbove(limit=5), input_size=4, batch_size=16, oom_retry=False, **FAST)
    assert info.value.batch_size_tried == 16
    with pytest.raises(OutOfMemory) as info:
        measure_latency(OOMAbove(limit=0), input_size=4, batch_size=4, **FAST)
    assert info.value.batch_size_tried == 1 and info.value.batch_size_requested == 4
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_other_errors_are_not_treated_as_oom():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        measure_latency(Broken(), input_size=4, batch_size=2, **FAST)
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_oom(ValueError("out of range"))


class Allocates(nn.Module):
    """Each forward touches a fresh block of `mb` MiB and holds it for `hold_s` (so a sampler sees it)."""

    def __init__(self, mb: int, hold_s: float = 0.0):
        super().__init__()
        self.mb, self.hold_s = mb, hold_s

    def forward(self, x):
        block = torch.ones(self.mb * 2**20 // 4)  # touched, so resident
        if self.hold_s:
            time.sleep(self.hold_s)
        return x.mean() + block[-1]


def test_cpu_memory_is_what_the_measurement_added_beside_the_process_peak():
    big = measure_latency(Allocates(64), input_size=4, batch_size=1, threads=1, **FAST)
    if big["peak_mem_method"] != "vmhwm_reset":
        pytest.skip("VmHWM cannot be reset on this platform (the sampler test covers the fallback)")
    assert big["peak_mem_kind"] == "rss_added"
    assert big["peak_mem_mb"] >= 60  # the 64 MiB block
    # the process peak is the whole process: what it held before, plus what was added
    assert big["process_peak_rss_mb"] == pytest.approx(big["mem_before_mb"] + big["peak_mem_mb"], abs=1.0)
    assert big["process_peak_rss_mb"] > big["peak_mem_mb"] + 50  # the interpreter and torch alone
    small = measure_latency(Allocates(1), input_size=4, batch_size=1, threads=1, **FAST)
    assert small["peak_mem_mb"] < big["peak_mem_mb"] - 40  # each measurement gets its own figure


def test_peak_rss_falls_back_to_a_sampling_thread(monkeypatch):
    import bench.measure.latency as latency

    monkeypatch.setattr(latency, "_reset_peak_rss", lambda: False)
    result = measure_latency(Allocates(64, hold_s=0.02), input_size=4, batch_size=1, threads=1, **FAST)
    if result["mem_before_mb"] is None:
        pytest.skip("no /proc/self/statm on this platform")
    assert result["peak_mem_method"] == "rss_sampled"
    assert result["peak_mem_mb"] >= 60
    assert not any(t.name == "vtbench-rss-sampler" for t in __import__("threading").enumerate())  # stopped


# ---------------------------------------------------------------- the verdict --------------

ROW = dict(latency_ms_p20=10.0, latency_ms_p50=10.5, latency_ms_p80=11.0, warmup_settled=True,
           loadavg_before=0.5, loadavg_after=1.2, steal_pct=0.0, threads=2)


@pytest.mark.parametrize("change, reason", [
    (dict(), None),
    (dict(warmup_settled=False), "warm-up did not settle"),
    (dict(latency_ms_p80=12.6), "spread p80/p20 1.26 > 1.25"),
    (dict(loadavg_before=3.2), "load 3.20 before > 2 threads + 1"),
    (dict(loadavg_after=3.01), "load 3.01 after > 2 threads + 1"),
    (dict(steal_pct=2.5), "steal 2.5 % > 2 %"),
    (dict(latency_round_p50_ms=[10.0, 10.2, 14.0, 10.1, 13.5]), "rounds' p50 spread"),
])
def test_verdict_names_each_reason_for_noise(change, reason):
    from bench.measure.latency import judge_latency

    verdict = judge_latency({**ROW, **change})
    assert verdict["latency_spread_p80_p20"] == pytest.approx(({**ROW, **change})["latency_ms_p80"] / 10.0)
    if reason is None:
        assert verdict["latency_verdict"] == "ok" and verdict["latency_noise_reasons"] == []
    else:
        assert verdict["latency_verdict"] == "noisy"
        assert len(verdict["latency_noise_reasons"]) == 1 and verdict["latency_noise_reasons"][0].startswith(reason)


def test_verdict_thresholds_are_inclusive_and_missing_figures_do_not_count():
    from bench.measure.latency import NOISE_LOAD_MARGIN, NOISE_SPREAD_MAX, judge_latency

    at_limits = {**ROW, "latency_ms_p80": 10.0 * NOISE_SPREAD_MAX, "loadavg_after": 2 + NOISE_LOAD_MARGIN, "steal_pct": 2.0}
    assert judge_latency(at_limits)["latency_verdict"] == "ok"
    bare = {"latency_ms_p20": 10.0, "latency_ms_p50": 10.5, "latency_ms_p80": 11.0}  # an old record
    assert judge_latency(bare)["latency_verdict"] == "ok"
    several = judge_latency({**ROW, "warmup_settled": False, "steal_pct": 9.0, "loadavg_before": 7.0})
    assert len(several["latency_noise_reasons"]) == 3


def test_a_measurement_carries_its_verdict_and_machine_figures(monkeypatch):
    import bench.measure.latency as latency

    monkeypatch.setattr(latency, "_loadavg_1min", lambda: 0.1)
    quiet = measure_latency(tiny_cnn(), input_size=8, batch_size=1, threads=1, **FAST)
    for key in ("latency_verdict", "latency_noise_reasons", "latency_spread_p80_p20", "loadavg_before",
                "loadavg_after", "steal_pct"):
        assert key in quiet, key
    assert quiet["loadavg_before"] == 0.1
    assert quiet["latency_spread_p80_p20"] == pytest.approx(quiet["latency_ms_p80"] / quiet["latency_ms_p20"])
    ticks = iter([(100, 10_000), (400, 20_000)])  # 300 of 10,000 ticks stolen: 3 %
    monkeypatch.setattr(latency, "_cpu_ticks", lambda: next(ticks))
    monkeypatch.setattr(latency, "_loadavg_1min", lambda: 9.0)
    busy = measure_latency(tiny_cnn(), input_size=8, batch_size=1, threads=1, **FAST)
    assert busy["steal_pct"] == pytest.approx(3.0)
    assert busy["latency_verdict"] == "noisy"
    reasons = " | ".join(busy["latency_noise_reasons"])
    assert "load 9.00 before > 1 threads + 1" in reasons and "steal 3.0 %" in reasons


def test_latency_notes_explain_memory_and_flag_noisy_rows():
    from bench.measure.latency import latency_notes

    rows = [{"batch_size_requested": 1, "peak_mem_kind": "rss_added", "latency_verdict": "ok", "latency_noise_reasons": []},
            {"batch_size_requested": 8, "peak_mem_kind": "rss_added", "latency_verdict": "noisy",
             "latency_noise_reasons": ["warm-up did not settle", "spread p80/p20 1.40 > 1.25"]}]
    lines = latency_notes(rows)
    assert any("added" in line for line in lines)
    assert [line for line in lines if line.startswith("NOISY")] == [
        "NOISY at batch 8: warm-up did not settle; spread p80/p20 1.40 > 1.25"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch size"),
    (dict(batch_size=1, dtype="fp8"), "unknown dtype"),
    (dict(batch_size=1, cuda_graphs=True), "CUDA graphs need a CUDA device"),
    (dict(batch_size=1, compile_mode="turbo"), "torch.compile mode"),
    (dict(batch_size=1, threads=0), "threads"),
    (dict(batch_size=1, device="tpu"), "device"),
    (dict(batch_size=1, warmup_iters=3), "unknown timing option"),
])
def test_bad_options_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        measure_latency(tiny_cnn(), input_size=8, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_without_cuda_is_a_usage_error():
    with pytest.raises(UsageError, match="CUDA is not available"):
        measure_latency(tiny_cnn(), input_size=8, batch_size=1, device="cuda")


def test_summarize_percentiles():
    stats = summarize([0.001 * v for v in range(1, 12)], batch_size=4)
    assert stats["latency_ms_p50"] == pytest.approx(6.0)
    assert stats["latency_ms_p20"] == pytest.approx(3.0)
    assert stats["latency_ms_p80"] == pytest.approx(9.0)
    assert stats["throughput_img_s"] == pytest.approx(4 / 0.006)
    assert stats["latency_iters"] == 11


def test_latency_env_names_the_measurement():
    env = latency_env(device="cpu", dtype="bf16", batch_size=8, input_size=32, threads=2)
    for key in ("torch", "cuda", "cudnn", "cudnn_benchmark", "device_name", "git_commit"):
        assert key in env
    assert env["dtype"] == "bf16" and env["batch_size"] == 8
    assert env["input_size"] == [32, 32] and env["threads"] == 2


# ---------------------------------------------------------------- CUDA (marker gpu) --------

@pytest.mark.parametrize("options", [
    dict(),
    dict(dtype="bf16", channels_last=True),
    dict(dtype="fp16", cuda_graphs=True),
    dict(train_step=True, dtype="bf16"),
])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_paths(options):
    result = measure_latency(tiny_cnn(), input_size=32, batch_size=8, device="cuda", **options, **FAST)
    assert result["timer"] == "cuda_events" and result["peak_mem_kind"] == "cuda_max_allocated"
    assert 0 < result["latency_ms_p20"] <= result["latency_ms_p50"] <= result["latency_ms_p80"]
    assert result["peak_mem_mb"] > 0 and result["cudnn_benchmark"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_known_sleep_within_10_percent():
    # The sleep holds the host; the events bracket it, so the sample is the host-side delay.
    model = Sleeper(0.02)
    result = measure_latency(model, input_size=8, batch_size=2, device="cuda", **FAST)
    known_ms = 1000 * statistics.median(model.durations)
    assert abs(result["latency_ms_p50"] - known_ms) / known_ms < 0.10, (known_ms, result)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_real_oom_backs_off():
    free, _ = torch.cuda.mem_get_info()

    class Hungry(nn.Module):
        def forward(self, x):
            # batch 8 asks for 2x the free memory, batch 2 for half of it.
            block = torch.empty(int(free * x.shape[0] / 4), dtype=torch.uint8, device=x.device)
            return x.mean() + block[:1].float()

    result = measure_latency(Hungry(), input_size=4, batch_size=8, device="cuda", **FAST)
    assert result["batch_size_used"] <= 2 and result["oom_retries"] >= 2


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_compile():
    result = measure_latency(tiny_cnn(), input_size=32, batch_size=8, device="cuda", dtype="bf16",
                             compile_mode="default", **FAST)
    assert result["compile"] == "default" and result["first_iter_ms"] > result["latency_ms_p50"]


# ------------------------------------------------------------------- the protocol: iterations as well as seconds

class FakeForward:
    """A forward that takes `seconds(i)` on a fake clock: calling it advances the clock and returns the time."""

    def __init__(self, seconds):
        self.now, self.calls, self.seconds = 0.0, 0, seconds

    def clock(self) -> float:
        return self.now

    def __call__(self) -> float:
        took = self.seconds(self.calls)
        self.calls += 1
        self.now += took
        return took


def _warm(forward: FakeForward, **limits):
    from bench.measure.latency import DEFAULT_TIMING, warm_up
    opts = {**DEFAULT_TIMING, **limits}
    return warm_up(forward, min_iters=opts["warmup_min_iters"], max_iters=opts["warmup_max_iters"],
                   max_s=opts["warmup_max_s"], tol=opts["settle_tol"], settle_iters=opts["warmup_settle_iters"],
                   cap_s=opts["warmup_cap_s"], clock=forward.clock)


def test_a_one_second_forward_settles_under_a_two_second_warm_up():
    """The committed batch-32 CPU settings (warm-up 2 s, at least 1 iteration) cut a steady 0.85 s
    forward at 3 iterations, before the 6 that two windows of 3 need; now it settles."""
    steady = FakeForward(lambda i: 0.85)
    done = _warm(steady, warmup_min_iters=1, warmup_max_s=2.0)
    assert done.settled and done.stop == "settled"
    assert len(done.times) == 6 and done.seconds == pytest.approx(6 * 0.85)


def test_a_drifting_forward_gets_its_chances_then_says_it_did_not_settle():
    drifting = FakeForward(lambda i: 1.0 + 0.2 * i)  # each iteration 20 % slower than the last: never settles
    done = _warm(drifting, warmup_min_iters=1, warmup_max_s=2.0)
    assert not done.settled and done.stop == "max_s" and len(done.times) == 8  # warmup_settle_iters
    assert judge_latency({"warmup_settled": False, "warmup_iters": 8, "warmup_stop": "max_s"})[
        "latency_noise_reasons"] == ["warm-up did not settle in 8 iterations"]


def test_a_fast_forward_still_stops_on_seconds_and_iterations():
    fast = FakeForward(lambda i: 0.001 * (1 + i % 2 * 0.5))  # alternating 1.0 / 1.5 ms: windows disagree
    by_time = _warm(fast, warmup_max_s=0.02)
    assert by_time.stop == "max_s" and by_time.seconds >= 0.02 and len(by_time.times) < 50
    by_iters = _warm(FakeForward(lambda i: 0.001 * (1 + i % 2 * 0.5)), warmup_max_s=100.0, warmup_max_iters=12)
    assert by_iters.stop == "max_iters" and len(by_iters.times) == 12


def test_the_cap_stops_a_forward_of_minutes_and_the_verdict_blames_the_settings():
    glacial = FakeForward(lambda i: 200.0)
    done = _warm(glacial, warmup_cap_s=300.0)
    assert done.stop == "cap_s" and len(done.times) == 2
    reasons = judge_latency({"warmup_settled": False, "warmup_iters": 2, "warmup_stop": "cap_s"})[
        "latency_noise_reasons"]
    assert reasons == ["warm-up stopped by warmup_cap_s after 2 iterations, before it could settle (needs 6)"]


def test_the_timed_part_gets_min_iters_samples_whatever_the_seconds():
    from bench.measure.latency import _collect_cpu
    calls = []
    # a step longer than the run time asked for: torch's block-size search stops at 1 iteration per
    # sample there whatever the timer overhead (below it, blocks of 10 once overhead > 1e-4 of a step)
    samples, per_sample = _collect_cpu(lambda: calls.append(time.sleep(0.06)), threads=1, estimate_s=0.06,
                                       min_iters=6, min_time_s=0.0, max_time_s=0.05)
    assert per_sample == 1 and len(samples) >= 6 and len(calls) >= 6


def test_a_slow_steady_forward_settles_when_the_settings_give_it_no_seconds():
    """End to end: warm-up limited to 0 s and 1 iteration, timed part to 0.01 s; the protocol still
    gives the warm-up its 6 iterations and the timed part its 4 samples, and records what it used."""
    model = Sleeper(0.03)
    # settle_tol 0.5: a sleep's wake-up jitter on a loaded CI box must not decide a test of iteration counts
    result = measure_latency(model, input_size=8, batch_size=1, threads=1, warmup_min_iters=1, warmup_max_s=0.0,
                             settle_tol=0.5, min_iters=4, min_time_s=0.0, max_time_s=0.01)
    assert result["warmup_settled"] is True and result["warmup_stop"] == "settled"
    assert result["warmup_iters"] >= 6 and result["latency_samples"] >= 4
    assert result["latency_protocol"]["warmup_max_s"] == 0.0
    assert result["latency_protocol"]["warmup_settle_iters"] == 8 and result["timed_s"] > 0
    assert "warm-up" not in " ".join(result["latency_noise_reasons"])


# ------------------------------------------------------------------- L2 flush between timed iterations

class FakeEvent:
    """A stand-in for torch.cuda.Event on a CPU: `record` notes itself in the shared log and reads the clock."""

    log: list = []

    def __init__(self, enable_timing: bool = False):
        self.at = None

    def record(self, stream=None):
        self.at = time.perf_counter()
        FakeEvent.log.append("record")

    def synchronize(self):
        pass

    def elapsed_time(self, end: "FakeEvent") -> float:
        return 1000.0 * (end.at - self.at)


def test_flush_l2_runs_before_every_warm_up_and_timed_iteration_outside_the_events(monkeypatch):
    """The CUDA path on a CPU: events faked, the input kept on the CPU; the flush must come before the
    start event of every iteration but the first call, never between an iteration's events."""
    from bench.measure import latency

    FakeEvent.log = []
    log = FakeEvent.log
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(latency, "_make_input",
                        lambda batch, hw, channels, device, cl: torch.randn(batch, channels, *hw))
    monkeypatch.setattr(latency, "l2_flusher", lambda device: lambda: log.append("flush"))

    class Logged(nn.Module):
        def forward(self, x):
            log.append("step")
            return x.sum()

    opts = {**latency.DEFAULT_TIMING, "warmup_min_iters": 1, "warmup_max_iters": 3, "min_iters": 4, "min_time_s": 0.0}
    stats = latency._time_step(Logged(), batch_size=1, hw=(2, 2), in_channels=1, device=torch.device("cuda"),
                               torch_dtype=torch.float32, channels_last=False, cuda_graphs=False, train_step=False,
                               threads=1, opts=opts, flush_l2=True)
    iterations = stats["warmup_iters"] + stats["latency_samples"]
    assert log[:3] == ["record", "step", "record"]  # the first call: no flush
    assert log[3:] == ["flush", "record", "step", "record"] * iterations
    log.clear()
    latency._time_step(Logged(), batch_size=1, hw=(2, 2), in_channels=1, device=torch.device("cuda"),
                       torch_dtype=torch.float32, channels_last=False, cuda_graphs=False, train_step=False,
                       threads=1, opts=opts)
    assert "flush" not in log


def test_flush_l2_is_refused_on_a_cpu_and_recorded_off_in_the_protocol():
    with pytest.raises(UsageError, match="flush_l2 .* needs a CUDA device"):
        measure_latency(tiny_cnn(), input_size=8, batch_size=1, threads=1, flush_l2=True, **FAST)
    result = measure_latency(tiny_cnn(), input_size=8, batch_size=1, threads=1, **FAST)
    assert result["flush_l2"] is False and result["latency_protocol"]["flush_l2"] is False


def test_a_cells_flush_l2_reaches_measure_latency(monkeypatch):
    from bench.measure import latency
    from bench.pipeline import runner

    calls = []
    monkeypatch.setattr(latency, "measure_latency", lambda model, **kwargs: calls.append(kwargs) or {})
    runner.measure_cell_latency(None, {"input_size": 8, "latency": {"device": "cuda", "flush_l2": True}})
    assert calls[0]["flush_l2"] is True


def test_the_flush_buffer_is_larger_than_any_l2():
    from bench.measure.latency import L2_FLUSH_BYTES, l2_flusher

    assert L2_FLUSH_BYTES == 256 * 2 ** 20
    flush = l2_flusher(torch.device("cpu"), nbytes=64)  # the same buffer on a CPU, small
    assert flush().eq(0).all() and flush().numel() == 16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_flush_l2_is_recorded_and_its_memset_stays_outside_the_samples(cuda_graphs):
    from bench.measure.latency import l2_flusher

    flush = l2_flusher(torch.device("cuda"))
    memset_ms = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        flush()
        end.record()
        end.synchronize()
        memset_ms.append(start.elapsed_time(end))
    warm = measure_latency(tiny_cnn(), input_size=32, batch_size=8, device="cuda", cuda_graphs=cuda_graphs, **FAST)
    cold = measure_latency(tiny_cnn(), input_size=32, batch_size=8, device="cuda", cuda_graphs=cuda_graphs,
                           flush_l2=True, **FAST)
    assert cold["flush_l2"] is True and cold["latency_protocol"]["flush_l2"] is True
    # The tiny forward's data is a few hundred kB: a cold L2 costs it microseconds, the memset far more.
    assert cold["latency_ms_p50"] - warm["latency_ms_p50"] < 0.5 * statistics.median(memset_ms)
