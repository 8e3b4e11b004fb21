"""vtbench's headline MACs against the figures torchvision publishes for its classification models.

The slow test counts every torchvision classification model whose default weights publish `_ops`
(80 in torchvision 0.29) at its weights' crop size and holds `gmacs` within 1.5 % of the published
figure. Measured on the 2-core VM with one thread, under load: 241 s for all 80, the slowest
vit_h_14 at 518x518 (65 s) and regnet_y_128gf at 384 (30 s), so no model is skipped.
`python -m bench.measure.counting_check` measures the same models with plain fvcore beside (README, "Counting").
"""

from __future__ import annotations

import pytest
import torch

from bench.measure.counting_check import TOLERANCE_PCT, build_for_weights, check, published_models

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PUBLISHED = published_models()


def test_published_models_and_their_builds():
    """The list the slow test walks: default weights with `_ops`, crop sizes from the weights' transforms."""
    by_name = {p.name: p for p in PUBLISHED}
    assert len(PUBLISHED) >= 70
    assert by_name["vit_b_16"].crop == 224 and by_name["vit_b_16"].gmacs == pytest.approx(17.564)
    assert by_name["vit_h_14"].crop == 518 and by_name["efficientnet_b7"].crop == 600
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        assert build_for_weights(by_name["vit_h_14"]).image_size == 518  # the SWAG weights' size


@pytest.mark.slow
@pytest.mark.parametrize("published", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_counted_within_tolerance_of_published(published):
    row = check(published, with_plain=False)
    assert abs(row["delta_pct_gmacs"]) <= TOLERANCE_PCT, row


def test_a_bare_run_writes_under_runs_never_over_the_committed_result(tmp_path, monkeypatch):
    """`--out` defaults to runs/counting; results/counting is written only when asked for."""
    from bench.measure.counting_check import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "counting").mkdir(parents=True)
    assert main(["--models", "squeezenet1_1"]) == 0
    written = tmp_path / "runs" / "counting"
    assert sorted(p.name for p in written.iterdir()) == ["counting.csv", "counting.md"]
    assert not any((tmp_path / "results" / "counting").iterdir())
    assert "squeezenet1_1" in (written / "counting.csv").read_text()
