"""A trained run's encoder as a feature extractor (Kingma et al. 2014's M1): the dataset ``codes``.

Its examples are the means of q(z|x) [N, z_dim] of the run's own training and test images (observed once
with the fixed test seed, as figures observe them), with the images' labels: points in ℝ^z_dim that any
model reads as data. A classifier of the labelled codes is M1 (``pyro-vae bench --discriminative``); M2
trained on them is M1+M2 (the config ``mnist-m1m2``).
"""

import torch

from ..errors import PyroVAEError
from ..registry import Size
from .config import Component
from .datasets import DATASETS, ImageData, Split, load_data, observed_split
from .folders import load_run


@DATASETS.register("codes")
class Codes:
    """The codes E_q[z|x] of the run folder ``run`` (a trained unconditional VAE) for its data's two splits,
    computed ``batch_size`` images at a time on the CPU."""

    def __init__(self, *, run: str = "", batch_size: Size = 1000):
        if not run:
            raise PyroVAEError("the codes dataset encodes the data of a trained run: --set data.run=RUN")
        self.run, self.batch_size = run, batch_size

    def load(self):
        config, vae = load_run(self.run, "cpu")
        if vae.spec.conditional or vae.conditioning.partial or vae.conditioning.latent_label:
            raise PyroVAEError(
                f"{self.run} is a {config.condition.name} model; its codes depend on a label or on part of the "
                "image: encode with an unconditional VAE (condition none)"
            )
        # the run's data with every label: the model trained on the codes keeps its own data.labels
        data = load_data(Component(config.data.name, {**config.data.options, "labels": 0}))
        splits = []
        for name in ("train", "test"):
            x, y = observed_split(data, vae.likelihood, name, torch.device("cpu"))
            codes = torch.cat([vae.encode(part)[0] for part in x.split(self.batch_size)])
            splits.append(Split(codes, y))
        return ImageData(*splits, data.num_classes)
