"""Training objectives chosen by name: each factory returns a Pyro ELBO (negated as the loss), which the
trainer uses in its ``nn.Module`` form, ``VAELoss`` (what ``elbo(model, guide)`` returns, over the VAE's
parameters), so that a torch optimizer and ``DistributedDataParallel`` see an ordinary module.

Several particles are drawn at once under an outer vectorized plate (one particle needs no plate);
``max_plate_nesting=1`` for the data plate. ``jit`` (on by default where Pyro has a JIT version)
compiles the loss with ``pyro.ops.jit``: model and guide are traced once into a TorchScript graph, so
a step no longer runs Pyro's Python machinery. The trainer checks the traced loss against the eager
one, loss and gradient, before it uses it (``Trainer.checked_jit``).
"""

import contextlib
import functools
import math
import warnings
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import (
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.elbo import ELBOModule
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan
from torch import nn

from ..errors import PyroVAEError
from ..registry import Particles, Registry
from .compiled import CompiledTrace_ELBO

OBJECTIVES = Registry("objective")


def build_elbo(cls, num_particles, jit=False, **options):
    """``cls`` with ``num_particles`` particles (vectorized when more than one) and one data plate."""
    if num_particles < 1:
        raise PyroVAEError(f"objective.num_particles must be positive, got {num_particles}")
    if jit:
        options["ignore_jit_warnings"] = True
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1, **options)


def interpreted(method):
    """``method(model, guide, *args)`` of a JIT ELBO, its tensors ``args`` on the CPU, with TorchScript's
    graph-executor optimizations off (``torch.jit.optimized_execution(False)``): the traced graph runs as
    traced, and autograd differentiates each of its operations by that operation's own backward, where the
    optimizing executor would replace them with TorchScript's symbolic derivatives (softplus's backward, say,
    as six elementwise passes over the activations instead of one kernel). The values and the gradient are the
    same; a training step takes less time (docs/speed.md). In force from the first call, which is when the
    executor plans the graph's execution. On a GPU the optimizing executor stays, with its fusers (unmeasured)."""

    @functools.wraps(method)
    def run(self, model, guide, *args, **kwargs):
        on_cpu = all(a.device.type == "cpu" for a in args if isinstance(a, torch.Tensor))
        with torch.jit.optimized_execution(False) if on_cpu else contextlib.nullcontext():
            return method(self, model, guide, *args, **kwargs)

    return run


class OneGradientJitTrace_ELBO(JitTrace_ELBO):
    """``JitTrace_ELBO`` whose ``differentiable_loss`` has the ELBO's gradient. In Pyro 1.9 it returns
    loss + (surrogate − surrogate.detach()), as ``Trace_ELBO`` does; but there the loss is a Python
    number, while the traced loss is a tensor on the same graph as the surrogate, so autograd adds the
    two gradients: twice the ELBO's (a test shows it). Here the value is the loss and the gradient the
    surrogate's alone: surrogate + (loss − surrogate).detach()."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        warn_if_nan(loss.detach(), "loss")  # the loss itself gets no gradient, which Pyro's hook on it would report
        return surrogate_loss + (loss - surrogate_loss).detach()

    @interpreted
    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        """(−ELBO, −surrogate ELBO) by the traced graph, run ``interpreted``: what every other method calls."""
        return super().loss_and_surrogate_loss(model, guide, *args, **kwargs)


@OBJECTIVES.register("trace_elbo")
def trace_elbo(*, num_particles: Particles = 1, jit: bool = True, compile: bool | Literal["auto"] = "auto"):
    """E_q[log p(x, z) − log q(z|x)], a Monte Carlo estimate with reparameterized z ~ q(z|x). ``compile``:
    instead of Pyro's TorchScript JIT, the loss compiled by PyTorch's inductor (``CompiledTrace_ELBO``), a
    graph per batch shape built in seconds, whose steps cost less fixed time. ``"auto"`` leaves the choice
    to the trainer, which compiles for runs long enough to pay for the building (``Trainer``); built
    outside it, ``"auto"`` is the JIT."""
    if compile is True:
        return build_elbo(CompiledTrace_ELBO, num_particles)
    return build_elbo(OneGradientJitTrace_ELBO if jit else Trace_ELBO, num_particles, jit)


class CachedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` compiled once, its graph run ``interpreted``. In Pyro 1.9 its
    ``differentiable_loss`` looks for the compiled loss under ``_loss_and_surrogate_loss`` but stores it as
    ``_differentiable_loss``, so it builds and traces a new one at every step; pointing the first name at the
    second keeps the first."""

    @interpreted
    def differentiable_loss(self, model, guide, *args, **kwargs):
        self._loss_and_surrogate_loss = getattr(self, "_differentiable_loss", None)
        return super().differentiable_loss(model, guide, *args, **kwargs)


def needs_reparameterized(name):
    """The ``check_config`` of an objective whose gradient needs reparameterized draws from the guide."""

    def check_config(config):
        if not config.model.reparameterize:
            raise PyroVAEError(
                f"objective {name} needs a reparameterized guide; with "
                "model.reparameterize = false use trace_elbo (Pyro forms the score-function gradient)"
            )

    return check_config


def check_mean_field(config):
    """The KL in closed form is one layer's; reparameterized draws."""
    needs_reparameterized("mean_field")(config)
    if config.model.layers:
        raise PyroVAEError(
            "objective mean_field takes each layer's KL in closed form, which a guide q(z2|z1) … "
            "makes wrong; with model.layers use trace_elbo or iwae"
        )


@OBJECTIVES.register("mean_field")
def mean_field(*, num_particles: Particles = 1, jit: bool = True):
    """E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), with the KL in closed form where one is registered
    (Gaussian prior) and sampled where not (mixture, VampPrior, flow)."""
    return build_elbo(CachedJitTraceMeanField_ELBO if jit else TraceMeanField_ELBO, num_particles, jit)


class IWAE_ELBO(RenyiELBO):
    """Pyro's RenyiELBO at α = 0, the importance-weighted bound, with the ``differentiable_loss`` that
    RenyiELBO lacks (so it also works as an ``nn.Module``):
        −Σ_b log (1/K) Σₖ exp(log p(x_b, zₖ) − log q(zₖ|x_b)),   zₖ ~ q(z|x_b) reparameterized,
    a scalar whose gradient is the one ``RenyiELBO.loss_and_grads`` forms at α = 0."""

    def __init__(self, **options):
        super().__init__(alpha=0, **options)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        log_weights = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for trace, sign in ((model_trace, 1), (guide_trace, -1)):
                for site in trace.nodes.values():
                    if site["type"] != "sample":
                        continue
                    if sign < 0 and not site["fn"].has_rsample:
                        raise PyroVAEError(
                            f"objective iwae needs a reparameterized guide; site {site['name']!r} is not"
                        )
                    log_w = log_w + sign * torch_sum(site["log_prob"], sum_dims)
            log_weights.append(log_w)
        log_w = log_weights[0] if self.vectorize_particles and self.num_particles > 1 else torch.stack(log_weights)
        return -(torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum()


@OBJECTIVES.register("iwae")
def iwae(*, num_particles: Particles = 5):
    """The importance-weighted bound E[log (1/K) Σₖ p(x, zₖ)/q(zₖ|x)] (Burda et al. 2016), K = num_particles,
    as Pyro's RenyiELBO with α = 0."""
    return build_elbo(IWAE_ELBO, num_particles)


def is_latent(msg):
    return msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg)


class PointLatents(Messenger):
    """Every latent sample site becomes a point mass at its distribution's mean: a deterministic encoder."""

    def _process_message(self, msg):
        if is_latent(msg):
            fn = msg["fn"]
            msg["fn"] = dist.Delta(fn.mean, event_dim=fn.event_dim).expand(fn.batch_shape)


class UnscoredLatents(Messenger):
    """Every latent sample site's log-density is scaled by 0: the prior leaves the loss."""

    def _process_message(self, msg):
        if is_latent(msg):
            msg["scale"] = 0.0 * msg["scale"]


class ReconstructionELBO(Trace_ELBO):
    """``Trace_ELBO`` of the guide's latents as point masses ẑ = E_q[z] and the model's latents unscored:
    −log p(x|ẑ), reconstruction alone, the loss of a plain autoencoder on the same networks."""

    def _get_trace(self, model, guide, args, kwargs):
        return super()._get_trace(UnscoredLatents()(model), PointLatents()(guide), args, kwargs)


mean_field.check_config = check_mean_field
iwae.check_config = needs_reparameterized("iwae")


@OBJECTIVES.register("autoencoder")
def autoencoder():
    """A plain (deterministic) autoencoder: ẑ = the encoder's mean, loss −log p(x|ẑ), no KL term."""
    return ReconstructionELBO(max_plate_nesting=1)


@OBJECTIVES.register("trace_enum_elbo")
def trace_enum_elbo(*, num_particles: Particles = 1):
    """E_q[log p(x, z) − log q(z|x)] with the discrete sites marked ``infer={"enumerate": "parallel"}`` (the
    guide's label y of M2) summed out exactly rather than sampled: Pyro's ``TraceEnum_ELBO``."""
    return build_elbo(TraceEnum_ELBO, num_particles)


class VAELoss(ELBOModule):
    """``elbo(vae.model, vae.guide)`` whose parameters are the VAE's: forward(x[, y], beta=β) is the
    differentiable −ELBO summed over the batch (a scalar). ``elbo`` may be swapped between steps
    (eager during a β warm-up, JIT after) without rebuilding what wraps the module."""

    def __init__(self, vae, elbo):
        super().__init__(vae.model, vae.guide, elbo)
        self.vae = vae


class Classification(nn.Module):
    """−w·Σ_b log q(y_b|x_b) as a Pyro program: a model that observes the labels y [B] under the classifier's
    q(y|x) scaled by w, and an empty guide, so that ``Trace_ELBO`` gives the classification term (Pyro's
    ss_vae example does the same)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def model(self, x, y, weight):
        pyro.module(f"{self.vae.pyro_name}.classifier", self.vae.classifier)
        with pyro.plate("labelled", x.shape[0]), poutine.scale(scale=weight):
            pyro.sample("y_classified", dist.Categorical(logits=self.vae.network(self.vae.classify, x)), obs=y)

    def guide(self, x, y, weight):
        pass


class SemiSupervisedLoss(nn.Module):
    """The M2 objective of Kingma et al. (2014), eq. 9, for one step, as sums of Pyro ELBOs over the VAE's
    parameters: forward(x, y, x_l, y_l, beta=β) =

        −Σ_{b: y_b = −1} U(x_b) − Σ_{b: y_b known} L(x_b, y_b) − Σ_l [L(x_l, y_l) + alpha·(B / B_l)·log q(y_l|x_l)],

    U the enumerated ELBO of an unlabelled example (``elbo``, a ``TraceEnum_ELBO``), L the ELBO of a labelled
    one (y observed), x [B, …] the step's batch (labels y [B], −1 where unknown) and (x_l, y_l) [B_l]
    labelled examples drawn afresh at every step. The classification term is J^α's with α = ``alpha``·N for
    N training examples (Kingma's α = 0.1·N at ``alpha`` = 0.1). The drawn examples' L terms come beside the
    batch's, as Kingma's and Pyro's implementations interleave labelled and unlabelled minibatches: with a
    few labels they weigh far more than one pass over the data would give them, which is what teaches the
    decoder to draw the class from y rather than from z.
    """

    def __init__(self, vae, elbo, alpha):
        super().__init__()
        self.vae, self.elbo, self.alpha = vae, elbo, alpha
        self.classification = Classification(vae)
        self.classification_elbo = Trace_ELBO(max_plate_nesting=1)

    def forward(self, x, y, x_labelled, y_labelled, beta=1.0):
        unknown = y < 0
        loss = x.new_zeros(())
        if unknown.any():
            loss = loss + self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x[unknown], beta=beta)
        if not unknown.all():
            loss = loss + self.labelled_loss(x[~unknown], y[~unknown], beta)
        if len(x_labelled):
            loss = loss + self.labelled_loss(x_labelled, y_labelled, beta)
        if self.alpha and len(x_labelled):
            weight = self.alpha * len(x) / len(x_labelled)  # α·(B/N)·mean over the draw, α = alpha·N
            loss = loss + self.classification_elbo.differentiable_loss(
                self.classification.model, self.classification.guide, x_labelled, y_labelled, weight
            )
        return loss

    def labelled_loss(self, x, y, beta):
        """−Σ L(x, y): the ELBO with the labels observed, where the guide has nothing to enumerate."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites", category=UserWarning)
            return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x, y, beta=beta)
