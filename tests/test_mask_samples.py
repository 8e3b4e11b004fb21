"""Predicted masks: a segmentation run writes the first test scenes' predictions, the report draws them.

Training side: tiny real runs on `shapes` (16 x 16, 32 scenes). Report side: run folders of FPN and
VT-FPN records with hand-made mask_samples.npz files, so the figure is checked without training.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.core.errors import UsageError
from bench.core.records import make_record, write_record
from bench.measure import checkpoint as ckpt
from bench.measure.data import build_dataset
from bench.measure.train import MASK_SAMPLES_FILE, TrainConfig, config_fingerprint, display_images, train

TINY_SEG = f"{__name__}:tiny_seg"
SHAPES = {"num_samples": 32}


def tiny_seg(num_classes: int = 5) -> nn.Module:
    """Two conv/BN/ReLU layers and a 1x1 classifier: a segmentation model that trains in a second."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, num_classes, 1))
    model.task, model.num_classes, model.default_input_size = "seg", num_classes, 16
    return model


def _config(**overrides) -> TrainConfig:
    values = dict(dataset="shapes", input_size=16, epochs=1, batch_size=16, lr=0.05, threads=1,
                  dataset_args=dict(SHAPES))
    values.update(overrides)
    return TrainConfig(**values)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> dict[int, tuple[Path, dict]]:
    """Seeds 0 and 1 of the tiny model, trained one epoch each: {seed: (out_dir, metrics)}."""
    runs = {}
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"seed{seed}")
        runs[seed] = out, train(TINY_SEG, {}, _config(seed=seed), out, progress=False)
    return runs


def test_training_writes_the_first_test_scenes_with_their_masks(two_seeds):
    out, metrics = two_seeds[0]
    assert metrics["mask_samples"] == MASK_SAMPLES_FILE
    arrays = _load(out / MASK_SAMPLES_FILE)
    assert arrays["image"].shape == (4, 16, 16, 3) and arrays["image"].dtype == np.uint8
    assert arrays["target"].shape == arrays["pred"].shape == (4, 16, 16)
    assert arrays["target"].dtype == arrays["pred"].dtype == np.int16
    assert arrays["index"].tolist() == [0, 1, 2, 3]
    assert int(arrays["num_classes"]) == 5 and int(arrays["ignore_index"]) == 255
    test_set = build_dataset("shapes", "test", input_size=16, task="seg", **SHAPES)
    expected = np.stack([test_set[i][1].numpy() for i in range(4)])
    np.testing.assert_array_equal(arrays["target"], expected)
    assert arrays["pred"].min() >= 0 and arrays["pred"].max() < 5


def test_every_seed_shows_the_same_scenes(two_seeds):
    first, second = (_load(two_seeds[seed][0] / MASK_SAMPLES_FILE) for seed in (0, 1))
    np.testing.assert_array_equal(first["target"], second["target"])
    np.testing.assert_array_equal(first["image"], second["image"])


def test_predictions_are_the_checkpointed_models_argmax(two_seeds):
    out, _ = two_seeds[1]
    state = ckpt.read_checkpoint_file(out / ckpt.CHECKPOINT)
    model = tiny_seg()
    model.load_state_dict(state["model"])
    model.eval()
    test_set = build_dataset("shapes", "test", input_size=16, task="seg", **SHAPES)
    with torch.no_grad():
        expected = model(torch.stack([test_set[i][0] for i in range(4)])).argmax(1).numpy()
    np.testing.assert_array_equal(_load(out / MASK_SAMPLES_FILE)["pred"], expected)


def test_mask_samples_zero_writes_none_and_keeps_the_checkpoint(two_seeds, tmp_path):
    """`mask_samples` changes neither trajectory nor result: a finished run resumes with it changed,
    trains nothing more, and with 0 removes the file it wrote before."""
    out, _ = two_seeds[0]
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (ckpt.CHECKPOINT, MASK_SAMPLES_FILE):
        (copy / name).write_bytes((out / name).read_bytes())
    metrics = train(TINY_SEG, {}, _config(seed=0, mask_samples=0), copy, progress=False)
    assert metrics["resumed_from_epoch"] == 1  # the checkpoint was taken, not retrained
    assert "mask_samples" not in metrics and not (copy / MASK_SAMPLES_FILE).exists()
    assert config_fingerprint(TINY_SEG, {}, _config(mask_samples=0)) == config_fingerprint(TINY_SEG, {}, _config())


def _distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    train(TINY_SEG, {}, _config(), out_dir, resume=False, progress=False)


def test_two_processes_write_one_file_from_the_final_weights(tmp_path):
    """Rank 0 alone predicts (the other rank waits at the barrier); the file matches the checkpoint."""
    import torch.multiprocessing as mp

    from tests.test_distributed import _free_port

    mp.spawn(_distributed_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    model = tiny_seg()
    model.load_state_dict(ckpt.read_checkpoint_file(tmp_path / ckpt.CHECKPOINT)["model"])
    model.eval()
    test_set = build_dataset("shapes", "test", input_size=16, task="seg", **SHAPES)
    with torch.no_grad():
        expected = model(torch.stack([test_set[i][0] for i in range(4)])).argmax(1).numpy()
    np.testing.assert_array_equal(_load(tmp_path / MASK_SAMPLES_FILE)["pred"], expected)


def test_fewer_test_scenes_than_asked_gives_every_scene(tmp_path):
    metrics = train(TINY_SEG, {}, _config(mask_samples=64, dataset_args={"num_samples": 3}, batch_size=2),
                    tmp_path, progress=False)
    assert metrics["mask_samples"] == MASK_SAMPLES_FILE
    assert _load(tmp_path / MASK_SAMPLES_FILE)["target"].shape == (3, 16, 16)


def test_mask_samples_out_of_range_is_a_usage_error():
    for bad in (-1, 65):
        with pytest.raises(UsageError, match="mask_samples"):
            _config(mask_samples=bad)


def test_display_images_stretch_each_image_and_make_grey_rgb():
    batch = np.stack([np.full((1, 2, 2), -3.0), np.arange(4.0).reshape(1, 2, 2)])
    batch[0, 0, 0, 0] = 5.0
    shown = display_images(batch)
    assert shown.shape == (2, 2, 2, 3) and shown.dtype == np.uint8
    assert shown[1, :, :, 0].tolist() == [[0, 85], [170, 255]]
    assert (shown[..., 0] == shown[..., 2]).all()  # one channel -> grey
    assert shown[0, 0, 0, 0] == 255 and shown[0, 1, 1, 0] == 0


# ------------------------------------------------------------------------------ the report

ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "torch": "2.x", "threads": 2}
SCENES, SIDE, CLASSES = 3, 8, 11


def _seg_config(model: str, seed: int) -> dict:
    args = {"num_classes": CLASSES, "width": 0.25, **({"token_channels": 128} if model.startswith("vt_") else {})}
    return {"model": model, "model_args": args, "measure": ["train"], "input_size": SIDE, "seed": seed,
            "complexity": {}, "latency": {}, "train": {"dataset": "fashion_scenes", "epochs": 1}}


def _samples(pred_value: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)  # the same scenes for every cell
    target = rng.integers(0, CLASSES, size=(SCENES, SIDE, SIDE)).astype(np.int16)
    target[:, 0, 0] = 255  # an ignored pixel
    names = np.array(["background", *[f"item {i}" for i in range(1, CLASSES)]])
    return {"image": rng.integers(0, 256, size=(SCENES, SIDE, SIDE, 3)).astype(np.uint8), "target": target,
            "pred": np.full((SCENES, SIDE, SIDE), pred_value, dtype=np.int16), "index": np.arange(SCENES),
            "class_names": names}


def _seg_run(root: Path, with_samples: bool) -> Path:
    """FPN-R50 and VT-FPN-R50, seeds 0 and 1; seed 1 listed first so that 'lowest seed' is a choice."""
    run = root / "segrun"
    mious = {("fpn_r50", 0): 40.0, ("fpn_r50", 1): 44.0, ("vt_fpn_r50", 0): 46.0, ("vt_fpn_r50", 1): 48.0}
    for (model, seed), miou in sorted(mious.items(), key=lambda kv: -kv[0][1]):
        metrics = {"miou": miou, "pixel_acc": 80.0, **({"mask_samples": MASK_SAMPLES_FILE} if with_samples else {})}
        record = make_record(_seg_config(model, seed), metrics=metrics, env=ENV)
        write_record(run / "records", record)
        if with_samples:
            cell = run / "cells" / record["cell_id"]
            cell.mkdir(parents=True)
            np.savez_compressed(cell / MASK_SAMPLES_FILE, **_samples(pred_value=int(miou) % CLASSES))
    return run


@pytest.fixture
def no_attention(monkeypatch):
    """The attention figure builds the model (slow on 2 cores) and is not what these tests check."""
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped

    def skip(data):
        raise PlotSkipped("not drawn in this test")

    monkeypatch.setattr(report_module, "_attention", skip)


def test_report_draws_the_masks_of_the_lowest_seed_fpn_before_vt_fpn(tmp_path, no_attention):
    from bench.analysis.plots import mask_sample_columns
    from bench.analysis.report import build_report, write_report

    run = _seg_run(tmp_path, with_samples=True)
    columns, notes = mask_sample_columns(build_report([run]).data)
    assert [(c.label, c.seed, c.miou) for c in columns] == [("FPN-R50", 0, 40.0), ("VT-FPN-R50", 0, 46.0)]
    assert notes == [] and columns[0].samples.class_names[0] == "background"
    assert int(columns[1].samples.pred[0, 0, 0]) == 46 % CLASSES  # the seed-0 cell's own file
    report = write_report([run], formats=["md"])
    png = run / "report" / "plots" / "mask_samples.png"
    from matplotlib.image import imread

    assert png.exists() and imread(png).std() > 0.05
    md = (run / "report" / "report.md").read_text()
    assert "![Predicted masks on the first 3 test scenes, seed 0](plots/mask_samples.png)" in md
    assert "test items 0, 1, 2, the first 3 of the test set" in md
    assert "mask_samples" not in dict(report.skipped_plots)


def test_report_without_samples_has_no_figure_and_no_line(tmp_path, no_attention):
    from bench.analysis.report import write_report

    run = _seg_run(tmp_path, with_samples=False)
    stale = run / "report" / "plots" / "mask_samples.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier report's figure")
    report = write_report([run], formats=["md"])
    md = (run / "report" / "report.md").read_text()
    assert not stale.exists() and "mask_samples" not in md and "Predicted masks" not in md
    assert "mask_samples" not in dict(report.skipped_plots)


def test_an_unreadable_samples_file_is_left_out_with_a_note(tmp_path, no_attention):
    from bench.analysis.plots import mask_sample_columns, mask_samples_caption
    from bench.analysis.report import build_report

    run = _seg_run(tmp_path, with_samples=True)
    data = build_report([run]).data
    vt = next(r for r in data.records if r["config"]["model"] == "vt_fpn_r50" and r["config"]["seed"] == 0)
    (run / "cells" / vt["cell_id"] / MASK_SAMPLES_FILE).write_bytes(b"not an npz")
    columns, notes = mask_sample_columns(data)
    assert [c.label for c in columns] == ["FPN-R50"]
    assert len(notes) == 1 and "VT-FPN-R50" in notes[0] and "not read" in notes[0]
    assert notes[0] in mask_samples_caption(columns, notes)


def test_a_pickled_array_is_refused(tmp_path):
    """A planted .npz with an object array (a pickle) is never unpickled."""
    from bench.analysis.plots import read_mask_samples

    buffer = io.BytesIO()
    arrays = _samples(0)
    np.savez(buffer, **{**arrays, "class_names": np.array([object()], dtype=object)})
    path = tmp_path / MASK_SAMPLES_FILE
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError):
        read_mask_samples(path, tmp_path)


def test_the_figure_is_drawn_without_torch(tmp_path):
    """The report reads the samples with numpy alone: drawn in a process where torch cannot be imported."""
    from tests.test_analysis_torch_free import _run

    run = _seg_run(tmp_path, with_samples=True)
    code = ("from bench.analysis.report import write_report\n"
            f"write_report([{str(run)!r}], formats=['md'])\n"
            "assert 'torch' not in sys.modules\n")
    result = _run(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "report" / "plots" / "mask_samples.png").exists()
    assert "plots/mask_samples.png" in (run / "report" / "report.md").read_text()


def test_classes_the_model_never_predicts_keep_their_colour(tmp_path):
    """A barely trained model predicts background alone; the masks' other classes are still classes
    (the file's num_classes), not drawn white as ignored pixels."""
    from bench.analysis.plots import MASK_IGNORE_COLOR, _mask_rgb, mask_palette, read_mask_samples
    from matplotlib.colors import to_rgb

    arrays = {k: v for k, v in _samples(0).items() if k != "class_names"}
    np.savez_compressed(tmp_path / MASK_SAMPLES_FILE, **arrays, num_classes=np.array(CLASSES))
    samples = read_mask_samples(tmp_path / MASK_SAMPLES_FILE, tmp_path)
    assert samples.num_classes == CLASSES and samples.class_names is None
    rgb = _mask_rgb(np.array([[9, 255]]), mask_palette(samples.num_classes))
    assert tuple(rgb[0, 0]) != to_rgb(MASK_IGNORE_COLOR) and tuple(rgb[0, 1]) == to_rgb(MASK_IGNORE_COLOR)
