"""The VAE as a Pyro model p(z|y) p(x|z,y) and guide q(z|x,y) that share the arguments ``(x, y=None)``.

Contract (kept by every model the evaluator and trainer accept): one ``pyro.plate("data", B)``
around the per-example sites; the latent site ``"z"`` and the observed site ``"x"``, each
``.to_event(...)`` so that its log-prob has shape [B]. The unconditional VAE ignores ``y``
(and refuses one); the CVAE needs it.
"""
import itertools

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .errors import PyroVAEError
from .likelihoods import LIKELIHOODS
from .networks import NETWORKS
from .priors import PRIORS
from .spec import ModelSpec


class VAE(nn.Module):
    """Encoder, decoder, prior and likelihood. The model registers the decoder, prior and likelihood
    with Pyro and the guide the encoder, under a name of the VAE's own (``vae0.decoder``, …), so that
    several VAEs can live in one process without sharing entries in Pyro's global param store."""

    _names = itertools.count()

    def __init__(self, spec, network, prior, likelihood):
        super().__init__()
        self.pyro_name = f"vae{next(self._names)}"
        if prior.conditional and not spec.conditional:
            raise PyroVAEError(f"the {prior.registered_name} prior needs a conditional model (model.conditional = true)")
        self.spec = spec
        self.encoder = network.encoder
        self.decoder = network.decoder
        self.prior = prior
        self.likelihood = likelihood

    @classmethod
    def from_config(cls, config, image_shape, num_classes):
        """The VAE a ``Config`` describes, for images of ``image_shape`` with ``num_classes`` labels."""
        spec = ModelSpec(tuple(image_shape), config.model.z_dim, num_classes, config.model.conditional)
        likelihood = LIKELIHOODS.build(config.likelihood.name, config.likelihood.options, spec.image_shape)
        network = NETWORKS.build(config.network.name, config.network.options, spec, likelihood.num_outputs)
        prior = PRIORS.build(config.prior.name, config.prior.options, spec, network.encoder)
        return cls(spec, network, prior, likelihood)

    def condition(self, x, y):
        """The one-hot condition c [B, num_classes] of labels y [B] (None for an unconditional VAE),
        after checking x [B, *image_shape] and y."""
        if tuple(x.shape[1:]) != self.spec.image_shape:
            raise PyroVAEError(
                f"images of shape {tuple(x.shape[1:])} given to a model built for {self.spec.image_shape}"
            )
        if not self.spec.conditional:
            if y is not None:
                raise PyroVAEError("a label y was given to an unconditional model; train with --conditional to use labels")
            return None
        if y is None:
            raise PyroVAEError("this conditional model needs the label y of every image")
        if y.shape != x.shape[:1]:
            raise PyroVAEError(f"{len(y)} labels for {len(x)} images")
        if y.min() < 0 or y.max() >= self.spec.num_classes:
            raise PyroVAEError(f"labels must lie in 0..{self.spec.num_classes - 1}, got {y.min()}..{y.max()}")
        return F.one_hot(y, self.spec.num_classes).to(x.dtype)

    def model(self, x, y=None, beta=1.0):
        """p(z|y) p(x|z,y): z ~ prior, x ~ likelihood(decoder(z, y)); ``beta`` scales log p(z) (the KL weight β)."""
        for part in ("decoder", "prior", "likelihood"):
            pyro.module(f"{self.pyro_name}.{part}", getattr(self, part))
        c = self.condition(x, y)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior(c))
            pyro.sample("x", self.likelihood(self.decoder(z, c)), obs=x)

    def guide(self, x, y=None, beta=1.0):
        """q(z|x,y) = N(loc, diag(scale²)) from the encoder, sampled by reparameterization."""
        pyro.module(f"{self.pyro_name}.encoder", self.encoder)
        c = self.condition(x, y)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x, c)
            with poutine.scale(scale=beta):
                pyro.sample("z", pyro.distributions.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def encode(self, x, y=None):
        """(loc, scale) [B, z_dim] of q(z|x,y)."""
        return self.encoder(x, self.condition(x, y))

    @torch.no_grad()
    def decode(self, z, y=None):
        """E[x|z,y] [..., B, *image_shape] for latents z [..., B, z_dim]."""
        c = None if y is None else F.one_hot(y, self.spec.num_classes).to(z.dtype)
        return self.likelihood.mean(self.decoder(z, c))

    @torch.no_grad()
    def sample_prior(self, n, y=None):
        """z [n, z_dim] drawn from p(z) (or p(z|y) with labels y [n])."""
        c = None if y is None else F.one_hot(y, self.spec.num_classes).float().to(self.device)
        return self.prior(c).expand([n]).sample()

    @torch.no_grad()
    def sample(self, n, y=None):
        """New data: E[x|z,y] for z ~ p(z|y), shape [n, *image_shape]."""
        return self.decode(self.sample_prior(n, y), y)

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """E[x|z,y] at z = the mean of q(z|x,y), shape of x."""
        return self.decode(self.encode(x, y)[0], y)

    @property
    def device(self):
        return next(self.parameters()).device
