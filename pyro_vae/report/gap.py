"""``pyro-vae gap``: where the bound's slack comes from, per test example (Cremer, Li & Duvenaud 2018,
"Inference Suboptimality in Variational Autoencoders").

For each example x, with the decoder fixed:

- L[q]: the ELBO of the encoder's q(z|x);
- L[q*]: the ELBO of q*, the best q of the same family for x alone (per-example SVI from the encoder's output);
- L[q*_flow]: the same with planar flow steps of x's own on top of the family (a flow posterior);
- log p̂(x): the largest of three importance-sampled estimates, with q, q* and q*_flow as proposals
  (each a stochastic lower bound on log p(x)).

The inference gap log p(x) − L[q] splits into the approximation gap log p(x) − L[q*] (the family's) and
the amortization gap L[q*] − L[q] (the encoder's); the flow's gaps are measured from L[q*_flow] alike.
"""

import json
import math
import time
from pathlib import Path

import torch

from ..infer.importance import importance_sample
from ..infer.local import LocalPosterior
from ..progress import bar as progress_bar
from ..runs.files import atomic_write, check_writable
from ..runs.folders import reading
from . import plots
from .evaluation import BLOCK, BLOCK_STREAMS, example_seed, keep_earlier, run_examples, write_examples

GAP_SETTINGS = {"num_examples": "n", "num_samples": "k", "steps": "steps", "flow_steps": "flow", "seed": "seed"}
GAP_FILES = [("gap", ".json"), ("gap", "_examples.csv"), ("gap", ".png")]
COLUMNS = (
    "log_likelihood",
    "elbo_encoder",
    "elbo_fitted",
    "elbo_flow",
    "log_likelihood_encoder",
    "log_likelihood_fitted",
    "log_likelihood_flow",
)


def gap_run(
    run_dir,
    *,
    limit=100,
    num_samples=1000,
    steps=500,
    flow_steps=8,
    lr=0.01,
    num_particles=8,
    seed=0,
    device="auto",
    progress=True,
):
    """The inference gap of the first ``limit`` test examples of a run (a fixed, class-balanced part), split
    as the module says; writes gap.json, gap_examples.csv and gap.png into the run folder and returns the
    summary (gap.json's contents).

    Each ELBO and log p̂(x) is estimated from K = ``num_samples`` draws of its q; each per-example fit takes
    ``steps`` Adam steps (rate ``lr`` decaying tenfold) on ELBOs of ``num_particles`` draws; the flow has
    ``flow_steps`` planar steps. Examples are fitted in blocks of ``BLOCK``, each drawing from a stream of
    its own seeded by (``seed``, block). The run's shared lock is held throughout."""
    with reading(run_dir):
        return _gap_run(Path(run_dir), limit, num_samples, steps, flow_steps, lr, num_particles, seed, device, progress)


def _gap_run(run_dir, limit, num_samples, steps, flow_steps, lr, num_particles, seed, device, progress):
    config, vae, x, y = run_examples(run_dir, "test", limit, device)
    check_writable(run_dir)
    labels = y if vae.spec.conditional else None

    def args(start, stop):
        return (x[start:stop],) if labels is None else (x[start:stop], labels[start:stop])

    vae.posterior_params(*args(0, 1))  # refuses a model without one latent to fit
    started = time.perf_counter()
    columns = {name: [] for name in COLUMNS}
    blocks = range(0, len(x), BLOCK)
    with progress_bar(total=len(blocks) * 2 * steps, desc="per-example fits", unit="step", enabled=progress) as bar:
        for start in blocks:
            block = args(start, min(start + BLOCK, len(x)))
            torch.manual_seed(example_seed(seed, BLOCK_STREAMS + start // BLOCK))
            params = vae.posterior_params(*block)
            fitted = [LocalPosterior(vae.encoder.head, params, flow) for flow in (0, flow_steps)]
            for local in fitted:
                local.fit(
                    vae.model, *block, steps=steps, lr=lr, num_particles=num_particles, held=[vae], progress=bar.update
                )
            estimates = [
                importance_sample(vae.model, guide, *block, num_samples=num_samples)
                for guide in (vae.guide, *(local.guide for local in fitted))
            ]
            for name, estimate in zip(("encoder", "fitted", "flow"), estimates):
                columns[f"elbo_{name}"].append(estimate.elbo.cpu())
                columns[f"log_likelihood_{name}"].append(estimate.log_likelihood.cpu())
            columns["log_likelihood"].append(torch.stack([e.log_likelihood for e in estimates]).amax(0).cpu())
    columns = {name: torch.cat(values) for name, values in columns.items()}
    columns["approximation_gap"] = columns["log_likelihood"] - columns["elbo_fitted"]
    columns["amortization_gap"] = columns["elbo_fitted"] - columns["elbo_encoder"]
    columns["approximation_gap_flow"] = columns["log_likelihood"] - columns["elbo_flow"]
    columns["amortization_gap_flow"] = columns["elbo_flow"] - columns["elbo_encoder"]
    n = len(x)
    summary = {
        "num_examples": n,
        "num_samples": num_samples,
        "steps": steps,
        "flow_steps": flow_steps,
        "lr": lr,
        "num_particles": num_particles,
        "seed": seed,
        "posterior": config.posterior.name,
        "means": {name: values.mean().item() for name, values in columns.items()},
        "stderrs": {name: (values.std().item() / math.sqrt(n) if n > 1 else None) for name, values in columns.items()},
        "seconds": time.perf_counter() - started,
        "checkpoint": vae.checkpoint,
    }
    kept = keep_earlier(run_dir, GAP_FILES, summary, GAP_SETTINGS)
    atomic_write(run_dir / "gap.json", json.dumps(summary, indent=2) + "\n")
    write_examples(run_dir / "gap_examples.csv", y.cpu(), columns)
    plots.inference_gaps(summary["means"], columns, config.posterior.name, run_dir / "gap.png")
    summary["files"], summary["kept"] = ["".join(name) for name in GAP_FILES], kept
    return summary
