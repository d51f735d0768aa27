"""Importance-sampled log p(x), per example, for any model/guide pair that keeps the contract.

    log p(x) ≈ log (1/K) Σₖ wₖ,   wₖ = p(x, zₖ) / q(zₖ|x),   zₖ ~ q(z|x)

The K samples are drawn in chunks under an outer vectorized plate; each chunk's log-weights
[chunk, B] are merged exactly in float64 (running logsumexp), so memory is bounded by the chunk
size and not by K. Model sites marked for parallel enumeration that the guide does not sample are
summed out exactly inside each weight, p(x, z) = Σ_c p(x, z, c), as ``TraceEnum_ELBO`` does.

The contract, checked once per call before any sample is drawn (each breach is a one-line
``PyroVAEError`` naming the site):
- every sample site of model and guide lies inside one vectorized ``pyro.plate("data", B)`` and has
  log-prob shape [B] once the plates inside "data" are summed (``.to_event(...)`` elsewhere): its
  value has the data plate's dim among its batch dims, so no event swallows the examples;
- every model latent is sampled by the guide, or marked ``infer={"enumerate": "parallel"}``;
  every guide site is a model site, or an auxiliary one (``infer={"is_auxiliary": True}``); a guide
  site draws from a support within the model site's;
- no log-density is scaled (``poutine.scale``, a β weight, a subsampled plate; a scale of exactly 1,
  number or tensor, is no scale);
- no guide site is a point mass (``Delta``) unless it is a function of an auxiliary random site
  (its value changes when that site is drawn again), and no other guide site depends on an auxiliary
  one: the weight would divide by q(u) q(z|u), not by the marginal q(z);
- observed values have a finite log-density, and with Pyro's validation on they lie in their
  distribution's support.
``pyro.deterministic`` sites, which carry no density, are left out wherever they are.

Beside the estimate come, per example, the ELBO of the same samples (1/K) Σₖ log wₖ, the
effective sample size (Σ wₖ)² / Σ wₖ², the delta-method standard error √(1/ESS − 1/K) (NaN for
K = 1: one weight says nothing of its own spread), and the Pareto shape k̂ of the weights' upper
tail (Vehtari et al., "Pareto Smoothed Importance Sampling").

The functions here run Pyro, whose handler stack is global to the process: calls from several
threads are serialized (``serial.PYRO_LOCK``), each giving the result it would alone.
"""

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.jit import trace as jit_trace
from pyro.ops.rings import LogRing
from pyro.ops.stats import fit_generalized_pareto
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.util import is_validation_enabled, prune_subsample_sites
from torch.utils._pytree import tree_leaves

from ..devices import allocation_line, forked_rng, free_memory
from ..errors import PyroVAEError
from ..serial import PYRO_LOCK
from .compiled import StoreCompiled, tracing_failed

PARTICLES = "_importance_particles"
DATA = "data"
DEFAULT_MEMORY = 256 * 2**20  # bytes a chunk may use when chunk_size is chosen automatically
# On the CPU, chunks that allocate more than the last-level cache (32 MB on the 2-core machine we measure on) only
# miss it: one digit at K = 5000 took 42 ms in chunks of 2,250 samples (32 MB) against 48 ms in chunks of 3,382 (48 MB).
CPU_CHUNK_BYTES = 32 * 2**20
PARETO_K_WARNING = 0.7  # above it the estimate is unreliable (Vehtari et al.)


@dataclass
class ImportanceEstimate:
    """Per-example results, each a float64 tensor [B]."""

    log_likelihood: torch.Tensor  # log (1/K) Σₖ wₖ
    elbo: torch.Tensor  # (1/K) Σₖ log wₖ
    ess: torch.Tensor  # (Σₖ wₖ)² / Σₖ wₖ²
    stderr: torch.Tensor  # √(1/ESS − 1/K), delta-method standard error of log p̂(x); NaN for K = 1
    pareto_k: torch.Tensor  # k̂ of the weights' tail; NaN where K is too small to fit it
    num_samples: int


@dataclass(frozen=True)
class Layout:
    """What one plain run of guide and model showed: plate nesting and the data plate's dim."""

    plate_nesting: int
    data_dim: int
    data_size: int  # B


def log_likelihood(model, guide, *args, num_samples=5000, chunk_size=None, **kwargs):
    """log p(x) [B] of each example, estimated with ``num_samples`` importance samples from the guide.

    ``args`` and ``kwargs`` are passed to both model and guide (e.g. ``(x,)`` or ``(x, y)``).
    """
    return importance_sample(
        model, guide, *args, num_samples=num_samples, chunk_size=chunk_size, **kwargs
    ).log_likelihood


@torch.no_grad()
def importance_sample(
    model,
    guide,
    *args,
    num_samples=5000,
    chunk_size=None,
    memory=DEFAULT_MEMORY,
    progress=None,
    jit=None,
    compile=False,
    **kwargs,
):
    """``ImportanceEstimate`` of log p(x) with K = ``num_samples`` draws from the guide, ``chunk_size``
    at a time (when None, as many as fit in ``memory`` bytes by a measured trial). ``progress``, if
    given, is called with the number of samples × examples after each chunk. ``jit``: compile the chunks'
    log-weights by Pyro's JIT (``ImportanceSampler``); None does so where there are ``JIT_CHUNKS`` chunks or
    more. ``compile``: by inductor instead."""
    sampler = ImportanceSampler(model, guide, args, kwargs, num_samples, chunk_size, memory, jit, compile=compile)
    return sampler.estimate(*args, progress=progress)


COMPILED_TOLERANCE = {"rtol": 1e-4, "atol": 1e-3}  # inductor's log-weights against eager's: float32 rounding, not a bug
JIT_CHUNKS = 100  # chunks from which compiling pays: tracing and its check cost 10–15 chunks, a compiled one saves 15%


class ImportanceSampler:
    """log p(x) ≈ log (1/K) Σₖ p(x, zₖ)/q(zₖ|x), zₖ ~ q(z|x), K = ``num_samples``, for one model/guide pair: set up
    on ``args``, ``kwargs`` and run by ``estimate`` on any arguments of the same shapes (say, one example after
    another, each from its own random stream, as ``pyro-vae evaluate`` runs it). Set up means the contract checked
    once (``inspect_model``), the chunk size chosen once (``measured_chunk_size``, where none is given), and
    with ``jit`` each chunk size's log-weights [chunk, B] traced into one TorchScript graph by
    Pyro's JIT (``pyro.ops.jit.trace``). A graph is traced on a forked random stream, then run beside the eager
    log-weights from the same draws: it is used only where the two agree bit for bit and draw the same numbers,
    so an estimate is the same with the JIT or without; else the chunks stay eager. The check runs on the first
    arguments of each chunk size, so, as with the trainer's JIT, a model whose Python branches depend on the
    data's values (not on the draws, which the check catches) needs ``jit=False``. The arguments must all be
    tensors for the JIT (``kwargs``, fixed here, are not traced). ``jit`` None: on where the ``calls`` estimates
    to come will run ``JIT_CHUNKS`` chunks or more in all.

    ``compile`` True: each chunk size's log-weights are compiled by inductor instead (``StoreCompiled``: fused
    kernels, the parameters read from the param store at every call, torch's own random draws), which takes
    seconds per chunk size and pays on long evaluations. Its fused sums round differently from eager
    PyTorch's, so the check asks the same draws and log-weights within ``COMPILED_TOLERANCE`` of the eager
    ones, not bit for bit: an estimate is then reproducible run to run and process to process, but differs
    from the eager one in float32's last digits. Where tracing fails or the check does not hold, a warning
    says so and the sampler goes on with Pyro's JIT (eager where ``jit`` is False)."""

    @torch.no_grad()
    def __init__(
        self,
        model,
        guide,
        args,
        kwargs,
        num_samples,
        chunk_size=None,
        memory=DEFAULT_MEMORY,
        jit=None,
        calls=1,
        compile=False,
    ):
        if num_samples < 1:
            raise PyroVAEError(f"the number of importance samples must be positive, got {num_samples}")
        self.model, self.guide, self.kwargs, self.num_samples = model, guide, dict(kwargs), num_samples
        with PYRO_LOCK:
            self.layout = inspect_model(model, guide, args, kwargs)
            if chunk_size is None:
                chunk_size = measured_chunk_size(model, guide, args, kwargs, self.layout, num_samples, memory)
        if chunk_size < 1:
            raise PyroVAEError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        tensors = all(isinstance(a, torch.Tensor) for a in args)
        self.jit_fallback = jit is not False and tensors  # where compiling fails: Pyro's JIT, unless ruled out
        if jit is None:
            jit = calls * math.ceil(num_samples / chunk_size) >= JIT_CHUNKS
        if compile and not tensors:
            warnings.warn("compile: the arguments are not all tensors; estimating without compiling", stacklevel=2)
        self.compile = compile and tensors
        self.jit = (jit or compile) and tensors
        self.compiled = {}  # chunk size → the checked graph, or None where it failed its check

    @torch.no_grad()
    def estimate(self, *args, progress=None):
        """``ImportanceEstimate`` [B] of log p(x) for ``args`` (the shapes of the set-up's), K samples drawn from
        the current random stream."""
        with PYRO_LOCK:
            return self._estimate(args, progress)

    def _estimate(self, args, progress):
        num_samples, chunk_size = self.num_samples, self.chunk_size
        tail_size = pareto_tail_size(num_samples) + 1
        lse = lse2 = total = tail = None
        for start in range(0, num_samples, chunk_size):
            log_w = self.log_weights(args, min(chunk_size, num_samples - start)).double()
            chunk = (torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0), log_w.sum(0))
            if lse is None:
                lse, lse2, total, tail = *chunk, log_w
            else:
                lse, lse2, total = torch.logaddexp(lse, chunk[0]), torch.logaddexp(lse2, chunk[1]), total + chunk[2]
                tail = torch.cat([tail, log_w])
            tail = tail.topk(min(tail_size, len(tail)), dim=0).values
            if progress is not None:
                progress(log_w.numel())
        return summarized(lse, lse2, total, tail, num_samples)

    def log_weights(self, args, num_particles):
        """log wₖ [num_particles, B] (``log_weights``), by the checked graph of this chunk size where there is one."""
        if not self.jit:
            return self.eager(args, num_particles)
        if num_particles not in self.compiled:
            return self.checked(args, num_particles)
        graph = self.compiled[num_particles]
        return self.eager(args, num_particles) if graph is None else graph(*args)

    def eager(self, args, num_particles):
        """log wₖ [num_particles, B] by Pyro's handlers, uncompiled (``log_weights``)."""
        with pyro.validation_enabled(False):  # inspect_model checked the model once with validation as set
            return log_weights(self.model, self.guide, args, self.kwargs, num_particles, self.layout)

    def checked(self, args, num_particles):
        """This chunk's log-weights, after building the graph of its size on a forked stream and running it and
        the eager log-weights from the same draws: the graph is kept where it leaves the stream where eager does
        and gives the same log-weights, bit for bit (the JIT) or within ``COMPILED_TOLERANCE`` (``compile``), and
        its log-weights are then this chunk's too, so that an example's estimate does not depend on whether its
        chunk was the one checked (under ``torchrun``, each rank checks on its own first example)."""
        device = next(a.device for a in args)
        try:
            with forked_rng(device), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="`torch.jit.trace` is deprecated", category=FutureWarning)
                graph = self.built(args, num_particles)
        except Exception as error:  # tracing fails in many ways (unsupported ops, Python values): eager it is
            if isinstance(error, PyroVAEError) and error.__context__ is not None:
                error = error.__context__  # the tracer's own error, not log_weights' reading of it as a shape's
            self.stand_aside(num_particles, tracing_failed(error))
            return self.log_weights(args, num_particles)  # the stream untouched: the JIT's check, or eager
        with forked_rng(device):
            traced, traced_state = graph(*args), rng_state(device)
        log_w = self.eager(args, num_particles)
        same_nans = torch.equal(traced.isnan(), log_w.isnan())
        if self.compile:
            same = same_nans and torch.allclose(traced, log_w, **COMPILED_TOLERANCE, equal_nan=True)
        else:  # bit for bit
            same = same_nans and torch.equal(traced.nan_to_num(), log_w.nan_to_num())
        if not torch.equal(rng_state(device), traced_state):
            self.stand_aside(num_particles, "the compiled log-weights draw other numbers than the eager ones")
        elif not same:
            gap = (traced - log_w).abs().masked_fill(traced.isnan() & log_w.isnan(), 0).nan_to_num(math.inf).max()
            self.stand_aside(num_particles, f"the compiled log-weights differ from the eager ones by {gap.item():.3g}")
        else:
            self.compiled[num_particles] = graph
            return traced
        return log_w

    def built(self, args, num_particles):
        """The graph of ``num_particles``' log-weights, built on ``args`` (which draws, as eager does): Pyro's JIT
        trace, or with ``compile`` inductor's ``StoreCompiled``."""
        if self.compile:
            return StoreCompiled(lambda *a: self.eager(a, num_particles), args)
        graph = jit_trace(
            lambda *a: self.eager(a, num_particles), ignore_warnings=True, jit_options={"check_trace": False}
        )
        graph(*args)  # traces
        return graph

    def stand_aside(self, num_particles, problem):
        """The graph of ``num_particles`` failed. With ``compile``: say why and go on with Pyro's JIT (eager where
        ``jit`` was False), each chunk size's graph traced and checked anew; the failed chunk's own log-weights,
        where the check drew them, are the eager ones, which the JIT's equal bit for bit. With the JIT: leave
        chunks of that size eager for good."""
        if self.compile:  # stacklevel: estimate's caller, past no_grad's wrapper
            instead = "with Pyro's JIT" if self.jit_fallback else "without compiling"
            warnings.warn(f"compile: {problem}; estimating {instead} instead (--no-compile skips it)", stacklevel=7)
            self.compile, self.jit = False, self.jit_fallback
            self.compiled.clear()
        else:
            self.compiled[num_particles] = None


def rng_state(device):
    """The random stream's state on ``device`` (the CPU's, or the GPU's), to compare two runs' draws."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def summarized(lse, lse2, total, tail, num_samples):
    """The ``ImportanceEstimate`` of K = ``num_samples`` weights per example from their sums: log Σₖ wₖ,
    log Σₖ wₖ², Σₖ log wₖ (each [B]) and the largest log-weights [M + 1, B] (``pareto_tail_size``)."""
    if lse.isnan().any():
        raise PyroVAEError(
            f"the importance weights of {int(lse.isnan().sum())} of {len(lse)} examples are NaN: a "
            "log-density of the model or guide is undefined at the values drawn or observed"
        )
    ess = torch.exp(2 * lse - lse2)
    stderr = (1 / ess - 1 / num_samples).clamp(min=0).sqrt()
    return ImportanceEstimate(
        log_likelihood=lse - math.log(num_samples),
        elbo=total / num_samples,
        ess=ess,
        stderr=stderr if num_samples > 1 else torch.full_like(stderr, math.nan),
        pareto_k=pareto_k(tail),
        num_samples=num_samples,
    )


def estimate_of_weights(log_w):
    """The ``ImportanceEstimate`` of log-weights [K, B] held at once (K weights per example)."""
    log_w = log_w.double()
    tail = log_w.topk(min(pareto_tail_size(len(log_w)) + 1, len(log_w)), dim=0).values
    return summarized(torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0), log_w.sum(0), tail, len(log_w))


def pareto_tail_size(num_samples):
    """M = ⌈min(0.2 K, 3 √K)⌉, the number of largest weights PSIS fits a generalized Pareto to."""
    return math.ceil(min(0.2 * num_samples, 3 * math.sqrt(num_samples)))


def pareto_k(tail):
    """k̂ [B] from the M + 1 largest log-weights of each example [M + 1, B], as Pyro's
    ``psis_diagnostic`` computes it for one joint weight: Pyro's ``fit_generalized_pareto`` fitted to
    the M largest weights in excess of the (M+1)-th. NaN where fewer than 10 weights form the tail."""
    result = torch.full(tail.shape[1:], math.nan, dtype=torch.float64)
    tail = (tail - tail[0]).cpu()  # sorted descending by topk; scaled so the largest weight is 1
    cutoff = tail[-1].clamp(min=math.log(1e-15))
    for i in range(tail.shape[1]):
        excess = tail[:, i][tail[:, i] > cutoff[i]]
        if len(excess) >= 10:
            result[i] = fit_generalized_pareto(excess.exp() - cutoff[i].exp())[0]
    return result


def traces(model, guide, args, kwargs, enumerate_from=None):
    """(guide trace, model trace replayed on the guide's values), subsample sites pruned. With
    ``enumerate_from`` (a dim), model sites marked for parallel enumeration are enumerated from it."""
    guide_trace = without_deterministic(prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs)))
    if enumerate_from is not None:  # inside replay, so that enumeration sees every site (as TraceEnum_ELBO)
        model = EnumMessenger(first_available_dim=enumerate_from)(model)
    replayed = poutine.replay(model, trace=guide_trace)
    return guide_trace, without_deterministic(prune_subsample_sites(poutine.trace(replayed).get_trace(*args, **kwargs)))


def without_deterministic(trace):
    """``trace`` without its ``pyro.deterministic`` sites: recorded values, no density."""
    for name, site in list(trace.nodes.items()):
        if site["type"] == "sample" and site["infer"].get("_deterministic"):
            trace.remove_node(name)
    return trace


def sample_sites(trace):
    return [site for site in trace.nodes.values() if site["type"] == "sample"]


def is_auxiliary(site):
    return bool(site["infer"].get("is_auxiliary"))


def point_mass(fn):
    """Whether ``fn`` is a Delta, through Independent, masked and expanded wrappers."""
    while not isinstance(fn, dist.Delta) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def inspect_model(model, guide, args, kwargs):
    """The ``Layout`` of one plain run of guide and model, after checking the contract (module docstring)."""
    try:
        guide_trace, model_trace = traces(model, guide, args, kwargs)
    except ZeroDivisionError as error:  # pyro.plate's refusal of size 0
        raise PyroVAEError(f"the batch holds no examples ({error}); pass one example or more") from None
    except ValueError as error:  # Pyro's shape errors come with whole tables of trace shapes
        first_line = str(error).partition("\n")[0]
        if "Shape mismatch inside plate" not in first_line:
            raise
        raise PyroVAEError(
            f"{first_line}: a site's per-example dims must be declared with .to_event(n), so that "
            'its batch shape holds only its plates (pyro.plate("data", B) and those inside)'
        ) from None
    dims, data_frames = [1], set()
    for role, trace in (("guide", guide_trace), ("model", model_trace)):
        for site in sample_sites(trace):
            data = check_site(role, site, guide)
            dims += [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
            data_frames.add((data.dim, data.size))
    if len(data_frames) != 1:
        raise PyroVAEError(
            'the model and guide must put their per-example sites inside one pyro.plate("data", B) at one dim'
        )
    ((data_dim, data_size),) = data_frames
    if data_size == 0:
        raise PyroVAEError('the batch holds no examples (pyro.plate("data", 0)); pass one example or more')
    check_sites_match(guide_trace, model_trace)
    check_auxiliary(guide, args, kwargs, guide_trace)
    if is_validation_enabled():
        check_support(model_trace)
    check_finite_observations(model_trace)
    return Layout(plate_nesting=max(dims), data_dim=data_dim, data_size=data_size)


def check_site(role, site, guide=None):
    """The "data" plate frame of one sample site, after checking that the site lies in it (vectorized),
    has an unscaled log-density, no batch dimensions outside its plates, and the data plate's dim
    among the batch dims of its value (an event of ``.to_event`` must not swallow the examples)."""
    name, frames = site["name"], site["cond_indep_stack"]
    data = next((f for f in frames if f.name == DATA), None)
    if data is not None and not data.vectorized:
        raise PyroVAEError(
            f'{role} site {name!r} is in a sequential pyro.plate("data"); use it as a context manager, '
            f'with pyro.plate("data", B): …, so that all examples are scored at once'
        )
    if data is None:
        plates = sorted({f.name for f in frames}) or "none"
        hint = (
            " (an AutoContinuous guide draws all latents jointly; AutoNormal keeps them per example)"
            if role == "guide" and isinstance(guide, AutoContinuous)
            else ""
        )
        raise PyroVAEError(
            f'{role} site {name!r} lies outside pyro.plate("data", B) (its plates: {plates}): a site '
            f"shared by all examples has no per-example weight{hint}; put every sample site inside the data plate"
        )
    if not unit_scale(site["scale"]):
        raise PyroVAEError(
            f"{role} site {name!r} has a scaled log-density ({scale_text(site['scale'])}: poutine.scale, a β "
            f"weight or a subsampled plate); log p(x) needs the unscaled model: call it with β = 1 and the full plate"
        )
    plate_dims = {f.dim for f in frames if f.vectorized}
    batch_shape = site["fn"].batch_shape
    if any(size != 1 and -i not in plate_dims for i, size in enumerate(reversed(batch_shape), start=1)):
        raise PyroVAEError(
            f"{role} site {name!r} has batch dimensions outside its plates (batch shape {tuple(batch_shape)}); "
            "declare them with .to_event(...)"
        )
    event_shape, value = site["fn"].event_shape, site["value"]
    value_batch = value.shape[: max(0, value.dim() - len(event_shape))]
    if len(value_batch) < -data.dim or value_batch[data.dim] != data.size:
        raise PyroVAEError(
            f"{role} site {name!r} has event shape {tuple(event_shape)}, which holds the {data.size} examples of "
            f'pyro.plate("data") (its value has shape {tuple(value.shape)}): each example would be scored with the '
            "whole batch; declare only the per-example dims with .to_event(n)"
        )
    return data


def unit_scale(scale):
    """Whether a site's scale is exactly 1: the number, or a tensor of ones."""
    if isinstance(scale, torch.Tensor):
        return bool((scale == 1).all())
    return isinstance(scale, (int, float)) and scale == 1


def scale_text(scale):
    return f"scale {scale:g}" if isinstance(scale, (int, float)) else f"scale tensor of shape {tuple(scale.shape)}"


def check_sites_match(guide_trace, model_trace):
    """Every model latent sampled by the guide or marked for parallel enumeration; every guide site in
    the model or auxiliary; no point-mass guide without an auxiliary site behind it."""
    guide_sites = {site["name"]: site for site in sample_sites(guide_trace)}
    model_sites = {site["name"]: site for site in sample_sites(model_trace)}
    for name, site in model_sites.items():
        if site["is_observed"] or name in guide_sites:
            continue
        how = site["infer"].get("enumerate")
        if how == "parallel" and site["fn"].has_enumerate_support:
            continue
        reason = (
            "is marked for sequential enumeration, which is not supported; mark it 'parallel'"
            if how == "sequential"
            else "has no finite support to enumerate"
            if how == "parallel"
            else "would be drawn from the prior by replay, a biased estimate; sample it in the guide, or mark a "
            "discrete site for enumeration with infer={'enumerate': 'parallel'}"
        )
        raise PyroVAEError(f"model latent {name!r} is not sampled by the guide and {reason}")
    for name, site in guide_sites.items():
        if name not in model_sites and not is_auxiliary(site):
            raise PyroVAEError(
                f"guide site {name!r} has no site of that name in the model; mark it infer={{'is_auxiliary': True}} or rename it"
            )
        if name in model_sites and model_sites[name]["is_observed"]:
            raise PyroVAEError(f"guide site {name!r} is observed in the model; the guide samples latents only")
        inner, outer = support_of(site["fn"]), support_of(model_sites[name]["fn"]) if name in model_sites else None
        if outer is not None and not within(inner, outer):
            raise PyroVAEError(
                f"guide site {name!r} draws from {interval_text(inner, True)}, wider than the model's support "
                f"{interval_text(outer, False)}: draws outside it have no model density; choose a guide "
                "distribution on the model's support (a LogNormal for a positive latent, a Beta for one in [0, 1])"
            )
    if not any(is_auxiliary(site) for site in guide_sites.values()):
        for name, site in guide_sites.items():
            if point_mass(site["fn"]):
                raise point_mass_error(name)


def point_mass_error(name):
    return PyroVAEError(
        f"guide site {name!r} is a point mass (Delta) with no random site behind it (an AutoDelta or MAP "
        "guide): p(x, ẑ)/q(ẑ) is no importance weight; use a guide with a density, such as AutoNormal"
    )


def check_auxiliary(guide, args, kwargs, guide_trace):
    """Where the guide draws auxiliary sites u, refuse a weight that would not be p(x, z)/q(z): the guide
    is run again with every u drawn anew and every other site held at its value. A point mass z = f(u)
    must move (else it is a point mass with nothing behind it); a site with a density must keep its
    log q(z|u) (else q(z) = ∫ q(u) q(z|u) du, which the weight cannot divide by)."""
    sites = sample_sites(guide_trace)
    auxiliary = [site for site in sites if is_auxiliary(site)]
    if not auxiliary:
        return
    others = [site for site in sites if not is_auxiliary(site)]
    redrawn = {site["name"]: site["fn"].sample() for site in auxiliary}
    held = {site["name"]: site["value"] for site in others if not point_mass(site["fn"])}
    again = poutine.trace(poutine.condition(guide, data={**redrawn, **held})).get_trace(*args, **kwargs)
    for site in others:
        moved = again.nodes[site["name"]]
        if point_mass(site["fn"]):
            if torch.equal(moved["value"], site["value"]):
                raise point_mass_error(site["name"])
        elif not torch.allclose(
            moved["fn"].log_prob(site["value"]), site["fn"].log_prob(site["value"]), equal_nan=True
        ):
            name = auxiliary[0]["name"]
            raise PyroVAEError(
                f"guide site {site['name']!r} is drawn given the auxiliary site {name!r}: the importance weight would "
                f"divide by q({name}) q({site['name']}|{name}), not by the marginal q({site['name']}), and overstate "
                f"log p(x); make {site['name']!r} a function of {name!r} (a Delta with its log-density) or drop {name!r}"
            )


def support_of(fn):
    """A distribution's elementwise support (``independent`` constraints unwrapped)."""
    support = fn.support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return support


def within(inner, outer):
    """Whether the support ``inner`` lies within ``outer``, where both are intervals of the real line
    (the real line, half-lines, bounded intervals; elementwise bounds taken at their widest for ``inner``
    and their narrowest for ``outer``); other supports (discrete, simplex, …) are taken to fit."""
    a, b = interval(inner, widest=True), interval(outer, widest=False)
    if a is None or b is None:
        return True
    (low_a, open_a, high_a, open_high_a), (low_b, open_b, high_b, open_high_b) = a, b
    above = low_a > low_b or (low_a == low_b and (open_a or not open_b))
    below = high_a < high_b or (high_a == high_b and (open_high_a or not open_high_b))
    return above and below


def interval_text(support, widest):
    """A support on one line: "[0, inf)", "(0, 1]"."""
    low, open_low, high, open_high = interval(support, widest)
    return f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def base_name(fn):
    """The name of a distribution under its Independent, masked and expanded wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__


def interval(support, widest):
    """(low, low open, high, high open) of a support on the real line, or None for any other; bounds that
    differ between elements are reduced to the widest (or narrowest) interval they span."""
    c = torch.distributions.constraints

    def bound(value, low):
        value = torch.as_tensor(value, dtype=torch.float64)
        return (value.min() if low == widest else value.max()).item()

    if isinstance(support, c._Real):
        return (-math.inf, True, math.inf, True)
    if isinstance(support, c._GreaterThan):
        return (bound(support.lower_bound, True), True, math.inf, True)
    if isinstance(support, c._GreaterThanEq):
        return (bound(support.lower_bound, True), False, math.inf, True)
    if isinstance(support, c._LessThan):
        return (-math.inf, True, bound(support.upper_bound, False), True)
    if isinstance(support, c._HalfOpenInterval):
        return (bound(support.lower_bound, True), False, bound(support.upper_bound, False), True)
    if isinstance(support, c._Interval):
        return (bound(support.lower_bound, True), False, bound(support.upper_bound, False), False)
    return None


def check_finite_observations(model_trace):
    """Refuse observed values whose log-density is NaN or infinite (a Beta at exactly 0 or 1): the estimate
    would be NaN or ±inf without a word."""
    for site in sample_sites(model_trace):
        if not site["is_observed"]:
            continue
        log_p = site["fn"].log_prob(site["value"])
        bad = ~torch.isfinite(log_p)
        if bad.any():
            value = log_p[bad].flatten()[0].item()
            raise PyroVAEError(
                f"observed site {site['name']!r} has a log-density of {value} for {int(bad.sum())} of {log_p.numel()} "
                f"examples: values where its {base_name(site['fn'])} has no finite density "
                "(a Beta at exactly 0 or 1, say); move the data inside the support, e.g. x·(1 − 2ε) + ε"
            )


def check_support(model_trace):
    """Refuse observed values outside their distribution's support (e.g. grey levels for a Bernoulli)."""
    for site in sample_sites(model_trace):
        if not site["is_observed"]:
            continue
        support = site["fn"].support
        while hasattr(support, "base_constraint"):  # independent(...) → its elementwise constraint
            support = support.base_constraint
        outside = site["value"][~support.check(site["value"])]
        if outside.numel():
            raise PyroVAEError(
                f"observed site {site['name']!r} has {outside.numel()} values outside the support of its "
                f"{type(site['fn']).__name__} ({support}), e.g. {outside.flatten()[0].item():.4g}; "
                "observe the data in the likelihood's own space (a Bernoulli needs 0/1 values)"
            )


def log_weights(model, guide, args, kwargs, num_particles, layout):
    """log wₖ = log p(x, zₖ) − log q(zₖ|x) [num_particles, B], zₖ drawn by the guide under an outer plate;
    enumerated model sites are summed out of log p(x, zₖ)."""
    particles = pyro.plate(PARTICLES, num_particles, dim=-layout.plate_nesting - 1)
    try:
        with particles:
            guide_trace, model_trace = traces(model, guide, args, kwargs, enumerate_from=-layout.plate_nesting - 2)
    except (RuntimeError, ValueError) as error:  # shapes written for one draw: Pyro appends whole trace tables
        if isinstance(error, torch.OutOfMemoryError):
            raise
        raise PyroVAEError(
            f"the model or guide fails when its K samples are drawn at once under an outer plate "
            f"({str(error).partition(chr(10))[0]}); write shapes that broadcast from the right: a leading "
            "dim may be added to every sample (use broadcasting or expand_as, not expand(x.shape) or view(B, …))"
        ) from None
    return per_example(model_trace, layout, num_particles) - per_example(guide_trace, layout, num_particles)


def per_example(trace, layout, num_particles):
    """Σ of the trace's log-densities [K, B]: plates inside "data" summed (a product of densities),
    enumerated sites summed out (``pyro.ops.contract``, the message passing of TraceEnum_ELBO)."""
    if not sample_sites(trace):  # a guide with nothing to sample (every model latent enumerated)
        return torch.zeros(num_particles, layout.data_size)
    trace.compute_log_prob()
    trace.pack_tensors()
    tree, sum_dims = OrderedDict(), set()
    for site in sample_sites(trace):
        ordinal = frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
        tree.setdefault(ordinal, []).append(site["packed"]["log_prob"])
        if "_enumerate_symbol" in site["infer"]:
            sum_dims.add(site["infer"]["_enumerate_symbol"])
    sizes = {trace.plate_to_symbol[PARTICLES]: num_particles, trace.plate_to_symbol[DATA]: layout.data_size}
    ring = LogRing(dim_to_size=sizes)
    total = contract_to_tensor(tree, sum_dims, target_ordinal=frozenset(sizes), ring=ring)
    total = packed.unpack(total, trace.symbol_to_dim)
    total = total.reshape((1,) * (layout.plate_nesting + 1 - total.dim()) + total.shape)
    keep = (0, layout.plate_nesting + 1 + layout.data_dim)  # positions of the particle and data dims
    other = [d for d in range(total.dim()) if d not in keep]
    return total.sum(other) if other else total


def chunk_memory(model, guide, args, kwargs, layout):
    """(fixed, per_sample, device): a chunk of n samples allocates fixed + n · per_sample bytes on
    ``device``, whatever the networks, measured from the bytes that trial chunks of 1 and 2 samples
    allocate. The trial draws from a forked random stream, so the estimate's draws do not depend on it."""
    device = next((t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    with forked_rng(device), pyro.validation_enabled(False):
        fixed, per_sample = allocation_line(lambda n: log_weights(model, guide, args, kwargs, n, layout))
    return fixed, per_sample, device


def measured_chunk_size(model, guide, args, kwargs, layout, num_samples, memory=DEFAULT_MEMORY):
    """How many samples fit in ``memory`` bytes (1 ≤ size ≤ num_samples), by ``chunk_memory``. On the CPU
    the chunk also stays within ``CPU_CHUNK_BYTES``, where it is fastest."""
    fixed, per_sample, device = chunk_memory(model, guide, args, kwargs, layout)
    if device.type == "cpu":
        memory = min(memory, CPU_CHUNK_BYTES)
    return max(1, min(num_samples, (memory - fixed) // per_sample))


def check_chunk_size(model, guide, args, kwargs, layout, chunk_size, num_samples):
    """Refuse a ``chunk_size`` whose chunks (of min(chunk_size, num_samples) samples) would not fit in
    the device's free memory, by ``chunk_memory``: the process would be killed, not told."""
    fixed, per_sample, device = chunk_memory(model, guide, args, kwargs, layout)
    size = min(chunk_size, num_samples)
    need, free = fixed + size * per_sample, free_memory(device)
    if need > free:
        raise PyroVAEError(
            f"a chunk of {size} samples needs {need / 2**30:.1f} GiB, more than "
            f"the {free / 2**30:.1f} GiB free on {device}; choose a smaller chunk size (without one, "
            "the evaluator picks one that fits)"
        )
