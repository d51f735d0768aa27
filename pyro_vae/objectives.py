"""Training objectives chosen by name: each factory returns a Pyro ELBO (negated as the loss).

Several particles are drawn at once under an outer vectorized plate (one particle needs no plate);
``max_plate_nesting=1`` for the data plate. ``jit`` (on by default where Pyro has a JIT version)
compiles the loss with ``pyro.ops.jit``: model and guide are traced once into a TorchScript graph, so
a step no longer runs Pyro's Python machinery. The trainer checks the traced loss against the eager
one before it uses it (``Trainer.compiled_svi``).
"""
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from .errors import PyroVAEError
from .registry import Registry

OBJECTIVES = Registry("objective")


def build_elbo(cls, num_particles, jit=False, **options):
    """``cls`` with ``num_particles`` particles (vectorized when more than one) and one data plate."""
    if num_particles < 1:
        raise PyroVAEError(f"objective.num_particles must be positive, got {num_particles}")
    if jit:
        options["ignore_jit_warnings"] = True
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1, **options)


@OBJECTIVES.register("trace_elbo")
def trace_elbo(*, num_particles: int = 1, jit: bool = True):
    """E_q[log p(x, z) − log q(z|x)], a Monte Carlo estimate with reparameterized z ~ q(z|x)."""
    return build_elbo(JitTrace_ELBO if jit else Trace_ELBO, num_particles, jit)


class CachedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` compiled once. In Pyro 1.9 its ``differentiable_loss`` looks for the
    compiled loss under ``_loss_and_surrogate_loss`` but stores it as ``_differentiable_loss``, so it
    builds and traces a new one at every step; pointing the first name at the second keeps the first."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        self._loss_and_surrogate_loss = getattr(self, "_differentiable_loss", None)
        return super().differentiable_loss(model, guide, *args, **kwargs)


@OBJECTIVES.register("mean_field")
def mean_field(*, num_particles: int = 1, jit: bool = True):
    """E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), with the KL in closed form where one is registered
    (Gaussian prior) and sampled where not (mixture, VampPrior, flow)."""
    return build_elbo(CachedJitTraceMeanField_ELBO if jit else TraceMeanField_ELBO, num_particles, jit)


@OBJECTIVES.register("iwae")
def iwae(*, num_particles: int = 5):
    """The importance-weighted bound E[log (1/K) Σₖ p(x, zₖ)/q(zₖ|x)] (Burda et al. 2016), K = num_particles,
    as Pyro's RenyiELBO with α = 0."""
    return build_elbo(RenyiELBO, num_particles, alpha=0)
