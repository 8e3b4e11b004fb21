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
