"""``pyro-vae evaluate``: a trained run's log p(x) (or log p(x|y)) by importance sampling, its
bound against K, and the CVAE's generative classifier; results go to the run folder."""
import csv
import io
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import plots
from .classifier import class_log_posterior
from .datasets import load_data, observed_split
from .errors import PyroVAEError
from .evaluate import importance_sample
from .files import atomic_write
from .runs import load_checkpoint, load_run

CURVE_KS = (1, 10, 100, 1000, 5000)
CURVE_EXAMPLES = 100


def run_examples(run_dir, split="test", limit=None, device="auto"):
    """(config, VAE, x, y) of a run: its first ``limit`` examples of ``split``, observed as in training."""
    config, vae = load_run(run_dir, device)
    x, y = observed_split(load_data(config.data), vae.likelihood, split, vae.device)
    return config, vae, x[:limit], y[:limit]


def evaluate_run(run_dir, *, num_samples=5000, split="test", limit=None, batch_size=100, chunk_size=None,
                 device="auto", progress=True):
    """Estimate log p(x) of every example of ``split``; writes eval.json, eval_examples.csv and
    eval_vs_k.png into the run folder and returns the summary (the contents of eval.json)."""
    if limit is not None and limit < 1:
        raise PyroVAEError(f"--limit must be positive, got {limit}")
    if batch_size < 1:
        raise PyroVAEError(f"--batch-size must be positive, got {batch_size}")
    run_dir = Path(run_dir)
    config, vae, x, y = run_examples(run_dir, split, limit, device)
    labels = y if vae.spec.conditional else None
    started = time.perf_counter()
    results = []
    for start in tqdm(range(0, len(x), batch_size), desc=f"log p(x), K={num_samples}", unit="batch", disable=not progress):
        args = (x[start : start + batch_size],) + (() if labels is None else (labels[start : start + batch_size],))
        results.append(importance_sample(vae.model, vae.guide, *args, num_samples=num_samples, chunk_size=chunk_size))
    seconds = time.perf_counter() - started
    columns = {name: torch.cat([getattr(r, name) for r in results]).cpu() for name in ("log_likelihood", "elbo", "ess", "stderr")}
    n, dims = len(x), math.prod(vae.spec.image_shape)
    mean_ll = columns["log_likelihood"].mean().item()
    summary = {
        "split": split,
        "num_examples": n,
        "num_samples": num_samples,
        "conditional": vae.spec.conditional,
        "elbo": columns["elbo"].mean().item(),
        "log_likelihood": mean_ll,
        "log_likelihood_stderr": (columns["stderr"].square().sum().sqrt() / n).item(),
        "log_likelihood_std": columns["log_likelihood"].std().item() if n > 1 else 0.0,
        "mean_ess": columns["ess"].mean().item(),
        "bits_per_dim": -mean_ll / (dims * math.log(2)) if vae.likelihood.discrete else None,
        "seconds": seconds,
        "likelihood": config.likelihood.name,
        "prior": config.prior.name,
    }
    atomic_write(run_dir / "eval.json", json.dumps(summary, indent=2) + "\n")
    write_examples(run_dir / "eval_examples.csv", y.cpu(), columns)
    curve(vae, x[:CURVE_EXAMPLES], None if labels is None else labels[:CURVE_EXAMPLES], num_samples, run_dir / "eval_vs_k.png")
    return summary


def write_examples(path, labels, columns):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "label", *columns])
    for i, row in enumerate(zip(labels.tolist(), *(c.tolist() for c in columns.values()))):
        writer.writerow([i, *row])
    atomic_write(path, buffer.getvalue())


def curve(vae, x, labels, num_samples, path):
    """Plot mean log p̂(x) over ``x`` against K ∈ {1, 10, …, num_samples}."""
    ks = sorted({k for k in CURVE_KS if k < num_samples} | {num_samples})
    args = (x,) if labels is None else (x, labels)
    means, stderrs = [], []
    for k in ks:
        estimate = importance_sample(vae.model, vae.guide, *args, num_samples=k)
        means.append(estimate.log_likelihood.mean().item())
        stderrs.append((estimate.stderr.square().sum().sqrt() / len(x)).item())
    plots.bound_vs_k(ks, means, stderrs, len(x), path)


def classify_run(run_dir, *, num_samples=100, split="test", limit=None, batch_size=100, device="auto", progress=True):
    """Accuracy of the generative classifier argmax_y p(y|x) of a conditional run, with p(y) the
    training label frequencies; writes classify.json and confusion.png into the run folder."""
    run_dir = Path(run_dir)
    config, vae, x, y = run_examples(run_dir, split, limit, device)
    if not vae.spec.conditional:
        raise PyroVAEError(f"{run_dir} is an unconditional model; --classify needs a run trained with --conditional")
    counts = load_checkpoint(run_dir, config, vae.device)["label_counts"].double()
    log_prior = (counts / counts.sum()).log()
    num_classes = vae.spec.num_classes
    started = time.perf_counter()
    predictions = []
    for start in tqdm(range(0, len(x), batch_size), desc=f"p(y|x), K={num_samples}", unit="batch", disable=not progress):
        log_post = class_log_posterior(
            vae.model, vae.guide, x[start : start + batch_size], num_classes, log_prior=log_prior, num_samples=num_samples
        )
        predictions.append(log_post.argmax(-1))
    predicted = torch.cat(predictions).cpu()
    truth = y.cpu()
    matrix = torch.bincount(truth * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)
    accuracy = (predicted == truth).double().mean().item()
    summary = {"split": split, "num_examples": len(x), "num_samples": num_samples, "accuracy": accuracy,
               "seconds": time.perf_counter() - started}
    atomic_write(run_dir / "classify.json", json.dumps(summary, indent=2) + "\n")
    plots.confusion_matrix(matrix, accuracy, run_dir / "confusion.png")
    return summary
