"""report.html in a real browser (issue 13): headless Chromium (Debian's `chromium`) screenshots a report
generated here and reports, after the page's load event, whether every <img> decoded. Pages with a
broken image (a file deleted after the page was written, a truncated embedded PNG) must fail the
same checks, so the checks are known to catch a missing image.

Skipped where chromium is absent; scripts/test.sh installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bench.core.records import make_record, write_record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; scripts/test.sh installs it)")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
WINDOW = (1400, 3000)  # tall enough for the header, the tables and both plots of the fixture report
# Appended to a copy of the page (report.html itself has no script): once the load event fires, every
# image's state goes into an attribute that --dump-dom prints. naturalWidth is 0 for an image that did
# not decode (a missing file, a truncated PNG), even where the browser shows a broken-image icon.
PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-images', "
         "[...document.images].map(i => (i.complete && i.naturalWidth > 0) ? '1' : '0').join(',')));</script>")
ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "torch": "2.x", "threads": 1}
PLOTS = ("stage5_gmacs", "fpn_vs_vt_fpn")


def _config(model, input_size=224, num_classes=1000):
    return {"model": model, "model_args": {"num_classes": num_classes}, "measure": ["complexity"],
            "input_size": input_size, "seed": 0, "complexity": {}}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    """report.html of a small run with two plots: stage 5 and FPN vs VT-FPN."""
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped

    run = tmp_path_factory.mktemp("browser") / "run"
    for config, metrics in [(_config("resnet18"), {"gmacs": 1.814, "params_m": 11.69, "gmacs_stage5": 0.41}),
                            (_config("vt_resnet18"), {"gmacs": 1.544, "params_m": 11.48, "gmacs_vt": 0.14}),
                            (_config("fpn_r50", 473, 20), {"gmacs": 38.4, "params_m": 28.5, "gmacs_fpn": 12.9}),
                            (_config("vt_fpn_r50", 473, 20), {"gmacs": 27.6, "params_m": 32.4, "gmacs_fpn": 2.1})]:
        write_record(run / "records", make_record(config, metrics=metrics, env=ENV, run="run"))

    def no_attention(data):  # a VT build at 224x224 is slow on 2 cores; the page needs only some images
        raise PlotSkipped("not drawn in this test")

    original, report_module._attention = report_module._attention, no_attention
    try:
        report = report_module.write_report([run], formats=["md", "html"])
    finally:
        report_module._attention = original
    assert tuple(p.name for p in report.plots) == PLOTS
    return run / "report"


def _chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)  # fresh: no cache, no state
    width, height = WINDOW
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", *args,
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def images_loaded(tmp_path: Path, page: Path) -> list[bool]:
    """Whether each <img> of `page` decoded, read from the DOM after the load event."""
    probe = page.with_name(f"{page.stem}.probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(tmp_path, probe, "--dump-dom").stdout
    found = re.search(r'data-images="([01,]*)"', dom)
    assert found, "the probe did not run: no data-images attribute in the dumped DOM"
    return [flag == "1" for flag in found.group(1).split(",") if flag]


def screenshot(tmp_path: Path, page: Path) -> np.ndarray:
    """The page as the browser paints it, (H, W, 3) uint8."""
    from PIL import Image

    png = tmp_path / f"{page.stem}.screenshot.png"
    _chromium(tmp_path, page, f"--screenshot={png}")
    return np.asarray(Image.open(png).convert("RGB"))


def bar_colour(png: Path) -> tuple[int, int, int]:
    """The plot's most frequent saturated colour (its widest bars), as the PNG holds it."""
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    saturated = pixels[pixels.max(axis=1) - pixels.min(axis=1) > 40]
    colours, counts = np.unique(saturated, axis=0, return_counts=True)
    return tuple(int(v) for v in colours[counts.argmax()])


def painted(shot: np.ndarray, rgb: tuple[int, int, int], tol: int = 6) -> int:
    """How many screenshot pixels have the colour `rgb` (within `tol` per channel)."""
    return int((np.abs(shot.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def check_page(tmp_path: Path, page: Path, plot_dir: Path) -> None:
    """The checks a report page must pass: every image decoded; the screenshot not blank; every plot's
    bars painted on it."""
    loaded = images_loaded(tmp_path, page)
    assert len(loaded) == len(PLOTS) and all(loaded), \
        f"images that did not load: {[i for i, ok in enumerate(loaded) if not ok]}"
    shot = screenshot(tmp_path, page)
    assert shot.shape[:2] == (WINDOW[1], WINDOW[0])
    packed = (shot[..., 0].astype(np.int64) << 16) | (shot[..., 1].astype(np.int64) << 8) | shot[..., 2]
    assert shot.std() > 10 and len(np.unique(packed)) > 50, "the screenshot is blank"
    for name in PLOTS:
        assert painted(shot, bar_colour(plot_dir / f"{name}.png")) > 1000, f"{name} not painted"


def test_report_html_renders_with_every_image(report_dir, tmp_path):
    check_page(tmp_path, report_dir / "report.html", report_dir / "plots")


def _deleted_file(page: str, out: Path) -> str:
    """The first image refers to a PNG beside the page that is then deleted."""
    kept = out / "plots" / "first.png"
    shutil.copy(out / "plots" / "stage5_gmacs.png", kept)
    page = re.sub(r"src='data:image/png;base64,[^']*'", "src='plots/first.png'", page, count=1)
    kept.unlink()
    return page


def _truncated(page: str, out: Path) -> str:
    """The first embedded PNG cut after its first 64 base64 characters (header, no image data)."""
    return re.sub(r"(src='data:image/png;base64,[^']{64})[^']*'", r"\1'", page, count=1)


@pytest.mark.parametrize("damage", [_deleted_file, _truncated], ids=["deleted-file", "truncated-png"])
def test_a_broken_image_fails_the_checks(report_dir, tmp_path, damage):
    page = report_dir / f"broken-{damage.__name__.strip('_')}.html"
    page.write_text(damage((report_dir / "report.html").read_text(), report_dir))
    assert images_loaded(tmp_path, page) == [False, True]
    with pytest.raises(AssertionError, match="did not load"):
        check_page(tmp_path, page, report_dir / "plots")
    shot, plots = screenshot(tmp_path, page), report_dir / "plots"
    # the screenshot agrees: the stage-5 plot's bars are missing, the FPN plot's are there
    assert painted(shot, bar_colour(plots / "stage5_gmacs.png")) < 100
    assert painted(shot, bar_colour(plots / "fpn_vs_vt_fpn.png")) > 1000
