"""``pyro-vae gradvar RUN``: how noisy the ELBO's gradient is with and without the reparameterization trick.

At a trained run's parameters, on a fixed batch of test examples, the gradient of −ELBO per example
(``Trace_ELBO``, one sample) is drawn many times with the guide's z reparameterized, z = loc + scale·ε,
and many times without (``model.reparameterize = false``: Pyro's ELBO then differentiates log q(z|x),
the score-function estimator). Both estimate the same gradient; per parameter group (encoder,
decoder, …) the report gives the mean over parameters of each estimator's variance across draws,
their ratio, and the mean signal-to-noise ratio |E[g]| / sd(g).
"""

import json
import math
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

from ..errors import PyroVAEError
from ..progress import bar as progress_bar
from ..runs.files import atomic_write, check_writable
from ..runs.folders import reading
from .evaluation import keep_earlier, run_examples

SETTINGS = {"draws": "d", "examples": "n"}  # what names a kept earlier gradvar.json

ESTIMATORS = {"reparameterized": True, "score_function": False}


def gradient_draws(vae, args, draws, seed=0):
    """{group: gradients [draws, parameters of the group]} of −ELBO per example on ``args``, one z each draw."""
    groups = {
        name: [p for p in module.parameters() if p.requires_grad]
        for name, module in (
            ("encoder", vae.encoder),
            ("up", vae.up),
            ("decoder", vae.decoder),
            ("down", vae.down),
            ("prior", vae.prior),
            ("likelihood", vae.likelihood),
        )
    }
    groups = {name: params for name, params in groups.items() if params}
    elbo, n = Trace_ELBO(max_plate_nesting=1), len(args[0])
    flat = [p for params in groups.values() for p in params]
    out = {name: [] for name in groups}
    torch.manual_seed(seed)
    with pyro.validation_enabled(False):
        for _ in range(draws):
            grads = torch.autograd.grad(
                elbo.differentiable_loss(vae.model, vae.guide, *args) / n, flat, allow_unused=True
            )
            grads = iter(torch.zeros_like(p) if g is None else g for g, p in zip(grads, flat))
            for name, params in groups.items():
                out[name].append(torch.cat([next(grads).flatten() for _ in params]))
    return {name: torch.stack(g).double() for name, g in out.items()}


def summarize(draws):
    """Mean over parameters of the variance across draws, and of the signal-to-noise ratio |mean| / sd."""
    mean, var = draws.mean(0), draws.var(0)
    snr = mean.abs() / var.sqrt().clamp(min=1e-30)
    return {"variance": var.mean().item(), "snr": snr[var > 0].mean().item() if (var > 0).any() else math.inf}


def gradient_variance(run_dir, *, draws=200, examples=100, device="auto", progress=True, seed=0):
    """{group: {estimator: {variance, snr}, "variance_ratio": score function / reparameterized}} at the run's
    parameters on its first ``examples`` test examples; also written to RUN/gradvar.json, where an earlier one
    made with other draws or examples is kept as gradvar-d<draws>-n<examples>.json (the returned "kept")."""
    if draws < 2 or examples < 1:
        raise PyroVAEError(f"gradvar needs at least 2 draws and 1 example, got {draws} and {examples}")
    with reading(run_dir):
        return _gradient_variance(Path(run_dir), draws, examples, device, progress, seed)


def _gradient_variance(run_dir, draws, examples, device, progress, seed):
    _, vae, x, y = run_examples(run_dir, limit=examples, device=device)
    if not vae.latent_sites:
        raise PyroVAEError(
            f"{run_dir} has no latent (model.z_dim = 0), so no draw of z whose gradient estimators could differ"
        )
    check_writable(run_dir)
    args = (x, y) if vae.spec.conditional else (x,)
    results = {}
    for estimator, reparameterize in progress_bar(ESTIMATORS.items(), desc="gradient draws", enabled=progress):
        vae.reparameterize = reparameterize
        for name, g in gradient_draws(vae, args, draws, seed).items():
            results.setdefault(name, {})[estimator] = summarize(g)
    for stats in results.values():
        stats["variance_ratio"] = stats["score_function"]["variance"] / stats["reparameterized"]["variance"]
    summary = {"draws": draws, "examples": len(x), "groups": results, "checkpoint": vae.checkpoint}
    kept = keep_earlier(run_dir, [("gradvar", ".json")], summary, SETTINGS)
    atomic_write(run_dir / "gradvar.json", json.dumps(summary, indent=2) + "\n")
    return {**summary, "kept": kept}
