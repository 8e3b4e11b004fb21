"""The report's attention figure: a trained cell's checkpoint on real test images, every token drawn,
the title naming model, module and checkpoint (or saying the weights are untrained)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.measure.checkpoint import save_checkpoint
from bench.core.records import make_record, write_json_atomic, write_record

ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "threads": 1}
TOKENS = 8
CONFIG = {"model": "vt_resnet18",
          "model_args": {"num_classes": 10, "stem": "cifar", "num_tokens": TOKENS, "token_channels": 32},
          "measure": ["train"], "input_size": 16, "seed": 0, "train": {"dataset": "digits", "epochs": 1}}


def _trained_state(seed: int = 123) -> dict:
    import models

    torch.manual_seed(seed)
    return models.build_model(CONFIG["model"], **CONFIG["model_args"]).state_dict()


def _run(tmp_path, name: str, with_checkpoint: bool):
    """A run folder with one VT cell (a record, and a checkpoint when asked) and its cells.json."""
    run = tmp_path / name
    record = make_record(CONFIG, metrics={"top1": 50.0}, env=ENV, run=name)
    write_record(run / "records", record)
    write_json_atomic(run / "cells.json", [{"cell_id": record["cell_id"], "config": CONFIG}])
    if with_checkpoint:
        save_checkpoint(run / "cells" / record["cell_id"], {"fingerprint": "test", "epoch": 1, "model": _trained_state()})
    return run, record["cell_id"]


def _figure(run):
    from bench.analysis import report

    return report._attention(report.load_runs([run]))


def _token_panels(fig):
    return [ax for ax in fig.axes if ax.get_title().startswith("token ")]


def test_trained_checkpoint_on_real_test_images(tmp_path):
    import models
    from bench.analysis.plots import attention_images

    run, cell_id = _run(tmp_path, "trained", with_checkpoint=True)
    fig = _figure(run)
    title = fig._suptitle.get_text()
    assert f"trained/cells/{cell_id}/checkpoint.pt" in title and "trained weights (epoch 1)" in title
    assert "vt_resnet18" in title and "VT module 2 of 2 (the last)" in title and "RecurrentTokenizer" in title
    assert "digits test images" in title and f"all {TOKENS} tokens shown for each of 4 image(s)" in title
    # 16x16 input, CIFAR stem: the last tokenizer sees a 4x4 map, and the title says it was upsampled
    assert "each map is 4x4 pixels, upsampled bilinearly to 16x16" in " ".join(title.split())
    panels = _token_panels(fig)
    assert len(panels) == 4 * TOKENS and all(len(ax.images) == 2 for ax in panels)  # image + map overlaid
    # what is drawn is the CHECKPOINT's attention, upsampled to the 16x16 input
    model = models.build_model(CONFIG["model"], **CONFIG["model_args"])
    model.load_state_dict(_trained_state())
    shown = attention_images(CONFIG, (16, 16), "cls")
    maps = models.token_attention(model.eval(), shown.batch)[-1]
    first = F.interpolate(maps.float(), size=(16, 16), mode="bilinear", align_corners=False)[0, 0].numpy()
    drawn = np.asarray(panels[0].images[1].get_array())
    assert drawn.shape == (16, 16)
    np.testing.assert_allclose(drawn, first / first.max(), rtol=1e-5, atol=1e-6)
    labels = {int(c.rsplit("label ", 1)[1]) for c in [ax.get_title() for ax in fig.axes] if "label " in c}
    assert len(labels) == 4  # four different digits


def test_untrained_weights_only_without_a_trained_cell_and_the_title_says_so(tmp_path):
    run, _ = _run(tmp_path, "untrained", with_checkpoint=False)
    title = _figure(run)._suptitle.get_text()
    assert "UNTRAINED weights" in title and "checkpoint.pt" not in title


def test_a_trained_cell_is_chosen_over_an_untrained_one(tmp_path):
    from bench.analysis import report

    run, cell_id = _run(tmp_path, "both", with_checkpoint=True)
    other = dict(CONFIG, model_args=dict(CONFIG["model_args"], num_tokens=4))
    record = make_record(other, metrics={"top1": 90.0}, env=ENV, run="both")  # better, but no checkpoint
    write_record(run / "records", record)
    chosen_config, checkpoint = report.attention_cell(report.load_runs([run]))
    assert checkpoint is not None and checkpoint.parent.name == cell_id and chosen_config == CONFIG


def test_every_token_is_drawn_or_the_title_counts_the_missing_ones():
    from bench.analysis.plots import MAX_TOKEN_PANELS, attention_figure

    def draw(images, tokens):
        attn = np.random.default_rng(0).random((images, tokens, 4, 4))
        display = [np.zeros((4, 4))] * images
        return attention_figure(attn, display, [f"img {i}" for i in range(images)], "t")

    fig = draw(4, 100)  # 400 panels would exceed the cap: fewer images, never fewer tokens
    assert len(_token_panels(fig)) == 100 * (MAX_TOKEN_PANELS // 100)
    assert "all 100 tokens shown for each of 3 image(s)" in fig._suptitle.get_text()
    fig = draw(1, MAX_TOKEN_PANELS + 80)
    assert len(_token_panels(fig)) == MAX_TOKEN_PANELS
    assert f"first {MAX_TOKEN_PANELS} of {MAX_TOKEN_PANELS + 80} tokens shown (80 left out)" in fig._suptitle.get_text()


def _buildable_classification_sets():
    from bench.measure.data import build_dataset, dataset_spec, list_datasets

    names = []
    for name in list_datasets():
        spec = dataset_spec(name)
        if "cls" not in spec.tasks or spec.needs_root:
            continue
        try:
            build_dataset(name, "test", input_size=16, task="cls")
        except Exception:  # noqa: BLE001 - a data set this machine cannot read is not tested here
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("name", _buildable_classification_sets())
def test_any_registered_classification_set_gives_real_images(name):
    from bench.analysis.plots import attention_images

    config = {"train": {"dataset": name}}
    shown = attention_images(config, (16, 16), "cls")
    assert shown.source == f"{name} test images"
    assert shown.batch.shape[1:] == (3, 16, 16) and 1 <= len(shown.display) <= 4
    assert all(d.min() >= 0 and d.max() <= 1 for d in shown.display)


def test_an_unreadable_data_set_falls_back_to_a_synthetic_image_and_says_why():
    from bench.analysis.plots import attention_images

    shown = attention_images({"train": {"dataset": "imagenet"}}, (16, 16), "cls")
    assert shown.source.startswith("synthetic image (data set 'imagenet' not readable here")
    assert attention_images({}, (16, 16), "cls").source == "synthetic image (the cell names no data set)"


@pytest.mark.slow
def test_a_really_trained_cell_is_drawn_from_its_checkpoint(tmp_path):
    """One epoch of VT-ResNet-18 on digits at 16x16 through bench.measure.train, into RUN/cells/ID (about 40 s)."""
    from bench.measure.train import TrainConfig, train

    run = tmp_path / "real"
    record = make_record(CONFIG, metrics={}, env=ENV, run="real")
    cfg = TrainConfig(dataset="digits", input_size=16, epochs=1, batch_size=64, threads=1, clip_grad_norm=1.0)
    metrics = train(CONFIG["model"], CONFIG["model_args"], cfg, run / "cells" / record["cell_id"], progress=False)
    record["metrics"] = metrics
    write_record(run / "records", record)
    title = _figure(run)._suptitle.get_text()
    assert f"real/cells/{record['cell_id']}/checkpoint.pt" in title and "trained weights (epoch 1)" in title
    assert f"all {TOKENS} tokens shown" in title


def test_a_long_title_is_wrapped_inside_the_figure():
    """The trained cell's title (model, options, module, checkpoint) once ran off both edges."""
    import matplotlib.pyplot as plt

    from bench.analysis.plots import attention_figure

    attn = np.random.default_rng(0).random((2, 4, 12, 12))
    display = [np.zeros((12, 12))] * 2
    long_title = ("Tokenizer attention: vt_resnet18 (num_classes=10, stem=cifar, width=0.25, token_channels=256, "
                  "recurrent=False, tokenizer=filter, num_tokens=4) module 2 of 2 (the last), "
                  "vt.blocks.1.tokenizer (FilterTokenizer); trained weights (epoch 4) from run/cells/0123456789ab")
    fig = attention_figure(attn, display, ["a", "b"], long_title)
    try:
        fig.canvas.draw()
        box = fig._suptitle.get_window_extent()
        width, height = fig.canvas.get_width_height()
        assert box.x0 >= 0 and box.x1 <= width and box.y1 <= height, (box, width, height)
        assert fig._suptitle.get_text().replace("\n", " ").startswith("Tokenizer attention: vt_resnet18")
    finally:
        plt.close(fig)
