"""Per-example variational inference: each example's own q(z|x), started where the encoder puts it and
fitted by SVI with the model held fixed.

The encoder gives, for a batch x [B, …], the parameters φ(x) of one posterior family (its head: (loc,
scale), (loc, L) or (loc, scale, context)). ``LocalPosterior`` makes each example's φᵢ free parameters
of its own and maximizes Σᵢ ELBOᵢ(φᵢ), ELBOᵢ(φᵢ) = E_q[log p(xᵢ, z) − log q(z; φᵢ)], through Pyro's
``Trace_ELBO`` in its ``nn.Module`` form and Adam. The examples share no parameter and Adam updates
each element by its own gradient, so each φᵢ follows its own example's ELBO: the fit gives q*, the best
q of the family for that example alone (Cremer, Li & Duvenaud 2018), up to the optimizer's convergence.

With ``flow_steps`` > 0 the family is enriched by planar flow steps (Rezende & Mohamed 2015) with each
example's own parameters, z ↦ z + û tanh(wᵀz + b), û the invertible reparameterization of u (Pyro's
``ConditionedPlanar``), started at the identity (û = 0): a flow posterior fitted to one example.
"""

import math

import pyro
import torch
from pyro.distributions import TransformedDistribution
from pyro.distributions.transforms.planar import ConditionedPlanar
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import transform_to

from ..errors import PyroVAEError
from .importance import inspect_model


class LocalPosterior(nn.Module):
    """q(z; φᵢ) for each example i of a batch, of the family ``head`` (a posterior of ``model/posteriors.py``:
    its ``distribution(*params)`` and ``constraints``, its own weights held), started at ``params`` (a tuple
    of tensors [B, …], the encoder's output), followed by ``flow_steps`` planar steps of each example's own.

    Args:
        head: the posterior family (the encoder's head).
        params: the family's parameters of the B examples, e.g. (loc, scale) [B, z_dim].
        flow_steps: planar flow steps on top of the family (0: the family itself).
        site: the name of the latent site the guide samples.
    """

    def __init__(self, head, params, flow_steps=0, site="z"):
        super().__init__()
        supports = getattr(head, "constraints", None)
        if supports is None or len(supports) != len(params):
            raise PyroVAEError(
                f"posterior {type(head).__name__} names no constraint for each of its parameters (a class attribute "
                "`constraints`), which a per-example fit needs"
            )
        self.head, self.site, self.supports = head, site, supports
        self.raw = nn.ParameterList(
            nn.Parameter(transform_to(c).inv(p.detach()).clone()) for p, c in zip(params, supports)
        )
        batch, z_dim = params[0].shape
        w = torch.randn(flow_steps, batch, z_dim, dtype=params[0].dtype, device=params[0].device)
        w = w / w.norm(dim=-1, keepdim=True)
        self.w = nn.Parameter(w)
        self.u = nn.Parameter(math.log(math.e - 1) * w)  # wᵀu = log(e − 1): û = 0, each step the identity
        self.b = nn.Parameter(w.new_zeros(flow_steps, batch, 1))

    @property
    def batch_size(self):
        return self.raw[0].shape[0]

    def params(self, rows=slice(None)):
        """The family's parameters of the examples ``rows``, each in its support."""
        return tuple(transform_to(c)(raw[rows]) for c, raw in zip(self.supports, self.raw))

    def distribution(self, rows=slice(None)):
        """q(z; φᵢ) of the examples ``rows``: the family's distribution, then the planar steps."""
        base = self.head.distribution(*self.params(rows))
        if not len(self.w):
            return base
        steps = [ConditionedPlanar((b[rows], u[rows], w[rows])) for b, u, w in zip(self.b, self.u, self.w)]
        return TransformedDistribution(base, steps)

    def guide(self, x, *args, rows=slice(None), **kwargs):
        """The guide of the examples ``rows`` (all by default), taking the model's arguments: one draw of z
        per example inside ``pyro.plate("data", B)``."""
        with pyro.plate("data", x.shape[0]):
            pyro.sample(self.site, self.distribution(rows))

    def rows(self, rows):
        """The guide of the examples ``rows`` alone (a slice), for a model given only their data."""
        return lambda x, *args, **kwargs: self.guide(x, *args, rows=rows, **kwargs)

    def fit(self, model, *args, steps, lr=0.01, num_particles=8, held=(), progress=None):
        """Maximize Σᵢ ELBOᵢ(φᵢ) by ``steps`` Adam steps, the rate decaying from ``lr`` to ``lr``/10 (so that
        the last steps average the draws' noise out), each ELBO from ``num_particles``
        vectorized draws; the weights of the modules ``held`` (the model's networks) take no gradient.
        ``args`` are the model's (and guide's) arguments. ``progress``, if given, is called after each step."""
        # The evaluator's contract and the plates to vectorize over. Its run of the model also registers the
        # model's weights with Pyro's param store (which turns their gradients on), so they are held after it.
        layout = inspect_model(model, self.guide, args, {})
        elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=layout.plate_nesting)
        loss = elbo(model, self.guide)  # the ELBO as an nn.Module: the negative ELBO, differentiable
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.1 ** (1 / max(steps, 1)))
        weights = [p for module in held for p in module.parameters() if p.requires_grad]
        try:
            for p in weights:
                p.requires_grad_(False)
            for _ in range(steps):
                optimizer.zero_grad()
                value = loss(*args)
                if not torch.isfinite(value):
                    raise PyroVAEError(
                        "the per-example fit diverged (a non-finite ELBO); lower its number of steps or rate"
                    )
                value.backward()
                optimizer.step()
                decay.step()
                if progress is not None:
                    progress()
        finally:
            for p in weights:
                p.requires_grad_(True)
        return self
