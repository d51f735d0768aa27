"""The family of q(z|x), chosen by name: the head on the encoder's features and the distribution it gives.

A posterior is the encoder's last layer: ``forward(h)`` maps the encoder's features h [..., F] to the
family's parameters (a tuple whose first element is the location, the code pictures draw), and
``distribution(*params)`` gives q(z|x), a Pyro distribution over z [..., z_dim] (event dim 1) whose
``log_prob`` is exact, so that every ELBO and the importance-sampled log p(x) stay exact. ``constraints``
names each parameter's support, so that a per-example fit (``infer/local.py``) keeps it:

- ``diagonal``: N(loc, diag(scale²)), the VAE of Kingma & Welling (2014);
- ``full``: N(loc, L Lᵀ) with L lower-triangular of positive diagonal (a full covariance, Cholesky factor);
- ``iaf``: the diagonal Gaussian followed by ``steps`` inverse autoregressive flow steps (Kingma et al. 2016),
  each Pyro's ``ConditionalAffineAutoregressive`` in its numerically stable form, conditioned on a
  context vector the encoder also outputs, the order of z reversed between steps.
"""

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pyro import distributions as dist
from pyro.distributions import constraints
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ..errors import PyroVAEError
from ..registry import Range, Registry, Size

POSTERIORS = Registry("posterior")


class ReparameterizedNormal(dist.Normal):
    """N(loc, diag(scale²)) that keeps the standard noise ε of its latest draw z = loc + scale·ε and
    scores that z from it: log q(z) = −½ε² − log scale − ½ log 2π, with ε held constant, so that its
    gradient is the total derivative of log q(z(θ); θ) (the pathwise one Pyro's ELBOs form) in three
    kernels, where Normal's density differentiates (z − loc)/scale. Any other value is scored by
    Normal's log_prob. ε is drawn by ``randn_like``, the same numbers ``Normal.rsample`` draws, without
    the zeros, ones and ``torch.normal`` it traces into (whose check of the ones reads two numbers
    back from the device at every step)."""

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = torch.randn_like(self.loc if self.loc.shape == shape else self.loc.expand(shape))
        z = self.loc + eps * self.scale
        self._draw = z, eps
        return z

    def log_prob(self, value):
        draw = getattr(self, "_draw", None)
        if draw is None or value is not draw[0]:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        return draw[1].square().mul(-0.5) - self.scale.log() - 0.5 * math.log(2 * math.pi)


class ScoreFunctionNormal(dist.Normal):
    """A Normal whose draws carry no gradient (``has_rsample`` False, kept by ``expand``): Pyro's ELBOs then
    differentiate log q(z|x) itself, the score-function (REINFORCE) estimator."""

    has_rsample = False


@POSTERIORS.register("diagonal")
class GaussianHead(nn.Module):
    """q(z|x) = N(loc, diag(scale²)), the diagonal family (and the head of every Gaussian conditional between
    stochastic layers): features [..., F] → (loc, scale) [..., z_dim] with scale = softplus(·) + 1e-4, in
    float32 under autocast too (log scale enters log q(z|x), and a bfloat16 scale would round the 1e-4
    floor away)."""

    diagonal = True
    constraints = (constraints.real, constraints.positive)  # of each parameter: what per-example fits keep

    def __init__(self, in_features, z_dim):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * z_dim)

    def forward(self, h):
        loc, raw_scale = self.linear(h).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale.float()) + 1e-4

    def distribution(self, loc, scale, reparameterize=True):
        """N(loc, diag(scale²)), drawn by reparameterization (or, where not, for the score-function estimator)."""
        return (ReparameterizedNormal if reparameterize else ScoreFunctionNormal)(loc, scale).to_event(1)

    def summary(self, loc, scale):
        """(mean, standard deviation of each coordinate) [..., z_dim] of q(z|x)."""
        return loc, scale


def check_rich(config):
    """The ``check_config`` of a family other than the diagonal: one stochastic layer, reparameterized draws,
    and a prior that is not built from the encoder's posteriors."""
    name = config.posterior.name
    if config.model.layers:
        raise PyroVAEError(f"posterior {name} is the family of a one-layer model; with model.layers use diagonal")
    if not config.model.reparameterize:
        raise PyroVAEError(
            f"posterior {name} is drawn by reparameterization; model.reparameterize = false needs diagonal"
        )
    if config.prior.name == "vamp":
        raise PyroVAEError(f"the vamp prior is a mixture of diagonal posteriors; posterior {name} does not fit it")


@POSTERIORS.register("full")
class FullCovariance(nn.Module):
    """q(z|x) = N(loc, L Lᵀ): the parameters (loc, L), L [..., z_dim, z_dim] lower-triangular with diagonal
    softplus(·) + 1e-4 and z_dim (z_dim − 1)/2 free entries below it."""

    diagonal = False
    constraints = (constraints.real, constraints.lower_cholesky)

    def __init__(self, in_features, z_dim):
        super().__init__()
        self.z_dim = z_dim
        self.linear = nn.Linear(in_features, 2 * z_dim + z_dim * (z_dim - 1) // 2)
        rows, cols = torch.tril_indices(z_dim, z_dim, -1)
        self.register_buffer("below", rows * z_dim + cols, persistent=False)  # where the free entries go in L

    def forward(self, h):
        out = self.linear(h).float()
        loc, raw_diagonal, below = out.split([self.z_dim, self.z_dim, out.shape[-1] - 2 * self.z_dim], dim=-1)
        lower = below.new_zeros(*below.shape[:-1], self.z_dim**2).index_copy(-1, self.below, below)
        return loc, lower.unflatten(-1, (self.z_dim, self.z_dim)) + torch.diag_embed(F.softplus(raw_diagonal) + 1e-4)

    def distribution(self, loc, scale_tril, reparameterize=True):
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)

    def summary(self, loc, scale_tril):
        """(mean, standard deviation of each coordinate) [..., z_dim] of q(z|x)."""
        return loc, scale_tril.square().sum(-1).sqrt()


FullCovariance.check_config = staticmethod(check_rich)


@POSTERIORS.register("iaf")
class InverseAutoregressiveFlow(nn.Module):
    """q(z|x): z₀ ~ N(loc, diag(scale²)), then z_t = σ_t ⊙ z_{t−1} + (1 − σ_t) ⊙ m_t for t = 1 … ``steps``, with
    (m_t, logit σ_t) from a MADE of ``hidden`` sizes over z_{t−1} and the context c (Kingma et al. 2016, eq.
    14, their stable form), the order of z reversed between steps. The parameters: (loc, scale, c), c
    [..., ``context``]. log q(z_T) = log N(z₀) − Σ_t Σ_i log σ_{t,i}."""

    diagonal = False
    constraints = (constraints.real, constraints.positive, constraints.real)

    def __init__(
        self,
        in_features,
        z_dim,
        *,
        steps: Annotated[int, Range(1, 64)] = 2,
        hidden: list[Size] = [320, 320],
        context: Size = 50,
    ):
        super().__init__()
        self.z_dim, self.context = z_dim, context
        self.linear = nn.Linear(in_features, 2 * z_dim + context)
        order = torch.arange(z_dim)
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(z_dim, context, hidden, permutation=order if t % 2 == 0 else order.flip(0)),
                stable=True,
            )
            for t in range(steps)
        )

    def forward(self, h):
        loc, raw_scale, context = self.linear(h).float().split([self.z_dim, self.z_dim, self.context], dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4, context

    def distribution(self, loc, scale, context, reparameterize=True):
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [flow.condition(context) for flow in self.flows])

    def summary(self, loc, scale, context):
        """(loc, scale) of the base Gaussian z₀: where the flow starts, the code pictures draw."""
        return loc, scale


InverseAutoregressiveFlow.check_config = staticmethod(check_rich)
