"""Faults, hostile input and shared folders (issue 12): every path vtbench derives from data stays
inside its folder, validating a grid never calls user code, record files of the wrong shape are
listed as corrupt (never a traceback), report outputs are escaped and replaced atomically, and
bad `vtbench train` values are one-line usage errors.

Every run folder here is written by hand (a cells.json and a few records): no model is trained.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from bench.cli import main as cli_main
from bench.core.errors import UsageError
from bench.core.records import CorruptRecord, iter_records, make_record, read_record, write_json_atomic, write_record

REPO = Path(__file__).resolve().parents[1]
ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "threads": 1}
COMPLEXITY = {"model": "resnet18", "model_args": {"num_classes": 10, "stem": "cifar"}, "measure": ["complexity"],
              "input_size": 16, "seed": 0, "complexity": {}, "latency": {}, "train": {}}
# A small VT cell (builds in well under a second) for the attention-plot tests.
VT_CELL = {"model": "vt_resnet18",
           "model_args": {"num_classes": 10, "stem": "cifar", "num_tokens": 4, "token_channels": 32},
           "measure": ["train"], "input_size": 16, "seed": 0, "complexity": {}, "latency": {},
           "train": {"dataset": "digits", "epochs": 1}}


def _run(tmp_path: Path, records: list[dict], name: str = "run") -> Path:
    """A run folder: cells.json listing each record's cell and the records, each named by its
    `_file_id` (default: its cell_id), as hand-edited or damaged files would be."""
    run = tmp_path / name
    (run / "records").mkdir(parents=True)
    cells = []
    for record in records:
        file_id = record.get("_file_id", record.get("cell_id"))
        payload = {k: v for k, v in record.items() if not k.startswith("_")}
        (run / "records" / f"{file_id}.json").write_text(json.dumps(payload))
        config = payload.get("config") if isinstance(payload.get("config"), dict) else COMPLEXITY
        cells.append({"cell_id": file_id, "config": record.get("_cell_config", config)})
    write_json_atomic(run / "cells.json", cells)
    return run


# ------------------------------------------------------------------ 1. paths derived from data

def test_write_record_refuses_a_cell_id_that_is_a_path(tmp_path):
    records = tmp_path / "a" / "b" / "records"
    record = make_record(COMPLEXITY, metrics={"gmacs": 1.0}, env=ENV)
    for bad in ("../../../x", "/tmp/x", "ABCDEF012345", "0123456789a", "", None):
        with pytest.raises(UsageError, match="invalid cell id"):
            write_record(records, {**record, "cell_id": bad})
    assert not list(tmp_path.rglob("x.json"))
    assert write_record(records, record) == records / f"{record['cell_id']}.json"


def test_a_record_whose_cell_id_differs_from_its_file_name_is_corrupt(tmp_path):
    record = make_record(COMPLEXITY, metrics={"gmacs": 1.0}, env=ENV)
    run = _run(tmp_path, [{**record, "cell_id": "../../../x", "_file_id": record["cell_id"]}])
    path = run / "records" / f"{record['cell_id']}.json"
    with pytest.raises(CorruptRecord, match="cell_id: .* is not 12 lowercase hex digits"):
        read_record(path)
    other = make_record({**COMPLEXITY, "seed": 1}, metrics={}, env=ENV)["cell_id"]
    path.write_text(json.dumps({**record, "cell_id": other}))  # a valid id, but another cell's
    ((_, found),) = list(iter_records(run / "records"))
    assert isinstance(found, CorruptRecord) and "differs from its file name" in str(found)
    (run / "records" / "notes.json").write_text(json.dumps(record))
    assert "not a cell id" in str(dict(iter_records(run / "records"))[run / "records" / "notes.json"])


def test_interleave_does_not_write_outside_the_run(tmp_path, monkeypatch):
    import bench.pipeline.interleave as inter

    config = {**COMPLEXITY, "measure": ["latency"], "latency": {"device": "cpu", "batch_size": 1}}
    record = make_record(config, metrics={"latency_ms_p50": 1.0}, env=ENV)
    run = _run(tmp_path / "top" / "mid", [{**record, "cell_id": "../../../x", "_file_id": record["cell_id"]}])
    round_metrics = {"latency_ms_p50": 1.0, "latency_ms_p20": 0.9, "latency_ms_p80": 1.1, "latency_ms_mean": 1.0,
                     "latency_ms_min": 0.8, "latency_iters": 3, "batch_size_used": 1}
    monkeypatch.setattr(inter, "_build", lambda config: None)
    monkeypatch.setattr(inter, "_measure", lambda model, config, timing: dict(round_metrics))
    with pytest.raises(UsageError, match="no ok record"):
        inter.interleave(run, rounds=2)
    assert not list(tmp_path.rglob("x.json"))
    bad_cells = [{"cell_id": "../../../x", "config": config}]  # cells.json is data too
    write_json_atomic(run / "cells.json", bad_cells)
    with pytest.raises(UsageError, match="invalid cell id"):
        inter.latency_cells(run)


SESSION = {"id": "0123456789ab", "protocol": "interleaved", "started_at": "2025-01-01T00:00:00+00:00",
           "finished_at": "2025-01-01T00:01:00+00:00", "rounds": 3, "cells": 1}


def test_remeasurements_are_named_by_their_fields_and_never_overwrite(tmp_path):
    from bench.core.records import make_remeasurement, read_remeasurement, write_remeasurement

    record = make_record(COMPLEXITY, metrics={"gmacs": 1.0}, env=ENV)
    records = tmp_path / "run" / "records"
    remeasurement = make_remeasurement(record, {"latency_ms_p50": 2.0}, session=SESSION, env=ENV)
    for bad in ("../../../x", "", None, "ABCDEF012345"):
        with pytest.raises(UsageError, match="invalid cell id"):
            write_remeasurement(records, {**remeasurement, "remeasures": bad})
    assert not list(tmp_path.rglob("x*.json"))
    folder = records / "remeasured"
    folder.mkdir(parents=True)
    (folder / f"{record['cell_id']}.1.json").write_text("not json")  # a damaged file keeps its number
    path, written = write_remeasurement(records, remeasurement)
    assert path == folder / f"{record['cell_id']}.2.json" and written["number"] == 2
    assert read_remeasurement(path) == written
    assert (folder / f"{record['cell_id']}.1.json").read_text() == "not json"


def test_a_remeasurement_whose_fields_differ_from_its_file_name_is_corrupt(tmp_path):
    from bench.core.records import iter_remeasurements, make_remeasurement, read_remeasurement, write_remeasurement

    record = make_record(COMPLEXITY, metrics={"gmacs": 1.0}, env=ENV)
    other = make_record({**COMPLEXITY, "seed": 1}, metrics={}, env=ENV)["cell_id"]
    run = _run(tmp_path, [record])
    path, written = write_remeasurement(run / "records", make_remeasurement(record, {"latency_ms_p50": 2.0},
                                                                             session=SESSION, env=ENV))
    folder = path.parent
    (folder / f"{other}.1.json").write_text(json.dumps(written))  # a valid id, but another cell's
    (folder / f"{record['cell_id']}.7.json").write_text(json.dumps(written))  # number 1 inside
    (folder / "notes.json").write_text(json.dumps(written))
    (folder / f"{record['cell_id']}.2.json").write_text(json.dumps({**written, "number": 2, "remeasures": "../x"}))
    found = dict(iter_remeasurements(run / "records"))
    assert found[path] == written
    assert "differs from its file name" in str(found[folder / f"{other}.1.json"])
    assert "number 1 differs from its file name's 7" in str(found[folder / f"{record['cell_id']}.7.json"])
    assert "not a re-measurement's" in str(found[folder / "notes.json"])
    assert "remeasures: '../x' is not 12 lowercase hex digits" in str(found[folder / f"{record['cell_id']}.2.json"])
    with pytest.raises(CorruptRecord):
        read_remeasurement(folder / f"{other}.1.json")


def test_remeasurements_are_not_written_through_a_planted_symlink(tmp_path):
    from bench.core.records import make_remeasurement, write_remeasurement

    record = make_record(COMPLEXITY, metrics={"gmacs": 1.0}, env=ENV)
    run = _run(tmp_path / "top", [record])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (run / "records" / "remeasured").symlink_to(outside)
    with pytest.raises(UsageError, match="resolves outside"):
        write_remeasurement(run / "records", make_remeasurement(record, {"latency_ms_p50": 2.0}, session=SESSION,
                                                                env=ENV))
    assert not list(outside.iterdir())


def test_names_used_in_paths_are_single_safe_components():
    from bench.core.records import check_path_name

    for bad in ("..", "../x", "a/b", ".hidden", "", "a\\b", None):
        with pytest.raises(UsageError):
            check_path_name(bad, "run name")
    assert check_path_name("resnet18-digits", "run name") == "resnet18-digits"


# ------------------------------------------------------------------ 2. no user code at validation

def test_dry_run_never_calls_an_import_path_model(tmp_path, capsys):
    pwned = tmp_path / "pwned"
    grid = {"name": "evil", "base": {"model": "os:system", "model_args": {"command": f"touch {pwned}"},
                                     "measure": ["complexity"], "input_size": 8}}
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(grid))
    code = cli_main(["launch", str(path), "--dry-run", "--run-dir", str(tmp_path / "run")])
    assert not pwned.exists(), "validating the grid ran the model's callable"
    assert code == 0
    assert not (tmp_path / "run").exists()


def test_registered_models_are_still_checked_on_the_meta_device():
    from bench.pipeline.grid import build_grid

    raw = {"name": "g", "base": {"model": "vt_resnet18", "model_args": {"tokenizer": "nope"}, "input_size": 32}}
    with pytest.raises(UsageError, match="tokenizer"):
        build_grid(raw)


# ------------------------------------------------------------------ 3. escaping and file modes

def test_report_md_escapes_html_from_record_fields(tmp_path):
    from bench.analysis.report import write_report

    config = {**COMPLEXITY, "model_args": {**COMPLEXITY["model_args"], "note": "<img src=x onerror=alert(2)>"}}
    try:
        raise RuntimeError("<script>alert(1)</script> & more")
    except RuntimeError as exc:
        record = make_record(config, error=exc, env=ENV)
    run = _run(tmp_path, [record])
    write_report([run], formats=["md", "html"])
    html = (run / "report" / "report.html").read_text()
    assert "<script>" not in html and "<img" not in html
    md = (run / "report" / "report.md").read_text()
    assert not re.search(r"(?<!\\)<", md), "report.md has an unescaped '<'"
    assert r"\<script>alert(1)\</script> \& more" in md


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_follow_the_umask_not_mkstemp(tmp_path, umask, mode):
    import torch

    from bench.measure.checkpoint import save_checkpoint
    from bench.analysis.report import write_report

    old = os.umask(umask)
    try:
        record = make_record(COMPLEXITY, error=RuntimeError("x"), env=ENV)
        path = write_record(tmp_path / "run" / "records", record)
        cells = write_json_atomic(tmp_path / "run" / "cells.json", [{"cell_id": record["cell_id"], "config": COMPLEXITY}])
        ckpt = save_checkpoint(tmp_path / "run" / "cells" / record["cell_id"], {"weights": torch.zeros(2)})
        report = write_report([tmp_path / "run"], formats=["md", "csv"])
    finally:
        os.umask(old)
    for written in (path, cells, ckpt, *report.files.values()):
        assert written.stat().st_mode & 0o777 == mode, written


# ------------------------------------------------------------------ 4. records of the wrong shape

def _hostile(kind: str) -> tuple[dict, str | None]:
    """(record, raw JSON text or None) of one wrongly typed record."""
    record = make_record(COMPLEXITY, metrics={"gmacs": 1.0, "params_m": 11.0}, env=ENV)
    file_id = record["cell_id"]
    if kind == "config_str":
        return {**record, "config": "resnet18", "_file_id": file_id}, None
    if kind == "config_null":
        return {**record, "config": None, "_file_id": file_id}, None
    if kind == "metrics_list":
        return {**record, "metrics": [1, 2]}, None
    if kind == "env_str":
        return {**record, "env": "a laptop"}, None
    if kind == "error_str":
        return {**record, "status": "error", "error": "it broke"}, None
    if kind == "model_args_list":
        return {**record, "config": {**COMPLEXITY, "model_args": ["num_classes"]}, "_file_id": file_id,
                "_cell_config": COMPLEXITY}, None
    assert kind == "gmacs_overflow"
    return record, json.dumps(record).replace('"gmacs": 1.0', '"gmacs": 1e400')  # json loads it as inf


HOSTILE = ("config_str", "config_null", "metrics_list", "env_str", "error_str", "model_args_list", "gmacs_overflow")


@pytest.mark.parametrize("kind", HOSTILE)
def test_wrongly_typed_records_are_listed_as_corrupt_by_status_and_report(tmp_path, capsys, kind):
    record, text = _hostile(kind)
    run = _run(tmp_path, [record])
    if text is not None:
        (run / "records" / f"{record['cell_id']}.json").write_text(text)
    ((path, found),) = list(iter_records(run / "records"))
    assert isinstance(found, CorruptRecord)

    assert cli_main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"corrupt record {path.name}" in out and "1 pending" in out

    assert cli_main(["report", str(run), "--format", "md"]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "### Corrupt record files (1)" in md and path.name in md


# ------------------------------------------------------------------ 5. a bad checkpoint in a cell

class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


@pytest.mark.parametrize("content", [b"not a checkpoint at all", pickle.dumps(_Payload(), protocol=2)],
                         ids=["garbage", "pickled-code"])
def test_a_bad_checkpoint_skips_the_attention_plot_not_the_report(tmp_path, monkeypatch, caplog, content):
    import bench.measure.checkpoint as checkpoint
    from bench.analysis.report import write_report

    monkeypatch.chdir(tmp_path)
    record = make_record(VT_CELL, metrics={"top1": 50.0}, env=ENV)
    run = _run(tmp_path, [record])
    bad = run / "cells" / record["cell_id"] / "checkpoint.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    loads = []
    real = checkpoint.read_checkpoint_file
    monkeypatch.setattr(checkpoint, "read_checkpoint_file", lambda path: loads.append(path) or real(path))

    report = write_report([run], formats=["md"])
    assert loads == [bad], "the attention plot must load checkpoints through bench.measure.checkpoint"
    reason = dict(report.skipped_plots)["token_attention"]
    assert str(bad) in reason and "corrupt or unreadable" in reason
    assert "corrupt or unreadable" in caplog.text
    assert "Tokenizer attention" in (run / "report" / "report.md").read_text()
    assert not (tmp_path / "pwned-by-checkpoint").exists()


# ------------------------------------------------------------------ 6. vtbench train values

TRAIN = ["train", "resnet18", "--dataset", "digits", "--epochs", "1", "--input-size", "8", "--threads", "1",
         "--no-progress"]


@pytest.mark.parametrize("extra, words", [
    (["--input-size", "0"], "input_size must be a positive integer"),
    (["--threads", "0"], "threads must be a positive integer"),
    (["--threads", "-2"], "threads must be a positive integer"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--set", "dataset_args.nope=1"], "no option(s) nope"),
])
def test_train_refuses_bad_values_on_one_line(tmp_path, capsys, extra, words):
    assert cli_main([*TRAIN, "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vtbench train: error:") and words in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_train_refuses_an_out_that_is_a_file(tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    for out in (existing, existing / "sub"):
        assert cli_main([*TRAIN, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vtbench train: error:") and "file" in err and "\n" not in err
    assert existing.read_text() == "keep me"


def test_grid_train_sections_check_dataset_args():
    from bench.pipeline.grid import build_grid

    raw = {"name": "g", "base": {"model": "resnet18", "input_size": 32, "measure": ["train"],
                                 "train": {"dataset": "digits", "dataset_args": {"augmnet": True}}}}
    with pytest.raises(UsageError, match="augmnet"):
        build_grid(raw)


# ------------------------------------------------------------------ 7. duplicate keys, atomic reports

def test_duplicate_yaml_keys_are_refused_with_key_and_line(tmp_path):
    from bench.pipeline.grid import load_grid

    path = tmp_path / "dup.yaml"
    path.write_text(textwrap.dedent("""\
        name: dup
        base: {model: resnet18, input_size: 32}
        axes:
          seed: [0, 1]
        axes:
          num_classes: [10]
        """))
    with pytest.raises(UsageError, match=r"duplicate key 'axes' \(first given on line 3\).*line 5"):
        load_grid(path)
    path.write_text("name: dup\nbase:\n  model: resnet18\n  input_size: 32\n  model: vt_resnet18\n")
    with pytest.raises(UsageError, match="duplicate key 'model'"):
        load_grid(path)


def test_merge_keys_may_still_be_overridden():
    from bench.pipeline.grid import UniqueKeyLoader

    assert yaml.load("a: &x {k: 1, j: 2}\nb: {<<: *x, k: 3}\n", Loader=UniqueKeyLoader) == \
        {"a": {"k": 1, "j": 2}, "b": {"k": 3, "j": 2}}


def test_a_failing_plot_write_leaves_the_former_plot_whole(tmp_path, monkeypatch):
    import errno

    import matplotlib.figure
    import matplotlib.pyplot as plt

    from bench.analysis import report as report_module
    from bench.analysis.report import write_report

    run = _run(tmp_path, [make_record(VT_CELL, metrics={"top1": 50.0}, env=ENV)])
    plots = run / "report" / "plots"
    plots.mkdir(parents=True)
    for suffix in (".png", ".svg"):
        (plots / f"token_attention{suffix}").write_text("the good plot")

    def disk_full(self, fname, *args, **kwargs):
        target = open(fname, "wb") if isinstance(fname, (str, Path)) else fname
        target.write(b"<svg trunc")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "_attention", lambda data: plt.figure())
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_report([run], formats=["md"])
    for suffix in (".png", ".svg"):
        assert (plots / f"token_attention{suffix}").read_text() == "the good plot"
    assert not [p for p in plots.iterdir() if p.suffix == ".tmp"]


def test_a_full_disk_leaves_the_former_report_files_whole(tmp_path):
    """A real short write: the file-size limit (RLIMIT_FSIZE) makes every write past 10 bytes fail."""
    try:
        raise RuntimeError("x")
    except RuntimeError as exc:
        run = _run(tmp_path, [make_record(COMPLEXITY, error=exc, env=ENV)])
    out = run / "report"
    out.mkdir()
    for name in ("report.md", "report.html", "table.csv"):
        (out / name).write_text("the good one")
    script = textwrap.dedent(f"""\
        import resource, signal
        from bench.analysis.report import write_report
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        for formats in (["md"], ["html"], ["csv"]):
            try:
                write_report([{str(run)!r}], formats=formats)
            except OSError as exc:
                print(formats, "failed:", exc)
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("File too large") == 3, done.stdout  # the limit did cut every write
    for name in ("report.md", "report.html", "table.csv"):
        assert (out / name).read_text() == "the good one", name
    assert not [p.name for p in out.iterdir() if p.suffix == ".tmp"]
