"""The VAE as a Pyro model p(z|c) p(t|z,c) and guide q(z|t,c) that share the arguments ``(x, y=None)``.

The condition (``conditions.py``, chosen by name) splits an example x (and its label y) into the target t
the model generates and what it is given, c: t = x and no c for the VAE; t = x and c = one-hot y for
the label CVAE; t = the missing pixels x_M and c = the given ones x_G for image completion. With
``model.z_dim = 0`` there is no latent: p(t|c) is the deterministic regressor (Pyro's "NN" baseline).

With stochastic layers (``model.layers``, L ≥ 2) the model is p(z) p(z_{L−1}|z) … p(z1|z2) p(x|z1,y)
and the guide q(z1|t,c) q(z2|z1) … q(z|z_{L−1}): the top latent is always ``"z"`` (its prior chosen by
name), the layers below it ``"z1"`` (next to x), ``"z2"``, … Each conditional between layers is a
diagonal Gaussian from an MLP (``GaussianMLP``).

Contract (kept by every model the evaluator and trainer accept): one ``pyro.plate("data", B)``
around the per-example sites; latent sites and the observed site ``"x"`` (the target t), each
``.to_event(...)`` so that its log-prob has shape [B]. A model without labels refuses a ``y``; the
label CVAE needs it.
"""

import contextlib
import dataclasses
import itertools

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import Normal
from pyro.infer import is_validation_enabled
from torch import nn

from ..devices import free_memory
from ..errors import PyroVAEError
from .conditions import CONDITIONS
from .likelihoods import LIKELIHOODS
from .networks import NETWORKS, GaussianMLP, activation_class
from .posteriors import POSTERIORS
from .priors import PRIORS
from .spec import ModelSpec


class VAE(nn.Module):
    """Encoder, decoder, prior and likelihood. The model registers the decoder, prior and likelihood
    with Pyro and the guide the encoder, under a name of the VAE's own (``vae0.decoder``, …), so that
    several VAEs can live in one process without sharing entries in Pyro's global param store."""

    _names = itertools.count()

    def __init__(self, spec, network, prior, likelihood, up=(), down=(), reparameterize=True, condition=None):
        super().__init__()
        self.reparameterize = reparameterize
        self.pyro_name = f"vae{next(self._names)}"
        if prior.conditional and not spec.cond_dim:
            raise PyroVAEError(
                f"the {prior.registered_name} prior needs a conditional model (a [condition], e.g. --conditional)"
            )
        self.spec = spec
        self.conditioning = condition or CONDITIONS.build("none", {}, spec.image_shape, spec.num_classes)
        self.encoder = network.encoder
        self.decoder = network.decoder
        self.prior = prior
        self.likelihood = likelihood
        self.up = nn.ModuleList(up)  # q(z_{l+1} | z_l), bottom to top
        self.down = nn.ModuleList(down)  # p(z_l | z_{l+1}), bottom to top
        self.precision = None  # torch.autocast's dtype for the encoder and decoder (``autocast``); None: float32

    @contextlib.contextmanager
    def autocast(self, dtype):
        """Within it, model and guide run the encoder and decoder under ``torch.autocast(dtype)`` (None: off,
        float32) and take their outputs back to float32, so that every log-density and the ELBO's sums
        stay float32 (a Bernoulli log-mass of 784 pixels summed in bfloat16 would be off by nats)."""
        before, self.precision = self.precision, dtype
        try:
            yield
        finally:
            self.precision = before

    def network(self, net, *args):
        """net(*args) at the precision of ``autocast``, its outputs (a tensor or a tuple of them) float32."""
        if self.precision is None:
            return net(*args)
        with torch.autocast(self.device.type, dtype=self.precision):
            out = net(*args)
        return tuple(t.float() for t in out) if isinstance(out, tuple) else out.float()

    @classmethod
    def from_config(cls, config, image_shape, num_classes):
        """The VAE a ``Config`` describes, for images of ``image_shape`` with ``num_classes`` labels."""
        m = config.model
        condition = CONDITIONS.build(config.condition.name, config.condition.options, tuple(image_shape), num_classes)
        if m.z_dim == 0 and (not condition.partial or m.layers or config.prior.name != "standard_normal"):
            raise PyroVAEError(
                "model.z_dim = 0 (no latent, no prior) is the deterministic baseline of image completion; "
                "use it with a condition on part of the image (quadrants, column), no model.layers and "
                "the standard_normal prior"
            )
        if condition.latent_label and cls is VAE:  # Kingma et al.'s M2, whose module imports this one
            from .semisupervised import SemiSupervisedVAE

            return SemiSupervisedVAE.from_config(config, image_shape, num_classes)
        sizes = [*m.layers, m.z_dim]  # latent sizes, bottom (next to x) to top
        spec = ModelSpec(tuple(image_shape), m.z_dim, num_classes, condition.labels, condition.dim)
        bottom = dataclasses.replace(spec, image_shape=condition.target_shape, z_dim=sizes[0])  # what the networks see
        likelihood = LIKELIHOODS.build(config.likelihood.name, config.likelihood.options, bottom.image_shape)
        network = NETWORKS.build(config.network.name, config.network.options, bottom, likelihood.num_outputs)
        if network.encoder is not None and config.posterior.name != "diagonal":  # the encoder's head is the family
            head = network.encoder.head
            network.encoder.head = POSTERIORS.build(
                config.posterior.name, config.posterior.options, head.linear.in_features, sizes[0]
            )
        prior = PRIORS.build(config.prior.name, config.prior.options, spec, network.encoder)
        act = activation_class(m.layer_activation)
        up = [GaussianMLP(a, m.layer_hidden, b, act) for a, b in zip(sizes, sizes[1:])]
        down = [GaussianMLP(b, m.layer_hidden, a, act) for a, b in zip(sizes, sizes[1:])]
        return cls(
            spec,
            network,
            prior,
            likelihood,
            up,
            down,
            m.reparameterize,
            condition,
            **cls.extra_modules(condition, bottom),
        )

    @classmethod
    def extra_modules(cls, condition, spec):
        """Keyword arguments of the modules a subclass adds, built for ``condition`` and ``spec`` (none here)."""
        return {}

    @property
    def latent_sites(self):
        """Names of the latent sites, bottom (next to x) to top: ["z"], or ["z1", …, "z"]; none where z_dim = 0."""
        return [f"z{layer + 1}" for layer in range(len(self.up))] + ["z"] if self.spec.z_dim else []

    def condition(self, x, y):
        """(t, c): the target t [B, *target_shape] the model generates and its condition c [B, cond_dim] (None
        without one) of images x [B, *image_shape] and labels y [B], after checking both."""
        if tuple(x.shape[1:]) != self.spec.image_shape:
            raise PyroVAEError(
                f"images of shape {tuple(x.shape[1:])} given to a model built for {self.spec.image_shape}"
            )
        x = self.as_weights(x)
        return self.conditioning.split(x, self.label_condition(y, len(x), x.dtype))

    def as_weights(self, x):
        """Images x in the dtype of the VAE's weights (float64 images, as NumPy gives, or booleans, scored by a
        float32 model), refusing integer pixels (0…255 or 0…1?) and images on another device than the weights."""
        weight = next(self.parameters())
        if not isinstance(x, torch.Tensor):
            raise PyroVAEError(f"images must be a tensor [B, *image_shape], got {type(x).__name__}")
        if x.device != weight.device:
            raise PyroVAEError(
                f"images on {x.device} given to a model on {weight.device}; move them with .to({str(weight.device)!r})"
            )
        if x.dtype == weight.dtype:
            return x
        if not (x.is_floating_point() or x.dtype == torch.bool):
            raise PyroVAEError(
                f"images of integer type {x.dtype} given to the model; pass grey levels in [0, 1] as floats"
            )
        return x.to(weight.dtype)

    def label_condition(self, y, n, dtype):
        """The one-hot condition [n, num_classes] of labels y [n] (None for an unconditional VAE),
        after checking that a conditional VAE has n integer labels in range and an unconditional one none."""
        if not self.spec.conditional:
            if y is not None:
                raise PyroVAEError(
                    "a label y was given to a model without labels; train with --conditional to use labels"
                )
            return None
        if y is None:
            raise PyroVAEError("this conditional model needs the label y of every image")
        return self.onehot(y, n, dtype)

    def onehot(self, y, n, dtype):
        """One-hot labels [n, num_classes] of y [n], after checking that they are n integers, in range where
        Pyro's validation is on (a training step skips it: its data were checked when loaded)."""
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise PyroVAEError(
                f"labels must be an integer tensor, got {type(y).__name__} {getattr(y, 'dtype', '')}".rstrip()
            )
        if y.dim() != 1:
            raise PyroVAEError(f"labels must be a vector [n], got shape {tuple(y.shape)}")
        if len(y) != n:
            raise PyroVAEError(f"{len(y)} labels for {n} images")
        if n and is_validation_enabled() and (y.min() < 0 or y.max() >= self.spec.num_classes):
            raise PyroVAEError(f"labels must lie in 0..{self.spec.num_classes - 1}, got {y.min()}..{y.max()}")
        return F.one_hot(y.long(), self.spec.num_classes).to(dtype)

    def model(self, x, y=None, beta=1.0):
        """p(z|c) p(z_{L−1}|z) … p(z1|z2) p(t|z1,c): z ~ prior, each layer below from the one above, the
        target t (site "x") ~ likelihood(decoder(z1, c)) (z1 = z with one layer; z1 of width 0 where z_dim =
        0: p(t|c)); ``beta`` scales the latents' log-densities (β)."""
        for part in ("decoder", "down", "prior", "likelihood"):
            pyro.module(f"{self.pyro_name}.{part}", getattr(self, part))
        t, c = self.condition(x, y)
        sites = self.latent_sites
        with pyro.plate("data", x.shape[0]):
            z = t.flatten(1)[:, :0]  # [B, 0]: no latent (sized by the data, so that a traced model takes any batch)
            with poutine.scale(scale=beta):
                if sites:
                    z = pyro.sample("z", self.prior(c))
                for name, layer in zip(reversed(sites[:-1]), reversed(self.down)):
                    z = pyro.sample(name, Normal(*layer(z)).to_event(1))
            pyro.sample("x", self.likelihood(self.network(self.decoder, z, c)), obs=t)

    def guide(self, x, y=None, beta=1.0):
        """q(z1|t,c) q(z2|z1) … q(z|z_{L−1}): q(z1|t,c) of the posterior family (``[posterior]``, the encoder's
        head: a diagonal Gaussian by default), each layer above N(loc, diag(scale²)), sampled by
        reparameterization, or without it (``model.reparameterize = false``, diagonal only), when Pyro's ELBOs
        differentiate log q instead: the score-function estimator. Empty where z_dim = 0."""
        t, c = self.condition(x, y)
        if not self.latent_sites:
            return
        pyro.module(f"{self.pyro_name}.encoder", self.encoder)
        pyro.module(f"{self.pyro_name}.up", self.up)
        heads = [self.encoder.head, *(layer.head for layer in self.up)]  # the posterior family, then N(loc, scale²)
        with pyro.plate("data", x.shape[0]):
            params = self.network(self.encoder, t, c)
            with poutine.scale(scale=beta):
                for name, head, layer in zip(self.latent_sites, heads, [*self.up, None]):
                    z = pyro.sample(name, head.distribution(*params, reparameterize=self.reparameterize))
                    params = layer(z) if layer is not None else None

    @torch.no_grad()
    def encode(self, x, y=None):
        """(loc, scale) [B, z_dim] of q(z|t,c) for the top latent z (the family's ``summary``: the mean and each
        coordinate's standard deviation, or the base Gaussian's of a flow), the layers below it set at their means."""
        if self.conditioning.partial:
            raise PyroVAEError("a completion model has no codes of whole images to draw; its pictures are completions")
        loc, scale = self.encoder.head.summary(*self.encoder(*self.condition(x, y)))
        for layer in self.up:
            loc, scale = layer(loc)
        return loc, scale

    @torch.no_grad()
    def posterior_params(self, x, y=None):
        """The parameters of q(z|t,c) that the encoder gives images x [B, …] (and labels y [B]): the posterior
        family's tuple, e.g. (loc, scale) [B, z_dim] for the diagonal Gaussian, where a per-example fit starts."""
        if self.conditioning.latent_label:
            what = "a label that is a latent (M2)"
        elif not self.latent_sites:
            what = "no latent (model.z_dim = 0)"
        elif len(self.latent_sites) > 1:
            what = f"{len(self.latent_sites)} stochastic layers (model.layers)"
        else:
            return self.encoder(*self.condition(x, y))
        raise PyroVAEError(f"a per-example q(z|x) is fitted for a one-layer model with one latent; this run has {what}")

    @torch.no_grad()
    def decode(self, z, y=None):
        """E[x|z,y], of shape [..., B, *image_shape], for top latents z [..., B, z_dim] (the layers below at
        their conditional means; labels y broadcast over the leading dims)."""
        c = None if y is None else F.one_hot(y, self.spec.num_classes).to(z.dtype)
        return self.target_mean(z, c)

    def target_mean(self, z, c):
        """E[t|z,c], of shape [..., B, *target_shape], for top latents z [..., B, z_dim] (width 0 without a latent) and the
        condition c [B, cond_dim] (or None), the layers below z at their conditional means."""
        for layer in reversed(self.down):
            z = layer(z)[0]
        return self.likelihood.mean(self.decoder(z, c))

    @torch.no_grad()
    def sample_prior(self, n, y=None):
        """z [n, z_dim] drawn from p(z) (or p(z|y) with labels y [n], checked as the model checks them)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise PyroVAEError(f"the number of samples must be a positive integer, got {n!r}")
        if self.conditioning.partial:
            raise PyroVAEError(
                "a completion model draws z ~ p(z|x_G) for the given part of an image; use complete(x, n)"
            )
        c = self.label_condition(y, n, torch.float32)
        return self.prior(None if c is None else c.to(self.device)).expand([n]).sample()

    @torch.no_grad()
    def sample(self, n, y=None):
        """New data: E[x|z,y] for z ~ p(z|y), shape [n, *image_shape]."""
        return self.decode(self.sample_prior(n, y), y)

    @torch.no_grad()
    def complete(self, x, num_samples, y=None):
        """Completions [num_samples, B, *image_shape] of images x [B, …]: the given part of x, the rest
        E[t|z,c] for z ~ p(z|c) (the layers below at their conditional means; one for all where z_dim = 0)."""
        x = self.as_weights(x)
        _, c = self.condition(x, y)
        if self.latent_sites:
            z = self.prior(c).expand([len(x)]).sample([num_samples])
        else:
            z = x.new_zeros(num_samples, len(x), 0)
        # the likelihood clamps only images, and a target of missing pixels is a vector: clamp the grey levels here
        return self.conditioning.complete(x, self.target_mean(z, c)).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """E[x|z,y] at z = the mean of q(z|x,y), shape of x."""
        return self.decode(self.encode(x, y)[0], y)

    @property
    def device(self):
        return next(self.parameters()).device


def build_vae(config, image_shape, num_classes, device):
    """The VAE a config describes, on ``device``. Built first on the meta device (no memory), so that a
    model whose weights, gradients and Adam's two moments (4 × the weights) exceed the device's free
    memory is refused in one line instead of failing inside the allocator."""
    try:
        with torch.device("meta"):
            weights = sum(
                p.numel() * p.element_size() for p in VAE.from_config(config, image_shape, num_classes).parameters()
            )
    except (RuntimeError, NotImplementedError):  # a component that reads tensor values while it is built
        weights = 0
    free = free_memory(device)
    if 4 * weights > free:
        raise PyroVAEError(
            f"the model needs {4 * weights / 2**30:.1f} GiB for its weights, gradients and optimizer state, more than the "
            f"{free / 2**30:.1f} GiB free on {torch.device(device).type}; lower model.z_dim or the network sizes"
        )
    try:
        return VAE.from_config(config, image_shape, num_classes).to(device)
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        raise PyroVAEError(
            f"the model does not fit in memory on {torch.device(device).type}; lower model.z_dim or the network sizes"
        ) from None
