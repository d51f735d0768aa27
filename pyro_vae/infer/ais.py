"""Annealed importance sampling (Neal 2001) of log p(x), per example: an estimate that needs no guide.

Between the prior f₀(z) = p(z) and the posterior's unnormalized density f_T(z) = p(z) p(x|z) lie the
intermediate distributions f_t(z) = p(z) p(x|z)^β_t, 0 = β₀ < β₁ < … < β_T = 1 (a sigmoid schedule,
as Wu, Burda, Salakhutdinov & Grosse 2017 used to check decoder-based models). Each of C chains starts
at z₀ ~ p(z), and for t = 1 … T adds (β_t − β_{t−1}) log p(x|z_{t−1}) to its log-weight, then moves z by
one Hamiltonian Monte Carlo transition that leaves f_t invariant: a fresh momentum, ``leapfrog_steps``
steps of Pyro's ``velocity_verlet`` integrator, a Metropolis correction. Each chain's weight w has
E[w] = p(x), so log (1/C) Σ_c w_c is a stochastic lower bound on log p(x) that tightens as T grows,
independent of any encoder. Each (chain, example) adapts its own step size towards an acceptance rate of
0.65 from its own past (each transition still leaves f_t invariant, so the weights stay unbiased).

The model keeps the evaluator's contract (``importance.py``) with continuous latents on the real line,
every site inside the one ``pyro.plate("data", B)`` and no other plate; the rest is refused in one line.
"""

import math

import pyro
import torch
from pyro import poutine
from pyro.ops.integrator import velocity_verlet
from pyro.poutine.util import prune_subsample_sites

from ..errors import PyroVAEError
from ..serial import PYRO_LOCK
from .importance import (
    DATA,
    check_finite_observations,
    check_site,
    estimate_of_weights,
    interval,
    sample_sites,
    support_of,
    without_deterministic,
)

CHAINS = "_ais_chains"
TARGET_ACCEPTANCE = 0.65
ADAPTATION = 0.05  # log step size moves by ADAPTATION · (accepted − TARGET_ACCEPTANCE) per transition


def sigmoid_schedule(num_distributions, sharpness=4.0):
    """β_0 … β_T [T + 1], T = ``num_distributions``: σ(δ(2t/T − 1)) rescaled to run from 0 to 1, denser
    near both ends (δ = ``sharpness``)."""
    s = torch.sigmoid(sharpness * torch.linspace(-1, 1, num_distributions + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def latent_shapes(model, args, kwargs):
    """{latent site: event shape} of the model, after checking that AIS can move it (see the module)."""
    trace = without_deterministic(prune_subsample_sites(poutine.trace(model).get_trace(*args, **kwargs)))
    shapes = {}
    for site in sample_sites(trace):
        check_site("model", site)
        others = [f.name for f in site["cond_indep_stack"] if f.name != DATA]
        if others:
            raise PyroVAEError(
                f'model site {site["name"]!r} lies in the plate {others[0]!r} besides "data"; AIS moves models '
                'whose sites lie in pyro.plate("data", B) alone'
            )
        if site["is_observed"]:
            continue
        bounds = interval(support_of(site["fn"]), widest=True)
        if bounds is None or bounds[0] != -math.inf or bounds[2] != math.inf or site["fn"].has_enumerate_support:
            raise PyroVAEError(
                f"model latent {site['name']!r} is not a continuous variable on the real line ({site['fn'].support}); "
                "AIS moves latents by Hamiltonian Monte Carlo: use importance sampling (--method is)"
            )
        shapes[site["name"]] = site["fn"].event_shape
    if not shapes:
        raise PyroVAEError("the model has no latent site to anneal; its log p(x) is its log-density")
    check_finite_observations(trace)
    return shapes


class Annealing:
    """The log-densities of a model's latents z (flattened to [C, B, D]) under a plate of C chains:
    log p(z) and log p(x|z), each [C, B]."""

    def __init__(self, model, args, kwargs, shapes, num_chains):
        self.model, self.args, self.kwargs = model, args, kwargs
        self.shapes, self.num_chains = shapes, num_chains
        self.sizes = [math.prod(shape) for shape in shapes.values()]

    def chains(self):
        return pyro.plate(CHAINS, self.num_chains, dim=-2)

    def prior_draw(self):
        """z ~ p(z) for every chain and example [C, B, D] (the model run forward, its data observed)."""
        with self.chains():
            trace = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
        return self.flatten({name: trace.nodes[name]["value"] for name in self.shapes})

    def flatten(self, values):
        c, b = self.num_chains, next(iter(values.values())).shape[1]
        return torch.cat(
            [values[name].expand(c, b, *shape).reshape(c, b, -1) for name, shape in self.shapes.items()], -1
        )

    def densities(self, z):
        """(log p(z), log p(x|z)), each [C, B], at z [C, B, D]."""
        values = {
            name: part.reshape(*part.shape[:2], *shape)
            for (name, shape), part in zip(self.shapes.items(), z.split(self.sizes, -1))
        }
        with self.chains():
            trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(*self.args, **self.kwargs)
        prior = likelihood = 0.0
        for site in sample_sites(trace):
            log_p = site["fn"].log_prob(site["value"])
            if site["name"] in self.shapes:
                prior = prior + log_p
            else:
                likelihood = likelihood + log_p
        shape = z.shape[:2]
        return torch.as_tensor(prior).expand(shape), torch.as_tensor(likelihood).expand(shape)

    def move(self, z, prior, likelihood, beta, eps, leapfrog_steps):
        """One HMC transition of every chain that leaves f_β(z) = p(z) p(x|z)^β invariant, from z [C, B, D] whose
        log p(z) and log p(x|z) are ``prior`` and ``likelihood`` [C, B]: a fresh momentum r ~ N(0, I), Pyro's
        ``velocity_verlet`` with step sizes ``eps`` [C, B, 1], the end accepted with probability
        min(1, exp(H(start) − H(end))), H = −log f_β(z) + ½|r|². Returns (z, log p(z), log p(x|z), accepted [C, B])."""
        ends = {}

        def potential(values):  # −log f_β summed over the chains and examples, whose gradients stay apart
            ends["densities"] = self.densities(values["z"])
            return -(ends["densities"][0] + beta * ends["densities"][1]).sum()

        momentum = torch.randn_like(z)
        with torch.enable_grad():
            moved, momentum_end, _, _ = velocity_verlet(
                {"z": z}, {"z": momentum}, potential, lambda r: r, eps, leapfrog_steps
            )
        new_prior, new_likelihood = (d.detach() for d in ends["densities"])
        start = -(prior + beta * likelihood) + 0.5 * momentum.square().sum(-1)
        end = -(new_prior + beta * new_likelihood) + 0.5 * momentum_end["z"].square().sum(-1)
        accept = torch.rand_like(start).log() < (start - end)  # a NaN at the end is never accepted
        return (
            torch.where(accept.unsqueeze(-1), moved["z"].detach(), z),
            torch.where(accept, new_prior, prior),
            torch.where(accept, new_likelihood, likelihood),
            accept,
        )


@torch.no_grad()
def annealed_importance_sample(
    model, *args, num_chains=16, num_distributions=1000, leapfrog_steps=10, step_size=0.05, progress=None, **kwargs
):
    """(``ImportanceEstimate`` of log p(x) over C = ``num_chains`` AIS chains per example, log-weights
    [C, B], acceptance rate [B]) for the model's arguments ``args`` (``(x,)`` or ``(x, y)``), with T =
    ``num_distributions`` intermediate distributions, HMC transitions of ``leapfrog_steps`` leapfrog steps
    starting at ``step_size``. ``progress``, if given, is called after each transition. The draws come from
    torch's global random stream (seed it for a reproducible estimate)."""
    for name, value in (
        ("chains", num_chains),
        ("distributions", num_distributions),
        ("leapfrog steps", leapfrog_steps),
    ):
        if not isinstance(value, int) or value < 1:
            raise PyroVAEError(f"the number of AIS {name} must be a positive integer, got {value!r}")
    with PYRO_LOCK:
        shapes = latent_shapes(model, args, kwargs)
        with pyro.validation_enabled(False):  # checked once above
            return anneal(
                Annealing(model, args, kwargs, shapes, num_chains),
                num_distributions,
                leapfrog_steps,
                step_size,
                progress,
            )


def anneal(annealing, num_distributions, leapfrog_steps, step_size, progress):
    betas = sigmoid_schedule(num_distributions).tolist()
    z = annealing.prior_draw()
    prior, likelihood = annealing.densities(z)
    log_w = torch.zeros(z.shape[:2], dtype=torch.float64, device=z.device)
    eps = torch.full((*z.shape[:2], 1), float(step_size), device=z.device)
    accepted = torch.zeros(z.shape[1], dtype=torch.float64, device=z.device)
    for before, beta in zip(betas, betas[1:]):
        log_w += (beta - before) * likelihood.double()
        z, prior, likelihood, accept = annealing.move(z, prior, likelihood, beta, eps, leapfrog_steps)
        eps = (eps * torch.exp(ADAPTATION * (accept.float().unsqueeze(-1) - TARGET_ACCEPTANCE))).clamp(1e-4, 1.0)
        accepted += accept.double().mean(0)
        if progress is not None:
            progress()
    return estimate_of_weights(log_w), log_w, accepted / num_distributions
