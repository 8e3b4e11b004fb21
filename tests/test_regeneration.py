"""Each committed result regenerates to what is committed (results/REGENERATE.yaml, bench.studies.regenerate).

Every folder under results/ is in the registry: either a render (a report or a render of committed
records or JSON, nothing measured again), run here into a temporary folder and compared table by
table with the committed files, or historical, with the reason. The renders of run reports
(`vtbench report`, about 15 s each on 2 cores) are in the slow tier.
"""

from __future__ import annotations

import shutil

import pytest

from bench.core.errors import UsageError
from bench.studies import regenerate

ENTRIES = regenerate.load_registry()
REPORT_RENDER = "vtbench report "


def test_every_results_folder_is_in_the_registry():
    assert regenerate.result_folders() == sorted(ENTRIES)


def test_every_render_writes_into_out_and_every_historical_folder_says_why():
    for entry in ENTRIES.values():
        if entry.render is not None:
            assert entry.committed.is_dir(), entry.name
            assert regenerate.table_files(entry.committed), f"{entry.name}: no table to compare"
        else:
            assert len(entry.historical) > 40, entry.name


def test_frozen_legacy_speed_studies_say_they_are_historical():
    frozen = sorted(regenerate.RESULTS.glob("speed_*/**/speed.md"))
    assert len(frozen) == 12
    for path in frozen:
        assert path.read_text().startswith("> **Historical.**"), path
        assert ENTRIES[path.relative_to(regenerate.RESULTS).parts[0]].historical


def _renders(report: bool) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if report else name for name, entry in ENTRIES.items()
            if entry.render is not None and entry.render.startswith(REPORT_RENDER) == report]


@pytest.mark.parametrize("name", _renders(report=False) + _renders(report=True))
def test_committed_result_regenerates_to_its_tables(name):
    assert regenerate.check(ENTRIES[name]) == []


def test_the_comparison_sees_a_changed_number_or_table_but_not_the_header(tmp_path):
    committed = regenerate.RESULTS / "fidelity"
    made = tmp_path / "made"
    shutil.copytree(committed, made)
    md = (made / "fidelity.md").read_text()
    (made / "fidelity.md").write_text(md.replace("Records measured", "Records measured (regenerated)", 1))
    assert regenerate.compare_tables(made, committed) == []
    first_table_row = next(line for line in md.splitlines() if line.startswith("| resnet18"))
    (made / "fidelity.md").write_text(md.replace(first_table_row, first_table_row.replace("resnet18", "resnet19")))
    text = (made / "fidelity.csv").read_text()
    (made / "fidelity.csv").write_text(text.replace("1.814", "1.815", 1))
    (made / "fidelity_budget.csv").unlink()
    problems = regenerate.compare_tables(made, committed)
    assert [p.split(":")[0] for p in problems] == ["fidelity_budget.csv", "fidelity.csv row 1", "fidelity.md"], problems


def test_a_bad_registry_is_refused(tmp_path):
    for text in ("a:\n  render: vtbench report x\n", "a:\n  historical: why\n  render: vtbench x --out {out}\n",
                 "a:\n  rendr: vtbench x --out {out}\n"):
        (tmp_path / "r.yaml").write_text(text)
        with pytest.raises(UsageError):
            regenerate.load_registry(tmp_path / "r.yaml")


def test_regenerating_in_place_copies_the_render_and_removes_what_it_no_longer_makes(tmp_path):
    made, committed = tmp_path / "made", tmp_path / "committed"
    (made / "plots").mkdir(parents=True)
    (made / "table.csv").write_text("a\n1\n")
    (made / "plots" / "new.png").write_bytes(b"png")
    (committed / "plots").mkdir(parents=True)
    (committed / "table.csv").write_text("a\n0\n")
    (committed / "old.csv").write_text("stale\n")
    (committed / "plots" / "old.png").write_bytes(b"stale")
    (committed / "NOTES.md").write_text("written by a person\n")
    regenerate.sync(made, committed)
    assert sorted(str(p.relative_to(committed)) for p in committed.rglob("*") if p.is_file()) == [
        "NOTES.md", "plots/new.png", "table.csv"]
    assert (committed / "table.csv").read_text() == "a\n1\n"
