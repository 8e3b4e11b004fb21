"""Data sets by name, for classification (`cls`) and segmentation (`seg`).

`build_dataset(name, split, ...)` returns a `torch.utils.data.Dataset` whose items are
`(image, target)`: `image` a float tensor `(3, H, W)`, normalised; `target` an int class index
(`cls`) or a long mask `(H, W)` with `IGNORE_INDEX` for pixels that do not count (`seg`). Every
returned data set carries `task`, `num_classes` and `input_size` attributes.

| name       | tasks    | classes       | source                                             |
| ---------- | -------- | ------------- | -------------------------------------------------- |
| `digits`   | cls      | 10            | scikit-learn's 1,797 8x8 digits, shipped with it    |
| `fashion_mnist` | cls | 10            | Zalando's 70,000 28x28 images, Debian's `dataset-fashion-mnist` IDX files |
| `fashion_scenes` | seg | 11            | seeded canvases of 2-4 Fashion-MNIST items with occlusion (same IDX files) |
| `shapes`   | cls, seg | 4 / 5         | seeded synthetic shapes, generated on the fly       |
| `cifar10`  | cls      | 10            | torchvision CIFAR-10 from a local root              |
| `cifar100` | cls      | 100           | torchvision CIFAR-100 from a local root             |
| `imagenet` | cls      | 1000          | ImageFolder `ROOT/train`, `ROOT/val`                |
| `segfolder`| seg      | from the root | images + PNG label masks (LIP, COCO-stuff, ADE20K)  |

Nothing is ever downloaded: a data set that needs a root and does not find it raises
`bench.core.errors.UsageError` naming the layout it expects. Splits are `train` and `test`
(`val` is accepted as another name for `test`).
"""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from bench.core.errors import UsageError

# scikit-learn (0.9 s to import) and torchvision (1.2 s) are imported inside the builders that use
# them: every training run and every grid validation imports this module, and most need neither.

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
"""Label of mask pixels that count neither in the loss nor in the metrics."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a data set before building it.

    Args:
        name: registry name.
        tasks: the tasks it serves, the first being the default (`cls`, `seg`).
        num_classes: classes per task (None where the root decides, as for `segfolder`).
        default_input_size: square side used when the caller gives none, per task.
        needs_root: whether it reads files from `root`.
        layout: the expected layout of `root`, quoted in the error when it is missing.
        builder: `builder(split, root, input_size, task, **options) -> Dataset`.
        options: the keyword options (`dataset_args`) the builder takes; None: read them from its
            signature (a builder that passes `**options` on must list them here).
    """

    name: str
    tasks: tuple[str, ...]
    num_classes: dict[str, int | None]
    default_input_size: dict[str, int]
    needs_root: bool
    layout: str
    builder: Callable[..., Dataset]
    options: tuple[str, ...] | None = None


_DATASETS: dict[str, DatasetSpec] = {}
BUILDER_ARGS = ("split", "root", "input_size", "task")  # what every builder takes; not options


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a data set to the registry; a duplicate name raises."""
    if spec.name in _DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Names of all registered data sets, sorted."""
    return sorted(_DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of `name`; an unknown name is a UsageError listing the known ones."""
    if name not in _DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _DATASETS[name]


def _keyword_options(func: Callable[..., Any], skip: Sequence[str]) -> tuple[str, ...] | None:
    """Keyword parameters of `func` other than `skip`; None when it takes **kwargs (anything goes)."""
    params = inspect.signature(func).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip)


def dataset_options(name: str) -> tuple[str, ...] | None:
    """The `dataset_args` keys data set `name` accepts (None: not known, any is passed on)."""
    spec = dataset_spec(name)
    return spec.options if spec.options is not None else _keyword_options(spec.builder, BUILDER_ARGS)


def check_dataset_options(name: str, options: dict[str, Any]) -> None:
    """Refuse (UsageError, one line) a `dataset_args` key that data set `name` does not take.

    Checked before anything is built, so a typo is reported as such rather than as a TypeError
    traceback from deep inside the builder, minutes into a run.
    """
    known = dataset_options(name)
    unknown = sorted(set(options) - set(known)) if known is not None else []
    if unknown:
        raise UsageError(f"dataset {name!r} has no option(s) {', '.join(map(str, unknown))} in dataset_args; "
                         f"it takes: {', '.join(known) or 'none'}")


def resolve_task(name: str, task: str | None = None) -> str:
    """The task `name` is used for: `task` if it serves it, else its default; mismatch raises."""
    spec = dataset_spec(name)
    if task is None:
        return spec.tasks[0]
    if task not in spec.tasks:
        raise UsageError(f"dataset {name!r} serves task(s) {', '.join(spec.tasks)}, "
                         f"not {task!r} (a {_TASK_WORDS.get(task, task)} model does not fit it)")
    return task


_TASK_WORDS = {"cls": "classification", "seg": "segmentation"}


def build_dataset(name: str, split: str, *, root: str | Path | None = None,
                  input_size: int | None = None, task: str | None = None,
                  **options: Any) -> Dataset:
    """Build data set `name` for `split` (`train` or `test`).

    Args:
        name: a registered name (`list_datasets()`).
        split: `train` or `test` (`val` means `test`).
        root: local folder for the data sets that read files; never downloaded.
        input_size: square side of the images (default: the data set's own).
        task: `cls` or `seg` for data sets that serve both (`shapes`); default the first.
        **options: data-set specific (`shapes`: `num_samples`, `max_shapes`, `seed`;
            `segfolder`: `num_classes`; `digits`: `augment`).
    """
    spec = dataset_spec(name)
    task = resolve_task(name, task)
    check_dataset_options(name, options)
    split = _normalise_split(split)
    if spec.needs_root:
        root = _check_root(spec, root)
    size = int(input_size) if input_size else spec.default_input_size[task]
    dataset = spec.builder(split=split, root=root, input_size=size, task=task, **options)
    dataset.task, dataset.input_size = task, size
    if getattr(dataset, "num_classes", None) is None:
        dataset.num_classes = spec.num_classes[task]
    return dataset


def _normalise_split(split: str) -> str:
    if split in ("test", "val"):
        return "test"
    if split == "train":
        return "train"
    raise UsageError(f"unknown split {split!r}; use train or test")


def _check_root(spec: DatasetSpec, root: str | Path | None) -> Path:
    """The root as a Path, or a UsageError naming the layout `spec` expects."""
    if root is None:
        raise UsageError(f"dataset {spec.name!r} needs --data-root (never downloaded); "
                         f"expected layout: {spec.layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UsageError(f"data root {str(path)!r} for dataset {spec.name!r} does not exist; "
                         f"expected layout: {spec.layout}")
    return path


# --------------------------------------------------------------------------------------------
# digits: scikit-learn's handwritten digits
# --------------------------------------------------------------------------------------------

class TensorImageDataset(Dataset):
    """Images and targets held in memory as tensors; optional random-shift augmentation.

    Args:
        images: `(N, C, H, W)` float tensor, already normalised.
        targets: `(N,)` long tensor of class indices.
        num_classes: number of classes.
        channels: expand a 1-channel image to this many channels on access.
        shift: maximal random translation in pixels (0: none), applied on access.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, num_classes: int,
                 channels: int = 3, shift: int = 0):
        self.images, self.targets = images, targets
        self.num_classes, self.channels, self.shift = num_classes, channels, shift

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.shift:
            dy, dx = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
        return image.expand(self.channels, -1, -1), int(self.targets[index])


def _build_digits(split: str, root: Any, input_size: int, task: str,
                  augment: bool = False) -> Dataset:
    """Digits resized to `input_size`, stratified 80/20 split with a fixed seed, normalised
    with the training split's mean and standard deviation."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=DIGITS_TEST_FRACTION, stratify=labels,
                                           random_state=DIGITS_SPLIT_SEED)
    pixels = torch.from_numpy(images.astype(np.float32) / 16.0).view(-1, 1, 8, 8)
    if input_size != 8:
        pixels = F.interpolate(pixels, size=(input_size, input_size), mode="bilinear",
                               align_corners=False)
    mean, std = pixels[train_idx].mean(), pixels[train_idx].std()
    chosen = train_idx if split == "train" else test_idx
    normalised = ((pixels[chosen] - mean) / std).contiguous()
    shift = max(1, input_size // 16) if (augment and split == "train") else 0
    return TensorImageDataset(normalised, torch.from_numpy(labels[chosen]).long(), 10, shift=shift)


# --------------------------------------------------------------------------------------------
# fashion_mnist: the original IDX files, as Debian's dataset-fashion-mnist installs them
# --------------------------------------------------------------------------------------------

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where `apt-get install dataset-fashion-mnist` puts the four IDX files (`dpkg -L` lists them)."""
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_SUBSET_SEED = 0
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
"""Pixel mean and std of the 60,000 training images at 28x28, in [0, 1]."""


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a numpy array: magic (0, 0, dtype 0x08 = uint8, ndim), then sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if data[:3] != b"\x00\x00\x08":
        raise UsageError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_path(root: Path, name: str) -> Path:
    """`root/name.gz` or `root/name`; a UsageError naming the Debian package when neither exists."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.exists():
            return candidate
    raise UsageError(f"Fashion-MNIST not found: no {name}(.gz) in {root}; install it with "
                     f"`apt-get install dataset-fashion-mnist` (or pass data_root=DIR holding the IDX files)")


def _stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` indices with (nearly) equal counts per class, drawn with a fixed seed, sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    quota = [size // len(classes) + (i < size % len(classes)) for i in range(len(classes))]
    return np.sort(np.concatenate([idx[:q] for idx, q in zip(per_class, quota)]))


def _build_fashion_mnist(split: str, root: Any, input_size: int, task: str, train_subset: int | None = None,
                         augment: bool = False) -> Dataset:
    """Fashion-MNIST from its IDX files, resized to `input_size`, normalised with the full training
    split's mean and std; `train_subset` keeps that many training images, class-balanced, fixed seed."""
    root = Path(root) if root else FASHION_MNIST_ROOT
    names = FASHION_MNIST_FILES["train" if split == "train" else "test"]
    images, labels = (read_idx(_idx_path(root, n)) for n in names)
    if split == "train" and train_subset:
        if not 10 <= int(train_subset) <= len(labels):
            raise UsageError(f"train_subset must be in 10..{len(labels)} (got {train_subset})")
        keep = _stratified_subset(labels, int(train_subset), FASHION_MNIST_SUBSET_SEED)
        images, labels = images[keep], labels[keep]
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    if input_size != 28:
        pixels = F.interpolate(pixels, size=(input_size, input_size), mode="bilinear", align_corners=False)
    mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    shift = max(1, input_size // 14) if (augment and split == "train") else 0
    return TensorImageDataset(((pixels - mean) / std).contiguous(), torch.from_numpy(labels.astype(np.int64)),
                              10, shift=shift)


# --------------------------------------------------------------------------------------------
# fashion_scenes: Fashion-MNIST items placed on a canvas, with occlusion, for segmentation
# --------------------------------------------------------------------------------------------

FASHION_SCENES_CLASSES = 11
FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                       "Ankle boot")
"""Fashion-MNIST's class names, in label order (the data set's own README)."""
"""0 = background, 1 + c = an item of Fashion-MNIST class c (0..9)."""


@dataclasses.dataclass(frozen=True)
class PlacedItem:
    """One item of a scene: which source image, its class, and its box on the canvas (top, left, side)."""

    source: int
    label: int
    top: int
    left: int
    side: int


class FashionScenesDataset(Dataset):
    """Seeded scenes of real Fashion-MNIST items; scene `i` of a (split, seed) is always the same.

    Each scene is a black square canvas of side `input_size` with 2..4 (`items`) items drawn from
    the split's own images (train scenes from the 60,000 training images, test scenes from the
    10,000 test images, so no item is seen in both), each resized (bilinear) to a random side
    (`item_size`, a fraction of the canvas side) and placed at a random position, in order: an
    item's pixels above `threshold` (of 1) are painted and labelled 1 + its class, covering the
    items placed before it; every other pixel keeps what was under it (background: label 0, value 0).
    Images are normalised as `fashion_mnist`'s and repeated to 3 channels.

    Args:
        split: `train` or `test`.
        input_size: canvas side in pixels.
        images: the split's source images, (N, 28, 28) uint8.
        labels: their classes, (N,).
        num_samples: scenes in the data set (the builder passes `num_samples` for train, default
            10,000, and `test_samples` for test, default 2,000).
        items: (fewest, most) items per scene.
        item_size: (smallest, largest) item side as a fraction of the canvas side.
        threshold: intensity (0..1) above which an item pixel is the item's.
        seed: base seed of the scenes.
    """

    def __init__(self, split: str, input_size: int, images: np.ndarray, labels: np.ndarray,
                 num_samples: int | None = None, items: Sequence[int] = (2, 4),
                 item_size: Sequence[float] = (0.3, 0.5), threshold: float = 0.1, seed: int = 0):
        self.split, self.size, self.seed = split, int(input_size), int(seed)
        self.images, self.labels = images, labels
        self.num_samples = int(num_samples or (10_000 if split == "train" else 2_000))
        self.items = _int_range("items", items, 1)
        self.item_size = _fraction_range("item_size", item_size)
        if not 0 <= float(threshold) < 1:
            raise UsageError(f"fashion_scenes: threshold must be in [0, 1) (got {threshold})")
        if self.num_samples < 1:
            raise UsageError(f"fashion_scenes: num_samples and test_samples must be at least 1 (got {num_samples})")
        self.threshold = float(threshold)
        self.num_classes = FASHION_SCENES_CLASSES
        self.class_names = ("background", *FASHION_MNIST_NAMES)  # the label of a pixel is 1 + its item's class

    def __len__(self) -> int:
        return self.num_samples

    def layout(self, index: int) -> list[PlacedItem]:
        """The items of scene `index`, in painting order (a later one covers an earlier one)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, int(index)])
        count = int(rng.integers(self.items[0], self.items[1] + 1))
        placed = []
        for _ in range(count):
            source = int(rng.integers(len(self.labels)))
            side = max(1, round(self.size * rng.uniform(*self.item_size)))
            top, left = (int(v) for v in rng.integers(0, self.size - side + 1, size=2))
            placed.append(PlacedItem(source, int(self.labels[source]), top, left, side))
        return placed

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene `index` as (intensity (H, W) float32 in [0, 1], label (H, W) int64)."""
        canvas = np.zeros((self.size, self.size), dtype=np.float32)
        mask = np.zeros((self.size, self.size), dtype=np.int64)
        for item in self.layout(index):
            pixels = self._resized(item.source, item.side)
            inside = pixels > self.threshold
            box = (slice(item.top, item.top + item.side), slice(item.left, item.left + item.side))
            canvas[box][inside] = pixels[inside]
            mask[box][inside] = 1 + item.label
        return canvas, mask

    def _resized(self, source: int, side: int) -> np.ndarray:
        item = torch.from_numpy(self.images[source].astype(np.float32) / 255.0)[None, None]
        if side != item.shape[-1]:
            item = F.interpolate(item, size=(side, side), mode="bilinear", align_corners=False)
        return item[0, 0].clamp(0, 1).numpy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        canvas, mask = self.render(index)
        image = (torch.from_numpy(canvas) - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        return image.expand(3, -1, -1).contiguous(), torch.from_numpy(mask)


def _int_range(name: str, value: Sequence[int], low: int) -> tuple[int, int]:
    """Two integers low <= a <= b, or a one-line UsageError."""
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"fashion_scenes: {name} must be two integers [fewest, most] (got {value!r})") from None
    if not low <= a <= b:
        raise UsageError(f"fashion_scenes: {name} must be {low} <= fewest <= most (got {[a, b]})")
    return a, b


def _fraction_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    """Two fractions 0 < a <= b <= 1, or a one-line UsageError."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"fashion_scenes: {name} must be two numbers [smallest, largest] (got {value!r})") from None
    if not 0 < a <= b <= 1:
        raise UsageError(f"fashion_scenes: {name} must be 0 < smallest <= largest <= 1 of the canvas (got {[a, b]})")
    return a, b


def _build_fashion_scenes(split: str, root: Any, input_size: int, task: str, num_samples: int = 10_000,
                          test_samples: int = 2_000, items: Sequence[int] = (2, 4),
                          item_size: Sequence[float] = (0.3, 0.5), threshold: float = 0.1, seed: int = 0) -> Dataset:
    """Scenes of the split's own Fashion-MNIST images (`FashionScenesDataset`), read from the IDX files:
    `num_samples` training scenes, `test_samples` test scenes."""
    root = Path(root) if root else FASHION_MNIST_ROOT
    images, labels = (read_idx(_idx_path(root, n)) for n in FASHION_MNIST_FILES[split])
    count = num_samples if split == "train" else test_samples
    return FashionScenesDataset(split, input_size, images, labels, num_samples=count, items=items,
                                item_size=item_size, threshold=threshold, seed=seed)


# --------------------------------------------------------------------------------------------
# shapes: seeded synthetic shapes over textured backgrounds
# --------------------------------------------------------------------------------------------

SHAPE_NAMES = ("circle", "square", "triangle", "cross")


class ShapesDataset(Dataset):
    """Seeded synthetic shapes, generated on the fly (item `i` is always the same image).

    Classification: one shape per image, the target is its kind (`SHAPE_NAMES`).
    Segmentation: 1..`max_shapes` shapes per image, the mask holds 0 for background and
    1 + kind for each shape pixel (later shapes cover earlier ones).
    Backgrounds are random sinusoidal gratings plus noise, so colour alone does not give a shape
    away; shapes are randomly sized, placed, rotated and coloured, with their own noise.

    Args:
        split: `train` or `test` (disjoint random streams).
        input_size: image side in pixels.
        task: `cls` or `seg`.
        num_samples: data set length (default 2000 train / 500 test for cls,
            1000 / 200 for seg).
        max_shapes: most shapes per segmentation image.
        shape_size: (smallest, largest) shape radius as a fraction of the image side (default
            (0.12, 0.22) for segmentation, several shapes per image; (0.2, 0.35) for
            classification). At small resolutions larger shapes keep thin parts (the cross's
            bars are a third of the radius) wider than a pixel.
        seed: base seed of the stream.
    """

    def __init__(self, split: str, input_size: int, task: str, num_samples: int | None = None,
                 max_shapes: int = 3, shape_size: Sequence[float] | None = None, seed: int = 0):
        defaults = {("cls", "train"): 2000, ("cls", "test"): 500,
                    ("seg", "train"): 1000, ("seg", "test"): 200}
        self.split, self.size, self.task = split, int(input_size), task
        self.num_samples = int(num_samples or defaults[(task, split)])
        self.max_shapes, self.seed = int(max_shapes), int(seed)
        default_size = (0.12, 0.22) if task == "seg" else (0.2, 0.35)
        lo, hi = (float(v) for v in (shape_size if shape_size is not None else default_size))
        if not 0 < lo <= hi < 0.5:
            raise UsageError(f"shapes: shape_size must be two radii 0 < smallest <= largest < 0.5 of the "
                             f"image side (got {list(shape_size)})")
        self.shape_size = (lo, hi)
        self.num_classes = len(SHAPE_NAMES) + (1 if task == "seg" else 0)
        self.class_names = ("background", *SHAPE_NAMES) if task == "seg" else SHAPE_NAMES
        axis = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size
        self._yy, self._xx = np.meshgrid(axis, axis, indexing="ij")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, int(index)])
        image = self._background(rng)
        mask = np.zeros((self.size, self.size), dtype=np.int64)
        count = 1 if self.task == "cls" else int(rng.integers(1, self.max_shapes + 1))
        kinds = rng.integers(0, len(SHAPE_NAMES), size=count)
        for kind in kinds:
            inside = self._shape_mask(int(kind), rng)
            colour = self._contrasting_colour(image, inside, rng)
            noise = rng.normal(0.0, 0.05, size=(3, self.size, self.size)).astype(np.float32)
            image = np.where(inside[None], colour[:, None, None] + noise, image)
            mask[inside] = int(kind) + 1
        tensor = torch.from_numpy(((np.clip(image, 0, 1) - 0.5) / 0.25).astype(np.float32))
        if self.task == "cls":
            return tensor, int(kinds[0])
        return tensor, torch.from_numpy(mask)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A random grating texture plus noise, `(3, H, W)` in [0, 1]."""
        base = rng.uniform(0.2, 0.8, size=(3, 1, 1))
        freq = rng.uniform(2.0, 8.0, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        angle = rng.uniform(0, np.pi)
        coord = np.cos(angle) * self._xx + np.sin(angle) * self._yy
        grating = 0.15 * np.sin(2 * np.pi * freq[0] * coord + phase)
        grating += 0.08 * np.sin(2 * np.pi * freq[1] * self._yy)
        noise = rng.normal(0.0, 0.05, size=(3, self.size, self.size))
        return (base + grating[None] + noise).astype(np.float32)

    def _shape_mask(self, kind: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean `(H, W)` mask of one randomly placed, sized and rotated shape."""
        radius = rng.uniform(*self.shape_size)
        cy, cx = rng.uniform(radius, 1 - radius, size=2)
        theta = rng.uniform(0, 2 * np.pi)
        dy, dx = self._yy - cy, self._xx - cx
        u = np.cos(theta) * dx + np.sin(theta) * dy
        v = -np.sin(theta) * dx + np.cos(theta) * dy
        if kind == 0:
            return u * u + v * v <= radius * radius
        if kind == 1:
            side = radius / np.sqrt(2) * 1.15
            return (np.abs(u) <= side) & (np.abs(v) <= side)
        if kind == 2:  # equilateral triangle: three half-planes at 120 degrees, inradius r/2
            normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3,
                                                        np.pi / 2 + 4 * np.pi / 3)]
            return np.logical_and.reduce([nu * u + nv * v <= radius / 2 for nu, nv in normals])
        bar = radius / 3
        return ((np.abs(u) <= radius) & (np.abs(v) <= bar)) | ((np.abs(u) <= bar) & (np.abs(v) <= radius))

    @staticmethod
    def _contrasting_colour(image: np.ndarray, inside: np.ndarray,
                            rng: np.random.Generator) -> np.ndarray:
        """A colour at least 0.3 brighter or darker than the background under the shape."""
        under = image[:, inside].mean(axis=1) if inside.any() else image.mean(axis=(1, 2))
        sign = 1.0 if under.mean() < 0.5 else -1.0
        return (under + sign * rng.uniform(0.3, 0.5, size=3)).astype(np.float32)


def _build_shapes(split: str, root: Any, input_size: int, task: str, **options: Any) -> Dataset:
    return ShapesDataset(split, input_size, task, **options)


# --------------------------------------------------------------------------------------------
# CIFAR-10/100 and ImageNet: torchvision, from a local root only
# --------------------------------------------------------------------------------------------

def _cifar_transform(split: str, input_size: int):
    from torchvision import transforms as T

    steps = [T.Resize(input_size)] if input_size != 32 else []
    if split == "train":
        steps += [T.RandomCrop(input_size, padding=input_size // 8), T.RandomHorizontalFlip()]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])


def _build_cifar(split: str, root: Path, input_size: int, task: str, *, variant: str) -> Dataset:
    """torchvision's CIFAR class with `download=False`; the root was checked beforehand."""
    from torchvision import datasets

    cls, folder = ((datasets.CIFAR10, "cifar-10-batches-py") if variant == "cifar10"
                   else (datasets.CIFAR100, "cifar-100-python"))
    if not (root / folder).is_dir():
        raise UsageError(f"{variant}: {str(root / folder)!r} not found; expected layout: "
                         f"{_DATASETS[variant].layout}")
    dataset = cls(str(root), train=split == "train", download=False,
                  transform=_cifar_transform(split, input_size))
    dataset.num_classes = 10 if variant == "cifar10" else 100
    return dataset


def _imagenet_transform(split: str, input_size: int):
    """The standard ImageNet recipe: random-resized crop and flip; resize to 1/0.875 and centre crop."""
    from torchvision import transforms as T

    if split == "train":
        steps = [T.RandomResizedCrop(input_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(input_size / 0.875))), T.CenterCrop(input_size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _build_imagenet(split: str, root: Path, input_size: int, task: str) -> Dataset:
    from torchvision import datasets

    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise UsageError(f"imagenet: {str(folder)!r} not found; expected layout: "
                         f"{_DATASETS['imagenet'].layout}")
    dataset = datasets.ImageFolder(str(folder), transform=_imagenet_transform(split, input_size))
    dataset.num_classes = len(dataset.classes)
    return dataset


# --------------------------------------------------------------------------------------------
# segfolder: images and PNG label masks
# --------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class SegFolderDataset(Dataset):
    """Images `ROOT/images/SPLIT/NAME.*` with masks `ROOT/masks/SPLIT/NAME.png`.

    Mask pixel values are class indices `0..num_classes-1`; `IGNORE_INDEX` (255) marks pixels
    that count neither in the loss nor in the metrics; any other value is mapped to the ignore
    index too. Images are resized to `input_size` (bilinear), masks with nearest neighbour;
    training images are flipped at random.

    Args:
        root: the data root.
        split: `train` or `test` (read from the `val` folders).
        input_size: square side.
        num_classes: number of classes (default: the lines of `ROOT/classes.txt`).
    """

    def __init__(self, root: Path, split: str, input_size: int, num_classes: int | None = None):
        folder = "train" if split == "train" else "val"
        self.image_dir, self.mask_dir = root / "images" / folder, root / "masks" / folder
        layout = _DATASETS["segfolder"].layout
        for path in (self.image_dir, self.mask_dir):
            if not path.is_dir():
                raise UsageError(f"segfolder: {str(path)!r} not found; expected layout: {layout}")
        self.items = self._pair_files()
        if not self.items:
            raise UsageError(f"segfolder: no image with a matching mask in {str(self.image_dir)!r}")
        self.num_classes = int(num_classes) if num_classes else self._read_classes(root)
        self.split, self.size = split, int(input_size)

    def _pair_files(self) -> list[tuple[Path, Path]]:
        pairs = []
        for image in sorted(self.image_dir.iterdir()):
            mask = self.mask_dir / f"{image.stem}.png"
            if image.suffix.lower() in IMAGE_SUFFIXES and mask.is_file():
                pairs.append((image, mask))
        return pairs

    @staticmethod
    def _read_classes(root: Path) -> int:
        names = root / "classes.txt"
        if not names.is_file():
            raise UsageError(f"segfolder: give num_classes (--set dataset_args.num_classes=N) or "
                             f"write one class name per line in {str(names)!r}")
        return len([line for line in names.read_text().splitlines() if line.strip()])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image
        from torchvision.transforms import functional as TF

        image_path, mask_path = self.items[index]
        image = Image.open(image_path).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        mask = Image.open(mask_path).resize((self.size, self.size), Image.NEAREST)
        tensor = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
        labels = torch.from_numpy(np.array(mask, dtype=np.int64))
        if labels.ndim != 2:
            raise ValueError(f"{mask_path}: a label mask must be single-channel (got shape {tuple(labels.shape)})")
        labels[labels >= self.num_classes] = IGNORE_INDEX
        if self.split == "train" and torch.rand(()) < 0.5:
            tensor, labels = tensor.flip(-1), labels.flip(-1)
        return tensor, labels


def _build_segfolder(split: str, root: Path, input_size: int, task: str,
                     num_classes: int | None = None) -> Dataset:
    return SegFolderDataset(root, split, input_size, num_classes)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

def _register_builtin() -> None:
    cifar_layout = ("ROOT/{folder}/ as torchvision unpacks it "
                    "(python pickles: {files}), downloaded beforehand")
    register_dataset(DatasetSpec("digits", ("cls",), {"cls": 10}, {"cls": 32}, False,
                                 "none (shipped with scikit-learn)", _build_digits))
    register_dataset(DatasetSpec("fashion_mnist", ("cls",), {"cls": 10}, {"cls": 28}, False,
                                 f"the IDX files in {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist), "
                                 "or data_root=DIR holding them", _build_fashion_mnist))
    register_dataset(DatasetSpec("fashion_scenes", ("seg",), {"seg": FASHION_SCENES_CLASSES}, {"seg": 96}, False,
                                 f"the IDX files in {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist), "
                                 "or data_root=DIR holding them", _build_fashion_scenes))
    register_dataset(DatasetSpec("shapes", ("cls", "seg"), {"cls": 4, "seg": 5},
                                 {"cls": 32, "seg": 64}, False, "none (generated)", _build_shapes,
                                 options=_keyword_options(ShapesDataset.__init__, ("self", *BUILDER_ARGS))))
    for variant, folder, files in (("cifar10", "cifar-10-batches-py",
                                    "data_batch_1..5, test_batch, batches.meta"),
                                   ("cifar100", "cifar-100-python", "train, test, meta")):
        register_dataset(DatasetSpec(
            variant, ("cls",), {"cls": 10 if variant == "cifar10" else 100}, {"cls": 32}, True,
            cifar_layout.format(folder=folder, files=files),
            lambda variant=variant, **kw: _build_cifar(variant=variant, **kw), options=()))
    register_dataset(DatasetSpec("imagenet", ("cls",), {"cls": 1000}, {"cls": 224}, True,
                                 "ROOT/train/CLASS/*.JPEG and ROOT/val/CLASS/*.JPEG (ImageFolder)",
                                 _build_imagenet))
    register_dataset(DatasetSpec("segfolder", ("seg",), {"seg": None}, {"seg": 512}, True,
                                 "ROOT/images/{train,val}/NAME.(jpg|png) with ROOT/masks/{train,val}/"
                                 "NAME.png (pixel = class index, 255 = ignore) and optionally "
                                 "ROOT/classes.txt (one class name per line)",
                                 _build_segfolder))


_register_builtin()
