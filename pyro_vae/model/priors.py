"""Priors p(z) (or p(z|y)) chosen by name.

A prior is an ``nn.Module`` built from the ``ModelSpec`` and the encoder; calling it with the
condition c ([B, cond_dim]: one-hot y, or the given pixels; or None) gives a distribution with event
shape (z_dim,) and batch shape [] (or [B] when it depends on c). Its parameters are learned with the VAE.
"""

import math
from typing import Annotated

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from ..errors import PyroVAEError
from ..registry import Range, Registry, Size
from .networks import GaussianMLP, activation_class

PRIORS = Registry("prior")
SOFTPLUS_INV_1 = math.log(math.e - 1)  # softplus⁻¹(1): raw value of a unit scale


def positive(raw):
    return F.softplus(raw) + 1e-4


class Prior(nn.Module):
    conditional = False  # True where the prior depends on the condition c

    def __init__(self, spec, encoder):
        super().__init__()
        self.z_dim = spec.z_dim


class DiagonalNormalMixture(dist.TorchDistribution):
    """p(z) = Σₖ πₖ N(z; locₖ, diag(scaleₖ²)), z ∈ ℝᴰ: mixing logits [K], loc and scale [K, D].

    log_prob expands −½‖(z − locₖ)/scaleₖ‖² = −½ z²·scaleₖ⁻² + z·(locₖ scaleₖ⁻²) − ½ locₖ²·scaleₖ⁻² into
    two matmuls, so z [..., D] costs [..., K] memory, not the [..., K, D] of ``MixtureSameFamily``.
    The matmuls run in float64: with small scales the three terms are large and nearly cancel.
    """

    arg_constraints = {"logits": constraints.real_vector, "loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector

    def __init__(self, logits, loc, scale, validate_args=None):
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=validate_args)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        loc, scale = self.loc.double(), self.scale.double()
        precision = scale**-2
        log_norm = (
            torch.log_softmax(self.logits.double(), -1)
            - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
            - scale.log().sum(-1)
            - 0.5 * (loc**2 * precision).sum(-1)
        )
        z = value.double()
        quadratic = (z**2) @ (-0.5 * precision).T + z @ (loc * precision).T  # [..., K]
        return torch.logsumexp(quadratic + log_norm, -1).to(value.dtype)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            k = dist.Categorical(logits=self.logits).sample(shape[:-1])
            return self.loc[k] + self.scale[k] * torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)


@PRIORS.register("standard_normal")
class StandardNormal(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, spec, encoder):
        super().__init__(spec, encoder)
        self.register_buffer("loc", torch.zeros(spec.z_dim))
        self.register_buffer("scale", torch.ones(spec.z_dim))

    def forward(self, c=None):
        return UnitNormal(self.loc, self.scale).to_event(1)


class UnitNormal(dist.Normal):
    """N(0, 1) (loc 0, scale 1, as ``StandardNormal`` holds them) with log p(z) = −½z² − ½ log 2π: three
    kernels where Normal's density takes nine and their gradients."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return value.square().mul(-0.5) - 0.5 * math.log(2 * math.pi)


@PRIORS.register("gaussian")
class Gaussian(Prior):
    """p(z) = N(loc, diag(scale²)) with learned loc and scale."""

    def __init__(self, spec, encoder):
        super().__init__(spec, encoder)
        self.loc = nn.Parameter(torch.zeros(spec.z_dim))
        self.raw_scale = nn.Parameter(torch.full((spec.z_dim,), SOFTPLUS_INV_1))

    def forward(self, c=None):
        return dist.Normal(self.loc, positive(self.raw_scale)).to_event(1)


@PRIORS.register("mog")
class MixtureOfGaussians(Prior):
    """p(z) = Σₖ πₖ N(z; locₖ, diag(scaleₖ²)), K = num_components, with learned π, loc and scale."""

    def __init__(self, spec, encoder, *, num_components: Size = 10):
        super().__init__(spec, encoder)
        if num_components < 1:
            raise PyroVAEError(f"prior.num_components must be positive, got {num_components}")
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, spec.z_dim))
        self.raw_scales = nn.Parameter(torch.full((num_components, spec.z_dim), SOFTPLUS_INV_1))

    def forward(self, c=None):
        return DiagonalNormalMixture(self.logits, self.locs, positive(self.raw_scales))


@PRIORS.register("vamp")
class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = (1/K) Σₖ q(z | uₖ), the encoder's posteriors at K
    learned pseudo-inputs uₖ (kept in [0, 1] through a sigmoid)."""

    @staticmethod
    def check_config(config):
        """The pseudo-inputs go through the encoder to the top latent: one stochastic layer only."""
        if config.model.layers:
            raise PyroVAEError(
                "the vamp prior maps pseudo-inputs through the encoder to the top latent; "
                "it needs one stochastic layer (model.layers = [])"
            )

    def __init__(self, spec, encoder, *, num_components: Size = 500):
        super().__init__(spec, encoder)
        if spec.cond_dim:
            raise PyroVAEError(
                "the vamp prior is for models without a condition; use standard_normal, conditional_gaussian "
                "(labels) or network"
            )
        if num_components < 1:
            raise PyroVAEError(f"prior.num_components must be positive, got {num_components}")
        # the VAE's encoder, held outside this module's submodules: the guide registers its parameters
        # with Pyro, and a second registration under the prior's name would alias them in the param store
        self.__dict__["encoder"] = encoder
        self.raw_pseudo_inputs = nn.Parameter(torch.randn(num_components, *spec.image_shape) * 0.1 - 2.0)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        for key in [key for key in state_dict if key.startswith(prefix + "encoder.")]:
            del state_dict[key]  # the encoder's copy in checkpoints written while it was a submodule here
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def pseudo_inputs(self):
        return torch.sigmoid(self.raw_pseudo_inputs)

    def forward(self, c=None):
        loc, scale = self.encoder(self.pseudo_inputs, None)
        return DiagonalNormalMixture(torch.zeros(loc.shape[:1], device=loc.device), loc, scale)


@PRIORS.register("flow")
class FlowPrior(Prior):
    """A normalizing flow: z = f⁻¹(ε), ε ~ N(0, I), with f a stack of ``num_flows`` masked
    autoregressive affine layers (Pyro's ``affine_autoregressive``), so log p(z) = log N(f(z)) +
    log |det ∂f/∂z| is one parallel pass and sampling inverts f one dimension at a time."""

    def __init__(self, spec, encoder, *, num_flows: Annotated[int, Range(1, 256)] = 4, hidden: Size = 128):
        super().__init__(spec, encoder)
        if num_flows < 1 or hidden < 1:
            raise PyroVAEError(f"prior.num_flows and prior.hidden must be positive, got {num_flows}, {hidden}")
        if spec.z_dim < 2:
            raise PyroVAEError("the flow prior needs z_dim of at least 2")
        self.flows = nn.ModuleList(
            T.affine_autoregressive(spec.z_dim, hidden_dims=[hidden, hidden]) for _ in range(num_flows)
        )
        self.register_buffer("loc", torch.zeros(spec.z_dim))

    def forward(self, c=None):
        base = dist.Normal(self.loc, torch.ones_like(self.loc)).to_event(1)
        return dist.TransformedDistribution(base, [flow.inv for flow in reversed(self.flows)])


@PRIORS.register("conditional_gaussian")
class ConditionalGaussian(Prior):
    """p(z|y) = N(loc_y, diag(scale_y²)), a learned loc and scale for each class y (CVAE only)."""

    conditional = True

    def __init__(self, spec, encoder):
        super().__init__(spec, encoder)
        if not spec.conditional:
            raise PyroVAEError(
                "the conditional_gaussian prior needs labels (--conditional); for a condition on part of "
                "the image use the network prior"
            )
        self.locs = nn.Parameter(torch.zeros(spec.num_classes, spec.z_dim))
        self.raw_scales = nn.Parameter(torch.full((spec.num_classes, spec.z_dim), SOFTPLUS_INV_1))

    def forward(self, c=None):
        return dist.Normal(c @ self.locs, positive(c @ self.raw_scales)).to_event(1)


@PRIORS.register("network")
class PriorNetwork(Prior):
    """p(z|c) = N(loc(c), diag(scale(c)²)) from an MLP of the condition c (Doersch's p(z|X), the prior
    network of Pyro's CVAE example): c → hidden… → (loc, scale) [B, z_dim]."""

    conditional = True

    def __init__(self, spec, encoder, *, hidden: list[Size] = [500, 500], activation: str = "relu"):
        super().__init__(spec, encoder)
        if not spec.cond_dim:
            raise PyroVAEError("the network prior maps a condition to p(z|c); it needs a [condition] (e.g. quadrants)")
        if not hidden or min(hidden) < 1:
            raise PyroVAEError(f"prior.hidden must be a non-empty list of positive sizes, got {hidden}")
        self.net = GaussianMLP(spec.cond_dim, hidden, spec.z_dim, activation_class(activation))

    def forward(self, c=None):
        return dist.Normal(*self.net(c)).to_event(1)
