"""``pyro-vae evaluate``: a trained run's log p(x) (or log p(x|y)) by importance sampling (its proposal the
encoder's q(z|x), or q refined per example), or by annealed importance sampling, its bound against K, and
the CVAE's generative classifier; results go to the run folder."""

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from .. import distributed
from ..devices import resolve_device
from ..errors import PyroVAEError
from ..infer.ais import annealed_importance_sample
from ..infer.classifier import class_log_posterior, labels_repeated, summed_over_labels
from ..infer.importance import (
    PARETO_K_WARNING,
    ImportanceSampler,
    check_chunk_size,
    estimate_of_weights,
    importance_sample,
    inspect_model,
)
from ..infer.local import LocalPosterior
from ..model.conditions import CONDITIONS
from ..progress import bar as progress_bar
from ..progress import say
from ..runs.datasets import observed_split
from ..runs.experiment import build, dataset_component
from ..runs.files import atomic_write, check_writable, os_error, read_json
from ..runs.folders import load_checkpoint, load_weights, reading, run_config
from . import plots

CURVE_KS = (1, 10, 100, 1000, 5000)
CURVE_EXAMPLES = 100
BLOCK = 100  # examples refined, or annealed, together: example i lies in block i // BLOCK
BLOCK_STREAMS = 2**31  # block b's random stream is example_seed(seed, BLOCK_STREAMS + b), apart from every example's
METHODS = ("is", "ais")
COMPILE_FROM_WEIGHTS = 5_000_000  # compile = None (auto): importance weights in all from which inductor's building pays


def run_examples(run_dir, split="test", limit=None, device="auto", dataset=None, data_root=None):
    """(config, VAE, x, y) of a run: the first ``limit`` examples of ``split`` (a fixed, class-balanced part: ``balanced_order``) of its own data, or of
    ``dataset`` (read from ``data_root``), observed as in training."""
    config = run_config(run_dir)
    device = distributed.device_for(resolve_device(device), distributed.world())
    state = load_checkpoint(run_dir, config, device)
    component = dataset_component(config, dataset, data_root)
    experiment = build(config, device, component)
    if experiment.data.image_shape != tuple(state["image_shape"]):
        raise PyroVAEError(
            f"{component.name} has images of shape {experiment.data.image_shape} but {run_dir} was "
            f"trained on {tuple(state['image_shape'])}"
        )
    if experiment.vae.spec.conditional and experiment.data.num_classes != state["num_classes"]:
        raise PyroVAEError(
            f"{component.name} has {experiment.data.num_classes} classes but the conditional run {run_dir} "
            f"has {state['num_classes']}"
        )
    vae = experiment.vae
    load_weights(vae, state, run_dir)
    x, y = (
        (experiment.test_x, experiment.test_y)
        if split == "test"
        else observed_split(experiment.data, vae.likelihood, split, device)
    )
    return config, vae.eval(), x[:limit], y[:limit]


def output_stem(config, split, dataset, method="is"):
    """``eval`` for the run's own test split, else ``eval-<dataset>-<split>``, and ``-ais`` after it for annealed
    importance sampling, so that no evaluation overwrites another."""
    name = dataset or config.data.name
    stem = "eval" if name == config.data.name and split == "test" else f"eval-{name}-{split}"
    return stem if method == "is" else f"{stem}-{method}"


EVALUATION_SETTINGS = {
    "num_samples": "k",
    "num_examples": "n",
    "seed": "seed",
    "refine": "refine",
}  # what names a kept one
AIS_SETTINGS = {
    "num_samples": "chains",
    "num_distributions": "t",
    "leapfrog_steps": "l",
    "num_examples": "n",
    "seed": "seed",
}
UNLESS_ZERO = {"refine"}  # settings a kept evaluation's name carries only where they are not 0
CLASSIFICATION_SETTINGS = {"split": "", "num_samples": "k", "num_examples": "n"}


def evaluation_files(stem):
    """The files of an evaluation under ``stem``, as (stem, suffix) pairs, its JSON first."""
    return [(stem, ".json"), (stem, "_examples.csv"), (stem, "_vs_k.png")]


def keep_earlier(run_dir, files, summary, settings):
    """Where ``run_dir`` holds an earlier result in ``files`` [(stem, suffix)…] whose JSON (the first) was
    made with other ``settings`` (summary keys → name prefixes) than ``summary``, rename its files to
    ``<stem>-<tag><suffix>``, the tag naming those settings (``k5000-n5000-seed0``), so that no result
    is lost to another, and return their new names; one with the same settings, or unreadable, is
    replaced ([])."""
    try:
        earlier = read_json(run_dir / "".join(files[0]))
    except PyroVAEError:
        return []
    if earlier is None or all(earlier.get(key, 0) == summary[key] for key in settings):
        return []
    tag = "-".join(
        f"{prefix}{earlier.get(key, 0)}"
        for key, prefix in settings.items()
        if earlier.get(key, 0) or key not in UNLESS_ZERO
    )
    kept = []
    for stem, suffix in files:
        if (run_dir / f"{stem}{suffix}").exists():
            try:
                os.replace(run_dir / f"{stem}{suffix}", run_dir / f"{stem}-{tag}{suffix}")
            except OSError as e:
                raise os_error("rename", run_dir / f"{stem}{suffix}", e) from None
            kept.append(f"{stem}-{tag}{suffix}")
    return kept


def evaluate_run(
    run_dir,
    *,
    num_samples=5000,
    split="test",
    limit=None,
    chunk_size=None,
    device="auto",
    progress=True,
    dataset=None,
    data_root=None,
    seed=0,
    refine=0,
    method="is",
    num_distributions=1000,
    leapfrog_steps=10,
    jit=True,
    compile=None,
):
    """Estimate log p(x) of every example of ``split`` (of the run's data, or of ``dataset``); writes
    <stem>.json, <stem>_examples.csv and <stem>_vs_k.png into the run folder (stem ``eval`` for the
    run's own test split, ``eval-ais`` for annealed importance sampling) and returns the summary (the
    contents of the JSON file, which names the checkpoint it scored: epoch, step and SHA-256).

    ``method`` "is": importance sampling with K = ``num_samples`` draws from the encoder's q(z|x), or, with
    ``refine`` = N > 0, from each example's own q of the same family after N steps of per-example SVI
    started at the encoder's output (``infer/local.py``). "ais": annealed importance sampling
    (``infer/ais.py``) with K = ``num_samples`` chains from the prior, ``num_distributions`` intermediate
    distributions and HMC transitions of ``leapfrog_steps`` leapfrog steps. ``jit`` False: the importance
    sampler's chunks are never compiled (``ImportanceSampler``; by default they are where that pays); ``compile``
    True: they are compiled by inductor (fused kernels: faster on long evaluations, after seconds of building;
    the estimates differ from the eager ones in float32's last digits); None (auto): where the evaluation draws
    ``COMPILE_FROM_WEIGHTS`` importance weights or more in all (examples × K, × the classes for M2), counted
    over every process's examples so that each process decides alike; False: never.

    Example i's K samples come from a random stream seeded by (``seed``, i), so its estimate is the same
    whichever process scores it; where examples are refined or annealed together, in blocks of
    ``BLOCK`` fixed by their index, the block's fit and chains draw from a stream of the block's. Under
    ``torchrun`` rank r scores a contiguous share of the examples (of the blocks, where there are blocks),
    rank 0 gathers the results in example order and writes the files. The run's shared lock is held
    throughout, so the run cannot be trained or replaced meanwhile."""
    if method not in METHODS:
        raise PyroVAEError(f"the method must be one of {', '.join(METHODS)}, got {method!r}")
    if refine and method != "is":
        raise PyroVAEError("--refine refines the importance sampler's proposal; AIS starts its chains from the prior")
    clashes = {
        "--method ais, which samples no proposal": method != "is",
        "--refine, whose proposals are each example's own": refine,
        "--no-jit": not jit,
    }
    clash = next((name for name, present in clashes.items() if present), None)
    if compile and clash:
        raise PyroVAEError(f"--compile compiles the importance sampler's log-weights: not with {clash}")
    with reading(run_dir):
        return _evaluate_run(
            run_dir,
            num_samples,
            split,
            limit,
            chunk_size,
            device,
            progress,
            dataset,
            data_root,
            seed,
            refine,
            method,
            num_distributions,
            leapfrog_steps,
            jit,
            compile,
        )


def _evaluate_run(
    run_dir,
    num_samples,
    split,
    limit,
    chunk_size,
    device,
    progress,
    dataset,
    data_root,
    seed,
    refine,
    method,
    num_distributions,
    leapfrog_steps,
    jit,
    compile,
):
    if limit is not None and limit < 1:
        raise PyroVAEError(f"--limit must be positive, got {limit}")
    run_dir, world = Path(run_dir), distributed.world()
    config, vae, x, y = run_examples(run_dir, split, limit, device, dataset, data_root)
    distributed.on_main(lambda: check_writable(run_dir))
    stem = output_stem(config, split, dataset, method)
    labels = y if vae.spec.conditional else None
    latent_label = vae.conditioning.latent_label  # M2: log p(x) = log Σ_y p(x, y), each y scored apart

    def args(i, n=1):
        if latent_label:
            return labels_repeated(x[i : i + n], vae.spec.num_classes)
        return (x[i : i + n],) if labels is None else (x[i : i + n], labels[i : i + n])

    if method == "ais" and latent_label:
        raise PyroVAEError(
            f"{run_dir} is M2, whose label is a latent that AIS does not move: use importance sampling "
            "(--method is), which sums the label out"
        )
    if refine or method == "ais":  # whole blocks to each rank
        first, last = world.shard(0, math.ceil(len(x) / BLOCK))
        begin, end = first * BLOCK, min(last * BLOCK, len(x))
    else:
        begin, end = world.shard(0, len(x))
    weights = num_samples * (vae.spec.num_classes if latent_label else 1)  # importance weights per example
    if compile is None:
        compile = method == "is" and jit and not refine and len(x) * weights >= COMPILE_FROM_WEIGHTS
        if compile and progress and world.main:
            say(
                f"compile = auto: {len(x) * weights:,} importance weights, so the log-weights are compiled by inductor "
                "(seconds of building, once; --no-compile skips it)"
            )
    if method == "is":  # set up once, on example 0, for this rank's examples (compiled where that pays and checks out)
        sampler = ImportanceSampler(
            vae.model,
            vae.guide,
            args(0),
            {},
            num_samples,
            chunk_size,
            jit=None if jit and not refine else False,
            calls=end - begin,
            compile=compile,
        )
        if chunk_size is not None:
            check_chunk_size(vae.model, vae.guide, args(0), {}, sampler.layout, chunk_size, num_samples)
        if refine:
            vae.posterior_params(*args(0))  # refuses a model without one latent to fit
    started = time.perf_counter()
    results, chains, acceptance = [], [], []
    if method == "ais":
        bar = progress_bar(
            total=math.ceil((end - begin) / BLOCK) * num_distributions,
            desc=f"AIS, T={num_distributions}, {num_samples} chains",
            unit="step",
            enabled=progress and world.main,
        )
    else:
        bar = progress_bar(
            total=(end - begin) * weights,
            desc=f"log p(x), K={num_samples}" + (f", refined by {refine} steps" if refine else ""),
            unit="sample",
            unit_scale=True,
            enabled=progress and world.main,
        )
    with bar:
        for start in range(begin, end, BLOCK):
            stop = min(start + BLOCK, end)
            if method == "ais":
                torch.manual_seed(example_seed(seed, BLOCK_STREAMS + start // BLOCK))
                estimate, log_w, accepted = annealed_importance_sample(
                    vae.model,
                    *args(start, stop - start),
                    num_chains=num_samples,
                    num_distributions=num_distributions,
                    leapfrog_steps=leapfrog_steps,
                    progress=lambda: bar.update(1),
                )
                results.append((estimate, None))
                chains.append(log_w.T.cpu())
                acceptance.append(accepted.cpu())
                continue
            local = None
            if method == "is":  # the contract's checks of the observed values, for the block's examples at once
                with torch.no_grad():
                    inspect_model(vae.model, vae.guide, args(start, stop - start), {})
            if refine:
                torch.manual_seed(example_seed(seed, BLOCK_STREAMS + start // BLOCK))
                block = args(start, stop - start)
                local = LocalPosterior(vae.encoder.head, vae.posterior_params(*block))
                local.fit(vae.model, *block, steps=refine, held=[vae])
            for i in range(start, stop):
                torch.manual_seed(example_seed(seed, i))
                if local is None:
                    estimate = sampler.estimate(*args(i), progress=bar.update)
                else:
                    estimate = importance_sample(
                        vae.model,
                        local.rows(slice(i - start, i - start + 1)),
                        *args(i),
                        num_samples=num_samples,
                        chunk_size=sampler.chunk_size,
                        progress=bar.update,
                        jit=False,
                    )
                generative = None
                if latent_label:
                    estimate, log_joint = summed_over_labels(estimate, vae.spec.num_classes)
                    generative = log_joint.argmax(-1).double()
                results.append((estimate, generative))
    names = ("log_likelihood", "elbo", "ess", "stderr", "pareto_k")
    mine = {
        name: torch.cat([getattr(r, name) for r, _ in results]).cpu()
        if results
        else torch.zeros(0, dtype=torch.float64)
        for name in names
    }
    if latent_label:  # M2's two classifiers: argmax_y p(x, y) of the estimates above, and q(y|x) of this rank's share
        names += ("generative_label", "classifier_label")
        mine["generative_label"] = torch.cat([g for _, g in results] or [torch.zeros(0)]).double().cpu()
        mine["classifier_label"] = vae.predict(x[begin:end]).double().cpu()
    if method == "ais":
        names += ("acceptance",)
        mine["acceptance"] = torch.cat(acceptance or [torch.zeros(0, dtype=torch.float64)])
        mine["chains"] = torch.cat(chains or [torch.zeros(0, num_samples, dtype=torch.float64)])  # [examples, C]
    shares = distributed.all_gather(mine)
    seconds = time.perf_counter() - started
    if not world.main:
        return None
    columns = {name: torch.cat([share[name] for share in shares]) for name in names}
    log_w = torch.cat([share["chains"] for share in shares]).T if method == "ais" else None  # [C, N]
    n, dims = len(x), math.prod(vae.likelihood.image_shape)  # the scored (target) dimensions
    torch.manual_seed(seed)
    elbo_10 = particle_elbo(vae, x, labels)
    mean_ll = columns["log_likelihood"].mean().item()
    k = columns["pareto_k"]
    fitted = k[~k.isnan()]
    summary = {
        "dataset": dataset or config.data.name,
        "split": split,
        "num_examples": n,
        "num_samples": num_samples,
        "weights_per_example": weights,
        "conditional": vae.spec.conditional,
        "condition": config.condition.name,
        "what": vae.conditioning.what,
        "elbo": columns["elbo"].mean().item(),
        "elbo_10_particles": elbo_10,
        "log_likelihood": mean_ll,
        "log_likelihood_stderr": None if num_samples < 2 else (columns["stderr"].square().sum().sqrt() / n).item(),
        "log_likelihood_std": columns["log_likelihood"].std().item() if n > 1 else 0.0,
        "mean_ess": columns["ess"].mean().item(),
        "median_ess": columns["ess"].median().item(),
        "median_pareto_k": fitted.median().item() if len(fitted) else None,
        "share_pareto_k_above_0.7": (fitted > PARETO_K_WARNING).double().mean().item() if len(fitted) else None,
        "bits_per_dim": -mean_ll / (dims * math.log(2)) if vae.likelihood.discrete else None,
        "seconds": seconds,
        "processes": world.size,
        "seed": seed,
        "method": method,
        "refine": refine,
        "chunk_size": chunk_size,
        "compiled": compile,
        "likelihood": config.likelihood.name,
        "prior": config.prior.name,
        "checkpoint": vae.checkpoint,
    }
    if latent_label:  # M2's two classifiers: q(y|x), and argmax_y p(x, y) (uniform p(y)) from the same estimates
        truth = y.cpu().double()
        summary["accuracy_classifier"] = (columns["classifier_label"] == truth).double().mean().item()
        summary["accuracy_generative"] = (columns["generative_label"] == truth).double().mean().item()
        summary["labels"] = config.data.options.get("labels", 0)
    if method == "ais":
        summary["num_distributions"], summary["leapfrog_steps"] = num_distributions, leapfrog_steps
        summary["mean_acceptance"] = columns["acceptance"].mean().item()
    files = evaluation_files(stem)
    kept = keep_earlier(run_dir, files, summary, AIS_SETTINGS if method == "ais" else EVALUATION_SETTINGS)
    json_name, examples_name, curve_name = ("".join(name) for name in files)
    atomic_write(run_dir / json_name, json.dumps(summary, indent=2) + "\n")
    write_examples(run_dir / examples_name, y.cpu(), columns)
    torch.manual_seed(seed)
    if method == "ais":
        chains_curve(log_w[:, :CURVE_EXAMPLES], run_dir / curve_name)
    elif not refine:
        curve(vae, args(0, CURVE_EXAMPLES), num_samples, run_dir / curve_name)
    else:  # the curve of the refined proposal would refit the first examples at every K
        files = files[:2]
    summary["files"], summary["kept"] = ["".join(name) for name in files], kept
    return summary


@torch.no_grad()
def particle_elbo(vae, x, labels, num_particles=10, batch_size=100):
    """The mean over examples x [N, …] of Pyro's ``Trace_ELBO(num_particles=10)`` estimate of the ELBO, the
    figure Pyro's CVAE example reports (examples/cvae/util.py, as its negative): an average of 10
    one-sample ELBOs per example, a lower bound on log p(t|c) in expectation, looser than the
    importance-sampled estimate of the same draws' budget."""
    elbo = TraceEnum_ELBO if vae.conditioning.latent_label else Trace_ELBO  # M2: its unknown label summed out
    loss = elbo(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    total = 0.0
    for start in range(0, len(x), batch_size):
        args = (x[start : start + batch_size],) + (() if labels is None else (labels[start : start + batch_size],))
        total += loss.loss(vae.model, vae.guide, *args)
    return -total / max(len(x), 1)


def example_seed(seed, index):
    """The seed of example ``index``'s random stream in an evaluation seeded by ``seed`` (< 2³²): index + seed·φ
    mod 2³², φ = 0x9E3779B1 odd, so the examples of one evaluation get distinct streams and seed 0's are
    0, 1, 2, …. It stays below 2³² because PyTorch's CPU generator (mt19937) keeps only a seed's low 32 bits."""
    return (index + seed * 0x9E3779B1) % 2**32


def write_examples(path, labels, columns):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "label", *columns])
    for i, row in enumerate(zip(labels.tolist(), *(c.tolist() for c in columns.values()))):
        writer.writerow([i, *row])
    atomic_write(path, buffer.getvalue())


def curve(vae, args, num_samples, path):
    """Plot mean log p̂(x) over the examples of the model's arguments ``args`` against K ∈ {1, 10, …, num_samples}
    (for M2, ``args`` repeat each example for every class, and the classes are summed)."""
    ks = sorted({k for k in CURVE_KS if k < num_samples} | {num_samples})
    means, stderrs = [], []
    for k in ks:
        estimate = importance_sample(vae.model, vae.guide, *args, num_samples=k)
        if vae.conditioning.latent_label:
            estimate = summed_over_labels(estimate, vae.spec.num_classes)[0]
        means.append(estimate.log_likelihood.mean().item())
        stderrs.append((estimate.stderr.square().sum().sqrt() / len(estimate.stderr)).item())
    plots.bound_vs_k(ks, means, stderrs, len(estimate.stderr), path)


def chains_curve(log_w, path):
    """Plot mean log p̂(x) of AIS over the examples of log-weights [C, N] against the number of chains used,
    1, 2, 4, … C (the first c chains of each example)."""
    counts = sorted({2**i for i in range(len(log_w).bit_length()) if 2**i < len(log_w)} | {len(log_w)})
    estimates = [estimate_of_weights(log_w[:c]) for c in counts]
    means = [e.log_likelihood.mean().item() for e in estimates]
    stderrs = [(e.stderr.square().sum().sqrt() / log_w.shape[1]).item() for e in estimates]
    plots.bound_vs_k(counts, means, stderrs, log_w.shape[1], path, "AIS chains", "AIS estimate against its chains")


def check_labelled(run_dir, config):
    """Refuse to classify with a run whose model takes no labels (only a label CVAE has p(x|y))."""
    condition = CONDITIONS.get(config.condition.name)
    if condition.latent_label:
        raise PyroVAEError(
            f"{run_dir} is M2, whose label is a latent: evaluate reports its two classifiers' accuracies "
            "(q(y|x) and argmax_y p(x, y)) without --classify"
        )
    if not condition.labels:
        raise PyroVAEError(f"{run_dir} is a model without labels; --classify needs a run trained with --conditional")


def classify_run(run_dir, *, num_samples=100, split="test", limit=None, batch_size=100, device="auto", progress=True):
    """Accuracy of the generative classifier argmax_y p(y|x) of a conditional run, with p(y) the
    training label frequencies; writes classify.json and confusion.png into the run folder (keeping an
    earlier pair made with another split, K or number of examples as classify-<split>-k<K>-n<N>.json, …).
    The run's shared lock is held throughout."""
    with reading(run_dir):
        return _classify_run(Path(run_dir), num_samples, split, limit, batch_size, device, progress)


def _classify_run(run_dir, num_samples, split, limit, batch_size, device, progress):
    config, vae, x, y = run_examples(run_dir, split, limit, device)
    check_writable(run_dir)
    check_labelled(run_dir, config)
    counts = load_checkpoint(run_dir, config, vae.device)["label_counts"].double()
    log_prior = (counts / counts.sum()).log()
    num_classes = vae.spec.num_classes
    started = time.perf_counter()
    predictions = []
    for start in progress_bar(
        range(0, len(x), batch_size), desc=f"p(y|x), K={num_samples}", unit="batch", enabled=progress
    ):
        log_post = class_log_posterior(
            vae.model,
            vae.guide,
            x[start : start + batch_size],
            num_classes,
            log_prior=log_prior,
            num_samples=num_samples,
        )
        predictions.append(log_post.argmax(-1))
    predicted = torch.cat(predictions).cpu()
    truth = y.cpu()
    matrix = torch.bincount(truth * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)
    accuracy = (predicted == truth).double().mean().item()
    summary = {
        "split": split,
        "num_examples": len(x),
        "num_samples": num_samples,
        "accuracy": accuracy,
        "seconds": time.perf_counter() - started,
        "checkpoint": vae.checkpoint,
    }
    kept = keep_earlier(run_dir, [("classify", ".json"), ("confusion", ".png")], summary, CLASSIFICATION_SETTINGS)
    atomic_write(run_dir / "classify.json", json.dumps(summary, indent=2) + "\n")
    plots.confusion_matrix(matrix, accuracy, run_dir / "confusion.png")
    summary["kept"] = kept
    return summary
