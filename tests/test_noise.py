"""bench.core.noise: the latency verdict, judged without torch."""

import subprocess
import sys

import pytest

from bench.core import noise


def test_noise_imports_with_torch_blocked():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from bench.core.noise import judge_latency\n"
            "print(judge_latency({'latency_ms_p20': 10.0, 'latency_ms_p80': 20.0})['latency_verdict'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "noisy"


def test_latency_measures_with_the_same_judge():
    from bench.measure import latency
    assert latency.judge_latency is noise.judge_latency
    assert latency.NOISE_SPREAD_MAX == noise.NOISE_SPREAD_MAX


def test_percentile_interpolates_between_neighbours():
    assert noise.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert noise.percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.2) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        noise.percentile([], 0.5)


def test_round_spread_needs_three_rounds():
    assert noise.round_spread([10.0, 20.0]) is None
    assert noise.round_spread([10.0, 10.0, 20.0, 20.0, 20.0]) == pytest.approx(2.0)
