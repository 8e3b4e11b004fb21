"""Data sets: shapes, splits, determinism, and clear errors for missing roots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.measure import data
from bench.core.errors import UsageError


def test_registry_lists_tasks_and_classes():
    assert {"digits", "shapes", "cifar10", "cifar100", "imagenet", "segfolder"} <= set(data.list_datasets())
    assert data.dataset_spec("shapes").tasks == ("cls", "seg")
    assert data.dataset_spec("cifar100").num_classes["cls"] == 100
    with pytest.raises(UsageError, match="unknown dataset 'mnist'"):
        data.dataset_spec("mnist")
    with pytest.raises(UsageError, match="segmentation model does not fit"):
        data.resolve_task("digits", "seg")


def test_digits_split_sizes_stratified_and_normalised():
    train = data.build_dataset("digits", "train")
    test = data.build_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert (train.task, train.num_classes, train.input_size) == ("cls", 10, 32)
    counts = np.bincount(test.targets.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    assert abs(float(train.images.mean())) < 1e-4 and abs(float(train.images.std()) - 1) < 1e-4


def test_digits_is_deterministic_and_resizable():
    a = data.build_dataset("digits", "test", input_size=16)
    b = data.build_dataset("digits", "test", input_size=16)
    assert a[5][0].shape == (3, 16, 16)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)


def test_shapes_classification_items_are_seeded():
    train = data.build_dataset("shapes", "train", input_size=24, num_samples=10)
    again = data.build_dataset("shapes", "train", input_size=24, num_samples=10)
    test = data.build_dataset("shapes", "test", input_size=24, num_samples=10)
    image, label = train[3]
    assert image.shape == (3, 24, 24) and 0 <= label < 4 and len(train) == 10
    assert torch.equal(image, again[3][0]) and label == again[3][1]
    assert not torch.equal(image, test[3][0])
    assert len({train[i][1] for i in range(10)}) > 1
    with pytest.raises(IndexError):
        train[10]


def test_shapes_segmentation_masks():
    seg = data.build_dataset("shapes", "train", task="seg", input_size=32, num_samples=8)
    assert (seg.task, seg.num_classes) == ("seg", 5)
    assert seg.class_names == ("background", *data.SHAPE_NAMES)
    image, mask = seg[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.int64
    labels = torch.cat([seg[i][1].flatten() for i in range(8)]).unique()
    assert labels.min() == 0 and labels.max() <= 4 and len(labels) >= 3


def test_shapes_shape_size_scales_the_foreground_and_is_checked():
    def foreground(**options):
        seg = data.build_dataset("shapes", "train", task="seg", input_size=32, num_samples=40,
                                 max_shapes=1, **options)
        return float(torch.stack([seg[i][1] for i in range(40)]).ne(0).float().mean())

    small, large = foreground(shape_size=[0.1, 0.12]), foreground(shape_size=[0.3, 0.35])
    # A shape's area grows with the square of its radius: ~8x here, a wide margin for the four kinds.
    assert large > 4 * small > 0
    with pytest.raises(UsageError, match="shape_size"):
        data.build_dataset("shapes", "train", task="seg", input_size=32, shape_size=[0.3, 0.2])
    default = data.build_dataset("shapes", "train", task="seg", input_size=32, num_samples=4)
    explicit = data.build_dataset("shapes", "train", task="seg", input_size=32, num_samples=4,
                                  shape_size=[0.12, 0.22])
    assert torch.equal(default[3][1], explicit[3][1])  # the documented default is what runs


@pytest.mark.parametrize("name, expected", [("cifar10", "cifar-10-batches-py"),
                                            ("cifar100", "cifar-100-python"),
                                            ("imagenet", "ROOT/train/CLASS"),
                                            ("segfolder", "ROOT/images")])
def test_missing_root_is_one_clear_error(name, expected, tmp_path):
    with pytest.raises(UsageError, match="needs --data-root") as no_root:
        data.build_dataset(name, "train")
    assert expected in str(no_root.value) and "\n" not in str(no_root.value)
    with pytest.raises(UsageError, match="does not exist"):
        data.build_dataset(name, "train", root=tmp_path / "nowhere")
    with pytest.raises(UsageError, match="not found") as empty:
        data.build_dataset(name, "train", root=tmp_path)
    assert expected.split("/")[-1].split("..")[0] in str(empty.value)


def test_segfolder_reads_images_masks_and_ignore_index(tmp_path):
    from PIL import Image

    for folder in ("train", "val"):
        (tmp_path / "images" / folder).mkdir(parents=True)
        (tmp_path / "masks" / folder).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(tmp_path / "images" / folder / f"a{i}.jpg")
            mask = np.zeros((10, 12), np.uint8)
            mask[:5], mask[0, 0], mask[9, 11] = 2, 255, 7  # 7 >= num_classes -> ignored
            Image.fromarray(mask).save(tmp_path / "masks" / folder / f"a{i}.png")
    (tmp_path / "classes.txt").write_text("bg\nthing\nstuff\n")
    seg = data.build_dataset("segfolder", "test", root=tmp_path, input_size=12)
    image, mask = seg[0]
    assert (seg.task, seg.num_classes, len(seg)) == ("seg", 3, 2)
    assert image.shape == (3, 12, 12) and mask.shape == (12, 12)
    assert set(mask.unique().tolist()) == {0, 2, data.IGNORE_INDEX}


def _write_idx(path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file, gzip-compressed as Debian ships them."""
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion_root(tmp_path):
    """A 40-image / 20-image Fashion-MNIST stand-in in the original IDX layout."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_read_idx_round_trips(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    _write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), array)


def test_fashion_mnist_from_idx_files_with_balanced_subset(tiny_fashion_root):
    train = data.build_dataset("fashion_mnist", "train", root=tiny_fashion_root, input_size=48, train_subset=20)
    test = data.build_dataset("fashion_mnist", "test", root=tiny_fashion_root)
    assert (len(train), len(test)) == (20, 20)
    assert np.bincount(train.targets.numpy(), minlength=10).tolist() == [2] * 10  # class-balanced
    image, label = train[0]
    assert image.shape == (3, 48, 48) and 0 <= label < 10
    assert test[0][0].shape == (3, 28, 28) and test.num_classes == 10


def test_fashion_mnist_missing_names_the_debian_package(tmp_path):
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        data.build_dataset("fashion_mnist", "train", root=tmp_path)


@pytest.mark.skipif(not data.FASHION_MNIST_ROOT.exists(), reason="dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_the_real_data_set():
    """The installed package: 60,000 / 10,000 images, 6,000 / 1,000 per class (scripts/test.sh installs it)."""
    train = data.build_dataset("fashion_mnist", "train")
    test = data.build_dataset("fashion_mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(test.targets.numpy(), minlength=10).tolist() == [1000] * 10


# ---------------------------------------------------------------------------- fashion_scenes
@pytest.fixture
def solid_fashion_root(tmp_path):
    """IDX stand-ins whose images are solid squares: train image i at intensity 100 + i, test image j at 30 + j."""
    for split, n, base in (("train", 40, 100), ("t10k", 20, 30)):
        values = base + np.arange(n)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.broadcast_to(values[:, None, None], (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def _scenes(root, split="train", **options):
    return data.build_dataset("fashion_scenes", split, root=root, input_size=64, **options)


def test_fashion_scenes_label_the_last_item_painted_at_each_pixel(solid_fashion_root):
    scenes = _scenes(solid_fashion_root)
    assert (scenes.task, scenes.num_classes, len(scenes)) == ("seg", 11, 10_000)
    assert scenes.class_names[:2] == ("background", "T-shirt/top") and scenes.class_names[-1] == "Ankle boot"
    assert len(scenes.class_names) == scenes.num_classes
    for index in range(20):
        canvas, mask = scenes.render(index)
        expected_mask, expected_value = np.zeros((64, 64), np.int64), np.zeros((64, 64), np.float32)
        layout = scenes.layout(index)
        assert 2 <= len(layout) <= 4
        for item in layout:  # solid items: the whole box is the item's, a later item covers an earlier one
            assert 0.3 * 64 - 1 <= item.side <= 0.5 * 64 + 1 and item.top + item.side <= 64
            box = (slice(item.top, item.top + item.side), slice(item.left, item.left + item.side))
            expected_mask[box], expected_value[box] = 1 + item.label, (100 + item.source) / 255
        np.testing.assert_array_equal(mask, expected_mask)
        np.testing.assert_allclose(canvas, expected_value, atol=1e-6)
    image, target = scenes[0]
    assert image.shape == (3, 64, 64) and target.dtype == torch.int64


def test_fashion_scenes_are_deterministic_per_seed_and_index(solid_fashion_root):
    first, again = _scenes(solid_fashion_root), _scenes(solid_fashion_root)
    assert all(torch.equal(first[i][0], again[i][0]) and torch.equal(first[i][1], again[i][1]) for i in (0, 7))
    reseeded = _scenes(solid_fashion_root, seed=1)
    assert first.layout(7) != reseeded.layout(7) and first.layout(7) != first.layout(8)


def test_fashion_scenes_train_and_test_items_come_from_their_own_split(solid_fashion_root):
    train, test = _scenes(solid_fashion_root), _scenes(solid_fashion_root, "test", num_samples=7, test_samples=50)
    train_values = {round(float(v) * 255) for i in range(50) for v in np.unique(train.render(i)[0]) if v > 0}
    test_values = {round(float(v) * 255) for i in range(50) for v in np.unique(test.render(i)[0]) if v > 0}
    assert train_values <= set(range(100, 140)) and test_values <= set(range(30, 50))
    assert len(test) == 50 and max(item.source for i in range(50) for item in test.layout(i)) < 20


def test_fashion_scenes_keep_faint_pixels_out_of_the_item(tmp_path):
    """Pixels at or below `threshold` are neither painted nor labelled: what was under them stays."""
    half = np.zeros((10, 28, 28))
    half[:, :, 14:] = 200  # every item's right half only
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", half)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(10))
    scenes = _scenes(tmp_path, items=[1, 1], item_size=[0.5, 0.5])
    canvas, mask = scenes.render(0)
    (item,) = scenes.layout(0)
    rows, cols = slice(item.top, item.top + 32), slice(item.left, item.left + 32)
    assert (mask[rows, cols][:, :15] == 0).all() and (mask[rows, cols][:, 17:] == 1 + item.label).all()
    assert (canvas[mask == 0] == 0).all()


@pytest.mark.parametrize("options, message", [
    ({"items": [3, 2]}, "items must be 1 <= fewest <= most"),
    ({"item_size": [0.5, 1.5]}, "item_size must be 0 < smallest <= largest <= 1"),
    ({"threshold": 1.0}, "threshold must be in"),
    ({"colour": True}, "has no option"),
])
def test_fashion_scenes_bad_options_are_one_line_errors(solid_fashion_root, options, message):
    with pytest.raises(UsageError, match=message):
        _scenes(solid_fashion_root, **options)


@pytest.mark.skipif(not data.FASHION_MNIST_ROOT.exists(), reason="dataset-fashion-mnist is not installed")
def test_debian_fashion_scenes_hold_real_items_of_every_class():
    scenes = data.build_dataset("fashion_scenes", "test")
    assert (len(scenes), scenes.input_size) == (2_000, 96)
    labels = set()
    for index in range(40):
        labels |= set(np.unique(scenes.render(index)[1]).tolist())
    assert labels == set(range(11))
