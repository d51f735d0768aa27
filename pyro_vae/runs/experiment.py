"""What a config describes, built in one place: the VAE on its device and the data it is trained and
scored on, observed in the likelihood's space. The trainer, ``evaluate``, ``sample`` (through
``build_vae``) and the benchmark all build through here."""

from dataclasses import dataclass

import torch

from ..devices import forked_rng, resolve_device
from ..errors import PyroVAEError
from ..model.conditions import CONDITIONS
from ..model.likelihoods import LIKELIHOODS
from ..model.vae import VAE, build_vae
from .config import Component
from .datasets import TEST_SEED, ImageData, load_data, observed_split


@dataclass
class Experiment:
    """The VAE and its data. ``train_x`` [N, *image_shape] holds grey images where the likelihood
    binarizes them at each use (dynamic binarization; ``VAE.likelihood.observe``), else the observed
    images, as bytes where they are 8-bit values (``compact``; a batch's rows go through ``expand``);
    ``test_x`` is observed once with a fixed seed so that figures compare across runs."""

    vae: VAE
    data: ImageData
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def label_counts(self):
        """Training examples of known label per class [num_classes] (the prior p(y) of the generative classifier)."""
        labels = self.data.train.labels
        return torch.bincount(labels[labels >= 0], minlength=self.data.num_classes)


def build(config, device, dataset=None):
    """The ``Experiment`` of ``config`` on ``device`` (the data of ``dataset``, a ``Component``, where given:
    another dataset of the same image shape to score a trained run on). ``device``: a torch.device or
    ``auto``, ``cpu``, ``cuda``."""
    data = load_data(dataset or config.data)
    check_likelihood(data, config.likelihood.name, (dataset or config.data).name)
    unknown = int((data.train.labels < 0).sum())
    if unknown and CONDITIONS.get(config.condition.name).labels:
        raise PyroVAEError(
            f"{unknown} of the {len(data.train.labels)} training examples have no label, and the "
            f"{config.condition.name} condition needs every label; use the semi_supervised condition "
            "(--config mnist-m2), which sums the unknown labels out"
        )
    vae = build_vae(config, data.image_shape, data.num_classes, resolve_device(str(device)))
    likelihood = vae.likelihood
    test_x, test_y = observed_split(data, likelihood, "test", vae.device)
    if likelihood.dynamic:
        train_x, train_y = data.train.images.to(vae.device), data.train.labels.to(vae.device)
    else:
        train_x, train_y = observed_split(data, likelihood, "train", vae.device)
    return Experiment(vae, data, compact(train_x), train_y, test_x, test_y)


def check_likelihood(data, likelihood, dataset):
    """Refuse a likelihood of grey levels in [0, 1] for points in ℝ^D, and one of binarized grey levels
    for colour images."""
    if not data.points and data.image_shape[0] > 1 and LIKELIHOODS.get(likelihood).grey_only:
        raise PyroVAEError(
            f"{dataset} holds images of {data.image_shape[0]} channels, which the {likelihood} likelihood "
            "cannot score (it binarizes grey levels); use discretized_logistic for 8-bit colour, or "
            "gaussian"
        )
    if data.points and not LIKELIHOODS.get(likelihood).real:
        real = sorted(name for name in LIKELIHOODS.names() if LIKELIHOODS.get(name).real)
        raise PyroVAEError(
            f"{dataset} holds points in ℝ^{data.image_shape[0]}, which the {likelihood} likelihood "
            f"cannot score (it models grey levels in [0, 1]); use {' or '.join(real)}"
        )


def compact(images):
    """``images`` stored as bytes (k/255 → k, a quarter of the memory, so that random rows gathered for a
    batch stay in the caches) where every value is a multiple of 1/255 in [0, 1], as 8-bit digits are;
    else unchanged. ``expand`` undoes it exactly for the rows of a batch."""
    if images.dtype != torch.float32 or not len(images):
        return images
    scaled = images * 255
    as_bytes = scaled.round().clamp(0, 255).to(torch.uint8)
    return as_bytes if torch.equal(as_bytes.float().div_(255), images) else images


def expand(rows):
    """Float images [B, …] of rows gathered from ``compact``'s result."""
    return rows.float().div_(255) if rows.dtype == torch.uint8 else rows


def dataset_component(config, dataset=None, data_root=None):
    """The ``data`` component of ``config``, or of another ``dataset`` by name, read from ``data_root`` where given."""
    name = dataset or config.data.name
    options = dict(config.data.options) if name == config.data.name else {}
    if data_root is not None:
        options["root"] = data_root
    return Component(name, options)


def seeded_batches(vae, x, y, batch_size, rank=0, size=1):
    """The model's arguments (x,) or (x, y) for batches of ``batch_size`` examples of x [N, …] (labels y
    [N] where the VAE is conditional), batch j drawn under the seed TEST_SEED + j so that test figures
    use the same noise in every epoch, run and number of processes (rank ``rank`` of ``size`` takes
    batches rank, rank + size, …). The caller's random streams are restored afterwards."""
    with forked_rng(vae.device):
        for j, start in enumerate(range(0, len(x), batch_size)):
            if j % size == rank:
                torch.manual_seed(TEST_SEED + j)
                yield (x[start : start + batch_size],) + (
                    (y[start : start + batch_size],) if vae.spec.conditional else ()
                )
