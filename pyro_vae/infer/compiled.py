"""``Trace_ELBO`` compiled by PyTorch's inductor into fused kernels, one graph per shape of the arguments.

Pyro's JIT (``JitTrace_ELBO``) traces the loss into TorchScript, whose interpreter and differentiable
graphs cost a step more fixed time than eager PyTorch spends on the same arithmetic. Here the same loss —
the ELBO and its surrogate from Pyro's model and guide traces, exactly as ``JitTrace_ELBO`` forms them —
is traced once into an ATen graph (``make_fx``) with the param store's parameters as inputs, and that
graph, forward and backward, is compiled by inductor. Its random draws are torch's own
(``fallback_random``), so a compiled step draws what an eager one draws from the same stream.

A graph holds its shapes and its Python numbers: it is built anew for each model/guide pair, shape and
dtype of the tensor arguments, keyword arguments and autocast precision, and it is right only for
models whose structure and Python numbers do not depend on tensor values. A model that reads a tensor's
value into Python fails to trace; the trainer checks the compiled loss and gradient against the eager
ones before it uses them (``Trainer.checked_jit``).

``StoreCompiled`` is the construction itself, for any function of tensors that reads the param store: the
ELBO here, the importance sampler's log-weights with ``compile=True`` (``importance.ImportanceSampler``).
"""

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx
from torch.fx.experimental.proxy_tensor import make_fx


class CompiledTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` whose losses run a compiled graph: its value the −ELBO, its gradient the surrogate
    loss's (with the score-function terms of guide sites that are not reparameterized), both averaged over
    ``num_particles``. Used as Pyro's ELBOs are: in ``SVI``, or in its ``nn.Module`` form (``elbo(model,
    guide)``) with a torch optimizer, as the trainer uses it (``objective.compile = true``). The first call
    for new shapes builds their graph, which takes seconds."""

    def __init__(self, **options):
        super().__init__(**options)
        self.graphs = {}  # key → its StoreCompiled loss

    def loss_and_surrogate_loss(self, model, guide, args, kwargs):
        """(−ELBO, −surrogate ELBO) as tensors, from Pyro's traces: what ``JitTrace_ELBO`` traces."""
        loss = surrogate_loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = sum(site["log_prob_sum"] for site in model_trace.nodes.values() if site["type"] == "sample")
            surrogate_elbo, log_r = elbo, None
            for site in guide_trace.nodes.values():
                if site["type"] != "sample":
                    continue
                _, score_function_term, entropy_term = site["score_parts"]
                elbo = elbo - site["log_prob_sum"]
                if not is_identically_zero(entropy_term):
                    surrogate_elbo = surrogate_elbo - entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    log_r = _compute_log_r(model_trace, guide_trace) if log_r is None else log_r
                    surrogate_elbo = (
                        surrogate_elbo + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
                    )
            loss = loss - elbo / self.num_particles
            surrogate_loss = surrogate_loss - surrogate_elbo / self.num_particles
        return loss, surrogate_loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The −ELBO (a 0-dim tensor) whose gradient is the surrogate loss's, from the graph compiled for
        these arguments (built on first use: traced, then compiled, which takes seconds). The parameters
        are read from the param store directly, not through ``pyro.param``: what the ``nn.Module`` form
        (``ELBOModule``) and a torch optimizer need, at no handler's cost."""
        return self.graph(model, guide, args, kwargs)(*[a for a in args if a is not None])

    def loss(self, model, guide, *args, **kwargs):
        """The −ELBO as a float, from the compiled graph without a gradient."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """``SVI.step``'s call: the −ELBO as a float, its gradient accumulated into the parameters, which are
        read through ``pyro.param`` so that SVI's param capture sees them and its optimizer steps them."""
        for name in self.graph(model, guide, args, kwargs).names:
            pyro.param(name)
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    def graph(self, model, guide, args, kwargs):
        """The ``StoreCompiled`` loss of this pair and these arguments (the tensors among them), built on first use."""
        key = (
            function_key(model),
            function_key(guide),
            graph_key(args),
            tuple(sorted(kwargs.items())),
            autocast_key(args),
        )
        if key not in self.graphs:

            def loss(*tensors):
                remaining = iter(tensors)
                call_args = [None if a is None else next(remaining) for a in args]
                value, surrogate = self.loss_and_surrogate_loss(model, guide, call_args, kwargs)
                return surrogate + (value - surrogate).detach()

            # traced with gradients on, whatever the caller's mode: one graph serves calls with and without them
            with torch.enable_grad(), pyro.validation_enabled(False):
                self.graphs[key] = StoreCompiled(loss, [a for a in args if a is not None])
        return self.graphs[key]


class StoreCompiled:
    """``fn`` compiled by inductor for arguments of the shapes of ``args``: the param store's parameters that
    ``fn`` reads become inputs of its graph, read from the store at every call (so it follows their updates),
    and its random draws are torch's own (``fallback_random``): a call draws what ``fn`` draws eagerly from the
    same stream. Built under the caller's grad mode: with gradients on, the backward is compiled too.
    Building runs ``fn`` twice (once to find the parameters, once to record its ATen graph with ``make_fx``)
    and takes seconds; ``names`` are the parameters' names in the store."""

    def __init__(self, fn, args):
        with poutine.block(), poutine.trace(param_only=True) as capture:
            fn(*args)
        self.names = sorted(capture.trace.nodes)
        params = self.params()

        def with_params(*params_and_args):  # the params arrive as the very tensors fn reads from the store
            return fn(*params_and_args[len(params) :])

        with poutine.block():
            graph = make_fx(with_params, pre_dispatch=True)(*params, *args)
        with inductor_config.patch(fallback_random=True):  # torch's own draws: the eager stream
            self.compiled = compile_fx(graph, [*params, *args])

    def params(self):
        """The parameters named ``names``, as the param store holds them now (unconstrained)."""
        store = dict(pyro.get_param_store().named_parameters())
        return [store[name] for name in self.names]

    def __call__(self, *args):
        """``fn(*args)`` by the compiled graph."""
        return self.compiled(*self.params(), *args)


def tracing_failed(error):
    """One line for a graph that could not be built: "tracing failed (its type: the first line of its message)"
    (Pyro appends whole trace-shape tables to its messages)."""
    first_line = str(error).partition("\n")[0]
    return f"tracing failed ({type(error).__name__}: {first_line})"


def function_key(fn):
    """What identifies ``fn``: a bound method by its function and its object (``vae.model`` is a new
    method object at every access), anything else by itself."""
    return id(getattr(fn, "__func__", fn)), id(getattr(fn, "__self__", None))


def graph_key(args):
    """The shapes, dtypes and devices of ``args`` (None kept as None): what a compiled graph holds."""
    return tuple(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args)


def autocast_key(args):
    """The autocast precision in force for the device of the tensors in ``args`` (None where autocast is off)."""
    tensors = [a for a in args if a is not None]
    if not tensors:
        return None
    device = tensors[0].device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
