"""``pyro-vae bench``: the project's trainer and evaluator against plain PyTorch, side by side.

The reference is kept here: the same encoder/decoder modules trained by a hand-written loss
−[log p(x|z) + log p(z) − log q(z|x)], z = loc + scale·ε (the objective Trace_ELBO estimates),
on images binarized by ``torch.bernoulli``, with ``torch.optim.Adam`` at its defaults, and a
hand-written vectorized IWAE estimate of log p(x). Repetitions are interleaved so that machine
noise hits every variant alike; medians are reported.
"""

import copy
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from ..devices import bfloat16_in_hardware, resolve_device
from ..errors import PyroVAEError
from ..infer.importance import ImportanceSampler, importance_sample
from ..infer.objectives import OBJECTIVES
from ..model.networks import activation_class, mlp
from ..report.evaluation import example_seed
from ..runs.config import load_config, to_toml
from ..runs.datasets import load_data
from ..runs.experiment import build, expand
from ..runs.files import atomic_write, make_folder
from ..runs.folders import holds_run, open_run_dir, save_checkpoint, write_metrics
from ..trainer import COMPILE_FROM_STEPS, Trainer, test_elbo


def plain_loss(vae, x):
    """−Σ_b [log p(x_b|z_b) + log p(z_b) − log q(z_b|x_b)], one reparameterized z_b ~ q(z|x_b): the Bernoulli's
    log-likelihood as binary cross-entropy, any other's from its torch distribution (no Pyro in the loop)."""
    loc, scale = vae.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    if vae.likelihood.dynamic or type(vae.likelihood).__name__ == "Bernoulli":
        logits = vae.decoder(z)[:, 0]
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)
    else:
        log_px = vae.likelihood(vae.decoder(z)).log_prob(x)
    log_pz = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * ((z - loc) / scale).square() - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    return -(log_px + log_pz - log_qz).sum()


def log_prior_over_posterior(z, eps, scale):
    """log N(z; 0, I) − log N(z; loc, diag(scale²)) [...] for z = loc + scale·ε, by hand (the 2π terms cancel):
    −½‖z‖² + ½‖ε‖² + Σ log scale."""
    return -0.5 * z.square().sum(-1) + 0.5 * eps.square().sum(-1) + scale.log().sum(-1)


@torch.no_grad()
def plain_log_likelihood(vae, x, num_samples, chunk_size):
    """log (1/K) Σₖ p(x, zₖ)/q(zₖ|x) [B] with zₖ ~ q(z|x), K = num_samples, chunk_size samples at a time."""
    loc, scale = vae.encoder(x)
    parts = []
    for start in range(0, num_samples, chunk_size):
        eps = torch.randn((min(chunk_size, num_samples - start),) + loc.shape, device=x.device)
        z = loc + scale * eps
        logits = vae.decoder(z)[:, :, 0]
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(2).sum(-1)
        log_w = log_px + log_prior_over_posterior(z, eps, scale)
        parts.append(torch.logsumexp(log_w.double(), 0))
    return torch.logsumexp(torch.stack(parts), 0) - math.log(num_samples)


def plain_binarize(grey, generator):
    """The reference's data path: torch.bernoulli, as a plain PyTorch loop draws binary images."""
    return torch.bernoulli(grey, generator=generator)


def check_diagonal(config):
    """The plain loops draw z = loc + scale·ε from a diagonal Gaussian: refuse another posterior family."""
    if config.posterior.name != "diagonal":
        raise PyroVAEError(
            f"the plain-PyTorch loops draw z from a diagonal Gaussian; bench posterior.name = diagonal, not "
            f"{config.posterior.name}"
        )


class PlainTrainer:
    """The reference training loop: a copy of a trainer's networks and data tensor, torch.optim.Adam
    with the run's learning rate and ε, and ``binarize`` (``plain_binarize``, or the trainer's own data path)."""

    def __init__(self, trainer, binarize=plain_binarize):
        check_diagonal(trainer.config)
        self.trainer, self.binarize = trainer, binarize
        self.vae = copy.deepcopy(trainer.vae)
        self.optimizer = torch.optim.Adam(
            self.vae.parameters(), lr=trainer.config.train.lr, eps=trainer.config.train.adam_eps
        )

    def train_step(self, index):
        x = expand(self.trainer.train_x[index])
        x = self.binarize(x, self.trainer.generator) if self.trainer.likelihood.dynamic else x
        loss = plain_loss(self.vae, x)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()


class CarefulTrainer:
    """The reference a performance-minded user writes: the trainer's networks as plain modules (the MLP
    copied into one flat module, encoder D → hidden… → 2·z_dim and decoder z_dim → …hidden → D; any other
    network, a convolutional one, copied as it is), no registries, the trainer's own data path, a fused
    ``torch.optim.Adam``, and optionally ``torch.autocast(dtype)`` around the networks with the loss summed
    in float32. The Bernoulli's log-likelihood is binary cross-entropy; any other likelihood's is its
    torch distribution's ``log_prob``."""

    def __init__(self, trainer, dtype=None):
        check_diagonal(trainer.config)
        vae = trainer.vae
        self.trainer, self.dtype, self.likelihood = trainer, dtype, copy.deepcopy(vae.likelihood)
        self.flat = trainer.config.network.name == "mlp"
        if self.flat:  # the MLP network's GaussianMLP encoder and MLP decoder as two nn.Sequential
            self.encoder, self.decoder = (
                flat_mlp([m for m in net.modules() if isinstance(m, torch.nn.Linear)], type(vae.encoder.act))
                for net in (vae.encoder, vae.decoder)
            )
        else:
            self.encoder, self.decoder = copy.deepcopy(vae.encoder), copy.deepcopy(vae.decoder)
        self.bernoulli = type(vae.likelihood).__name__ == "Bernoulli"
        params = [*self.encoder.parameters(), *self.decoder.parameters(), *self.likelihood.parameters()]
        self.optimizer = torch.optim.Adam(
            params,
            lr=trainer.config.train.lr,
            eps=trainer.config.train.adam_eps,
            fused=trainer.device.type in ("cpu", "cuda") or None,
        )

    def encode(self, x):
        """(loc, scale) of q(z|x), the scale as the project's GaussianHead forms it: softplus + 1e-4."""
        if not self.flat:
            loc, scale = self.encoder(x)
            return loc.float(), scale.float()
        loc, raw_scale = self.encoder(x.flatten(1)).float().chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4

    def train_step(self, index):
        trainer = self.trainer
        x = trainer.likelihood.observe(expand(trainer.train_x.index_select(0, index)), trainer.generator)
        with torch.autocast(trainer.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loc, scale = self.encode(x)
            eps = torch.randn_like(loc)
            z = loc + scale * eps
            out = self.decoder(z).float()
        if self.bernoulli:
            log_px = -F.binary_cross_entropy_with_logits(out.flatten(1), x.flatten(1), reduction="none").sum(-1)
        else:
            log_px = self.likelihood(out).log_prob(x)
        log_w = log_px + log_prior_over_posterior(z, eps, scale)
        loss = -log_w.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def flat_mlp(linears, activation):
    """One nn.Sequential of copies of ``linears`` with ``activation`` between them."""
    layers = []
    for i, linear in enumerate(linears):
        layers.append(copy.deepcopy(linear))
        if i < len(linears) - 1:
            layers.append(activation())
    return torch.nn.Sequential(*layers)


def matmul_limit(device, dtype, batch_sizes, size=(784, 400), seconds=0.5):
    """FLOP/s of the products [B × 784] · [784 × 400] in ``dtype`` on ``device``, B in ``batch_sizes``, the second
    factor stored both ways (row-major, and transposed as ``nn.Linear`` stores its weight: a machine's kernels may
    favour one): the best of timed runs over ``seconds`` for each B and layout, the arithmetic limit of the MLP's
    steps on this machine."""
    best = 0.0
    for batch_size in batch_sizes:
        a = torch.randn(batch_size, size[0], device=device, dtype=dtype)
        flops, repeats = 2 * batch_size * size[0] * size[1], max(2, 5120 // batch_size)
        for b in (
            torch.randn(size[0], size[1], device=device, dtype=dtype),
            torch.randn(size[1], size[0], device=device, dtype=dtype).T,
        ):
            for _ in range(10):
                a @ b
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                synchronize(torch.device(device))
                t = time.perf_counter()
                for _ in range(repeats):
                    a @ b
                synchronize(torch.device(device))
                best = max(best, repeats * flops / (time.perf_counter() - t))
    return best


def forward_flops(*networks):
    """FLOPs of the forward pass of ``networks``' linear layers for one example: 2·Σ in·out."""
    return 2 * sum(
        m.in_features * m.out_features for net in networks for m in net.modules() if isinstance(m, torch.nn.Linear)
    )


def step_flops(vae):
    """FLOPs per image of one training step of the encoder and decoder: the forward pass and twice it
    for the backward pass."""
    return 3 * forward_flops(vae.encoder, vae.decoder)


class PeakMemory:
    """Peak memory above the level at entry: CUDA's allocator statistics, or resident size sampled every 1 ms."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    @staticmethod
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def sample(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()
            self.extra = self.peak - self.base


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_rates(variants, trainer, repeats, steps, batch_size, turn=1):
    """{name: [images/s of each repeat]} of the training steps ``variants`` (name → step(index)), each warmed
    up by 5 steps, then ``repeats`` repeats of ``steps`` steps each, taken in rounds: in a round every variant
    takes ``turn`` steps on the same batches, one variant after another (in reverse order every other round),
    each turn timed on its own. The machine's speed drifts over seconds: turns milliseconds apart meet the
    same machine, so the drift cancels in the ratios of one repeat's totals. A turn of one step costs each
    variant the caches the others took, which is small beside a step's arithmetic but not beside its fixed
    cost: ``fixed_cost`` takes longer turns."""
    n, order, turn = len(trainer.train_x), list(variants), min(turn, steps)
    rounds = steps // turn
    for _ in range(5):
        index = torch.randint(0, n, (batch_size,), device=trainer.device)
        for step in variants.values():
            step(index)
    rates = {name: [] for name in order}
    for _ in range(repeats):
        seconds = dict.fromkeys(order, 0.0)
        for round_ in range(rounds):
            indices = [torch.randint(0, n, (batch_size,), device=trainer.device) for _ in range(turn)]
            for name in order if round_ % 2 == 0 else reversed(order):
                synchronize(trainer.device)
                started = time.perf_counter()
                for index in indices:
                    variants[name](index)
                synchronize(trainer.device)
                seconds[name] += time.perf_counter() - started
        for name in order:
            rates[name].append(rounds * turn * batch_size / seconds[name])
    return rates


BATCH_SIZES = (128, 256, 1024)  # the training step's batch sizes; the matrix-product limit is the best over them

TRAINING_VARIANTS = {  # name → what it is, for the printed table
    "pyro": "the project's trainer on a short run (float32, Pyro's JIT)",
    "pyro_bf16": "the project's trainer on a short run, train.precision = bfloat16",
    "compiled": "the project's trainer on a long run "
    f"(objective.compile = auto from {COMPILE_FROM_STEPS:,} steps: inductor)",
    "compiled_bf16": "the project's trainer on a long run, train.precision = bfloat16",
    "plain": "naive plain loop: the project's modules, torch.bernoulli, default Adam",
    "careful": "careful plain loop: plain modules (an MLP flattened), our data path, fused Adam, float32",
    "careful_bf16": "the careful loop under torch.autocast(bfloat16)",
}


TRAINER_SETTINGS = {  # the project's trainers of TRAINING_VARIANTS: overrides of the config
    "pyro": ["objective.compile=false"],
    "pyro_bf16": ["objective.compile=false", "train.precision=bfloat16"],
    "compiled": ["objective.compile=true"],
    "compiled_bf16": ["objective.compile=true", "train.precision=bfloat16"],
}

RATIOS = {  # ratio → (ours, the reference, its label in the table, its label in the verdicts: None for none)
    "ratio_careful": ("pyro", "careful", "pyro/careful", "pyro / careful, float32"),
    "ratio_careful_bf16": ("pyro_bf16", "careful_bf16", "bf16", "pyro / careful, bfloat16"),
    "ratio_plain": ("pyro", "plain", "pyro/plain", None),
    "ratio_careful_compiled": ("compiled", "careful", "compiled/careful", "compiled / careful, float32"),
    "ratio_careful_bf16_compiled": ("compiled_bf16", "careful_bf16", "bf16", "compiled / careful, bfloat16"),
}


def compiles(config_name, overrides):
    """Whether the objective of config ``config_name`` with ``overrides`` has the ``compile`` option, so that
    the bench times its compiled trainer too."""
    return "compile" in OBJECTIVES.options(load_config(config_name, overrides).objective.name)


def training_throughput(config_overrides, batch_sizes, repeats, steps, device, limits, config_name=None):
    """{batch size: images/s of each of ``TRAINING_VARIANTS`` (medians of interleaved repeats), the
    ratios of the project's trainer to the careful loops at the same precision (medians of per-repeat
    ratios, with their quartiles), and each variant's share of the matrix-product limit ``limits`` (FLOP/s by
    precision; None: not reported, as for a convolutional network): images/s × ``step_flops`` / limit}, for
    the config ``config_name`` (None: the default) with ``config_overrides``."""
    results = {}
    compiled = compiles(config_name, config_overrides)
    for batch_size in batch_sizes:
        common = config_overrides + [f"train.batch_size={batch_size}", f"train.device={device}"]
        with tempfile.TemporaryDirectory() as tmp:
            trainers = project_trainers(config_name, common, tmp, compiled)
            trainer = trainers["pyro"]
            variants = {name: lambda index, t=t: t.train_step(index).item() for name, t in trainers.items()}
            variants.update(
                plain=PlainTrainer(trainer).train_step,
                careful=CarefulTrainer(trainer).train_step,
                careful_bf16=CarefulTrainer(trainer, torch.bfloat16).train_step,
            )
            by_precision = sorted(variants, key=lambda name: name.endswith("bf16"))  # each ratio's two side by side
            rates = interleaved_rates(
                {name: variants[name] for name in by_precision}, trainer, repeats, steps, batch_size
            )
        r = results[batch_size] = {f"{name}_images_per_s": statistics.median(v) for name, v in rates.items()}
        r["pyro_uses_jit"] = trainers["pyro"].jit_elbo is not None and trainers["pyro_bf16"].jit_elbo is not None
        if compiled:
            r["compiled_in_use"] = all(trainers[name].jit_elbo is not None for name in ("compiled", "compiled_bf16"))
        for key, (name, reference, *_) in RATIOS.items():
            if name not in rates:
                continue
            ratios = [p / q for p, q in zip(rates[name], rates[reference])]
            r[key], r[f"{key}_quartiles"] = statistics.median(ratios), statistics.quantiles(ratios, n=4)[::2]
        if limits is None:
            continue
        flops = step_flops(trainer.vae)
        for name in variants:
            limit = limits["bfloat16" if name.endswith("bf16") else "float32"]
            r[f"{name}_share_of_limit"] = r[f"{name}_images_per_s"] * flops / limit
    return results


FIXED_COST_TURN = 10  # steps a variant takes in turn at the fixed-cost size: its loop runs hot, as in training
FIXED_COST_NETWORK = ["network.hidden=[8]", "model.z_dim=2", "train.batch_size=8"]  # where the arithmetic vanishes


def project_trainers(config_name, overrides, folder, compiled):
    """{name: the project's ``Trainer`` of each of ``TRAINER_SETTINGS``} for config ``config_name`` with
    ``overrides``, their runs in ``folder``; where not ``compiled`` (an objective without the option), the
    short run's trainers alone, as the config has them."""
    trainers = {}
    for name, settings in TRAINER_SETTINGS.items():
        if not compiled:
            if name.startswith("compiled"):
                continue
            settings = [s for s in settings if not s.startswith("objective.compile")]
        with warnings.catch_warnings():  # the bench says once whether bfloat16 is emulated (``bench``)
            warnings.filterwarnings("ignore", message="train.precision = bfloat16", category=UserWarning)
            trainers[name] = Trainer(load_config(config_name, overrides + settings), f"{folder}/{name}", progress=False)
    return trainers


def fixed_cost(config_overrides, repeats, steps, device):
    """Seconds per step of the project's trainers (``TRAINER_SETTINGS``: default and compiled, where the
    objective has the option, in float32 and bfloat16) and of the careful loops (float32 and bfloat16) on a
    network of width 8 with a batch of 8 and z of 2, where the matrix products and elementwise passes vanish
    and what is left is each loop's fixed cost (Python, Pyro's and TorchScript's machinery, kernel launches,
    autocast's casts, the optimizer's call): medians of interleaved repeats, in turns of ``FIXED_COST_TURN`` steps."""
    overrides = config_overrides + FIXED_COST_NETWORK + [f"train.device={device}"]
    with tempfile.TemporaryDirectory() as tmp:
        trainers = project_trainers(None, overrides, tmp, compiles(None, overrides))
        trainer = trainers["pyro"]
        variants = {name: lambda index, t=t: t.train_step(index).item() for name, t in trainers.items()}
        variants.update(
            careful=CarefulTrainer(trainer).train_step, careful_bf16=CarefulTrainer(trainer, torch.bfloat16).train_step
        )
        batch_size = trainer.config.train.batch_size
        rates = interleaved_rates(variants, trainer, repeats, steps, batch_size, turn=FIXED_COST_TURN)
    return {f"{name}_seconds_per_step": batch_size / statistics.median(v) for name, v in rates.items()}


def evaluator_speed(config_overrides, num_samples, num_examples, repeats, device):
    """Seconds (medians of interleaved repeats) and peak extra memory (one further run each) of the project's
    evaluator against ``plain_log_likelihood`` at K = ``num_samples`` on ``num_examples`` examples: "pyro" as
    ``pyro-vae evaluate`` runs it, one example after another, each from its own random stream, through one
    ``ImportanceSampler`` set up on the first; "pyro_batched", ``importance_sample`` on all of them at once from
    one stream; "pyro_compiled", ``pyro-vae evaluate --compile``'s path, the per-example one through a sampler
    whose graphs inductor compiled (built once, before the timing: ``compiled_build_seconds``); "plain", the
    hand-written estimate on all of them at once, in the chunks ``importance_sample`` chooses for the batch.
    The speed ratios are plain / pyro, medians of the repeats' ratios, with their quartiles."""
    experiment = build(load_config(None, config_overrides), device)
    vae, x = experiment.vae.eval(), experiment.test_x[:num_examples]
    chunk_size = ImportanceSampler(vae.model, vae.guide, (x,), {}, num_samples).chunk_size  # the batch's chunks

    def new_sampler(**options):  # as evaluate sets it up
        return ImportanceSampler(vae.model, vae.guide, (x[:1],), {}, num_samples, calls=len(x), **options)

    def per_example(sampler):
        estimates = []
        for i in range(len(x)):
            torch.manual_seed(example_seed(0, i))
            estimates.append(sampler.estimate(x[i : i + 1]).log_likelihood)
        return torch.cat(estimates)

    started = time.perf_counter()
    compiled = new_sampler(compile=True)
    per_example(compiled)  # builds the graph of each chunk size
    build_seconds = time.perf_counter() - started

    def batched():
        return importance_sample(vae.model, vae.guide, x, num_samples=num_samples).log_likelihood

    def plain():
        return plain_log_likelihood(vae, x, num_samples, chunk_size)

    variants = {
        "pyro": lambda: per_example(new_sampler()),
        "pyro_batched": batched,
        "pyro_compiled": lambda: per_example(compiled),
        "plain": plain,
    }
    times, memory, values = {name: [] for name in variants}, {}, {}
    for repeat in range(repeats):  # in turn, in reverse order every other repeat: the machine's drift hits all alike
        for name, fn in variants.items() if repeat % 2 == 0 else reversed(variants.items()):
            synchronize(vae.device)
            started = time.perf_counter()
            values[name] = fn()
            synchronize(vae.device)
            times[name].append(time.perf_counter() - started)
    for name, fn in variants.items():  # a pass of its own: the sampling thread would slow the timed ones
        with PeakMemory(vae.device) as peak:
            fn()
        memory[name] = peak.extra
    seconds = {name: statistics.median(t) for name, t in times.items()}

    ratios = {}  # plain / each: the median of the repeats' ratios, and its quartiles (None for one repeat)
    for name in ("pyro", "pyro_batched", "pyro_compiled"):
        each = [p / q for p, q in zip(times["plain"], times[name])]
        ratios[name] = statistics.median(each), statistics.quantiles(each, n=4)[::2] if len(each) > 1 else None

    return {
        "num_samples": num_samples,
        "num_examples": num_examples,
        "chunk_size": chunk_size,
        "pyro_seconds": seconds["pyro"],
        "pyro_batched_seconds": seconds["pyro_batched"],
        "pyro_compiled_seconds": seconds["pyro_compiled"],
        "compiled_build_seconds": build_seconds,
        "compiled_in_use": all(graph is not None for graph in compiled.compiled.values()),
        "plain_seconds": seconds["plain"],
        "speed_ratio": ratios["pyro"][0],
        "speed_ratio_quartiles": ratios["pyro"][1],
        "batched_speed_ratio": ratios["pyro_batched"][0],
        "compiled_speed_ratio": ratios["pyro_compiled"][0],
        "compiled_speed_ratio_quartiles": ratios["pyro_compiled"][1],
        "flops": num_examples * (forward_flops(vae.encoder) + num_samples * forward_flops(vae.decoder)),
        "pyro_peak_extra_mb": memory["pyro"] / 2**20,
        "plain_peak_extra_mb": memory["plain"] / 2**20,
        "mean_log_likelihood": {k: v.mean().item() for k, v in values.items()},
    }


class PlainM2:
    """The reference M2 step a user writes in plain PyTorch: copies of the trainer's classifier, encoder and
    decoder, the sum over the labels by hand (every y at once, as a leading dim), the Bernoulli's
    log-likelihood as binary cross-entropy, the classification term as cross-entropy, fused Adam. It takes
    the same batches (the trainer's data path) as the trainer it is timed against."""

    def __init__(self, trainer):
        vae = trainer.vae
        self.trainer, self.alpha, self.classes = trainer, vae.conditioning.alpha, vae.spec.num_classes
        self.classifier, self.encoder, self.decoder = (
            copy.deepcopy(m) for m in (vae.classifier, vae.encoder, vae.decoder)
        )
        params = [p for m in (self.classifier, self.encoder, self.decoder) for p in m.parameters()]
        fused = trainer.device.type in ("cpu", "cuda") or None
        self.optimizer = torch.optim.Adam(
            params, lr=trainer.config.train.lr, eps=trainer.config.train.adam_eps, fused=fused
        )
        self.event_dims = len(vae.spec.image_shape)

    def elbo(self, x, onehot):
        """log p(x|y,z) + log p(y) + log p(z) − log q(z|x,y) [..., B], one reparameterized z ~ q(z|x,y)."""
        loc, scale = self.encoder(x, onehot)
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.decoder(z, onehot).select(-self.event_dims - 1, 0)
        target = x.expand_as(logits)
        log_px = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-self.event_dims).sum(-1)
        return log_px - math.log(self.classes) + log_prior_over_posterior(z, eps, scale)

    def train_step(self, index):
        x, y, x_labelled, y_labelled = self.trainer.batch(index, self.trainer.generator)
        unknown = y < 0
        every = torch.eye(self.classes, device=x.device)[:, None, :]  # [C, 1, C]: each label for every example
        log_q = torch.log_softmax(self.classifier(x[unknown]), -1)  # [B_u, C]
        u = (log_q.exp() * (self.elbo(x[unknown], every).T - log_q)).sum(-1)  # Σ_y q(y|x)(ELBO_y − log q(y|x))
        known = ~unknown
        labelled = self.elbo(x[known], F.one_hot(y[known], self.classes).float())
        loss = -(u.sum() + labelled.sum())
        if len(x_labelled):
            loss = loss - self.elbo(x_labelled, F.one_hot(y_labelled, self.classes).float()).sum()
        if self.alpha and len(x_labelled):
            ce = F.cross_entropy(self.classifier(x_labelled), y_labelled, reduction="sum")
            loss = loss + self.alpha * len(x) / len(x_labelled) * ce
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def semi_supervised_speed(config_name, overrides, device, repeats=11, steps=20):
    """Training images per second (medians of interleaved repeats) of M2 by the project's trainer, by
    ``PlainM2`` on the same batches, and of the label CVAE of the same sizes (every label known, the
    condition ``label``), with the ratio trainer / plain (median of the repeats' ratios, and quartiles)."""
    common = list(overrides) + [f"train.device={device}"]
    config = load_config(config_name, common)
    if config.condition.name != "semi_supervised":
        raise PyroVAEError("--semi-supervised times M2: use a config with condition.name = semi_supervised (mnist-m2)")
    if config.likelihood.name != "bernoulli" or config.network.name != "mlp":
        raise PyroVAEError("--semi-supervised's plain loop is M2 with the mlp network and a Bernoulli likelihood")
    cvae_overrides = common + ["condition.name=label", "objective.name=trace_elbo", "data.labels=0"]
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp_cvae:
        trainer = Trainer(config, tmp, progress=False)
        cvae = Trainer(load_config(config_name, cvae_overrides), tmp_cvae, progress=False)
        variants = {
            "pyro": lambda index: trainer.train_step(index).item(),
            "plain": PlainM2(trainer).train_step,
            "cvae": lambda index: cvae.train_step(index).item(),
        }
        batch_size = config.train.batch_size
        rates = interleaved_rates(variants, trainer, repeats, steps, batch_size)
    ratios = [p / q for p, q in zip(rates["pyro"], rates["plain"])]
    return {
        "config": config_name,
        "batch_size": batch_size,
        "labelled_batch": config.condition.options["labelled_batch"],
        "labels": config.data.options["labels"],
        **{f"{name}_images_per_s": statistics.median(v) for name, v in rates.items()},
        "ratio_plain": statistics.median(ratios),
        "ratio_plain_quartiles": statistics.quantiles(ratios, n=4)[::2],
    }


def parity(epochs, config_name, overrides, device, keep=None, overwrite=False):
    """Train the project's VAE (its Trainer) and the plain-PyTorch loop from the same initial weights
    for ``epochs`` epochs, interleaved epoch by epoch, the plain loop at the schedule's learning rate
    of each epoch; both are scored by the same test ELBO. With ``keep`` (a folder), both are kept as
    run folders ``keep/pyro`` and ``keep/plain`` that every command reads like any other run; runs already
    there are replaced only with ``overwrite``."""
    for name in ("pyro", "plain") if keep else ():  # before minutes of training
        if holds_run(Path(keep) / name) and not overwrite:
            raise PyroVAEError(
                f"{Path(keep) / name} holds a run; pass --overwrite to replace the runs that --keep names, "
                "or --keep another folder"
            )
    config = load_config(config_name, overrides + [f"train.epochs={epochs}", f"train.device={device}"])
    objective = config.objective
    if objective.name not in ("trace_elbo", "mean_field") or objective.options.get("num_particles", 1) != 1:
        raise PyroVAEError("--parity compares the one-sample ELBO; the plain loop has no other objective")
    if config.model.layers or config.condition.name != "none" or config.prior.name != "standard_normal":
        raise PyroVAEError("--parity's plain loop is the one-layer, unconditional VAE with an N(0, I) prior")
    check_diagonal(config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep) / "pyro" if keep else Path(tmp)
        trainer = Trainer(config, folder, overwrite=overwrite or not keep, progress=False)
        plain = PlainTrainer(trainer)
        n, batch_size = len(trainer.train_x), config.train.batch_size
        seconds, plain_metrics = {"pyro": 0.0, "plain": 0.0}, []
        for epoch in range(epochs):
            seconds["pyro"] += trainer.train_one_epoch()["seconds"]
            for group in plain.optimizer.param_groups:
                group["lr"] = config.train.lr * trainer.schedule.factor(epoch)
            order = torch.randperm(n, generator=trainer.generator, device=trainer.device)
            synchronize(trainer.device)
            started = time.perf_counter()
            plain_loss_sum = sum(
                plain.train_step(order[start : start + batch_size]) for start in range(0, n, batch_size)
            )
            synchronize(trainer.device)
            seconds["plain"] += time.perf_counter() - started
            plain_metrics.append(
                {
                    "epoch": epoch + 1,
                    "step": trainer.step,
                    "train_loss": plain_loss_sum / n,
                    "lr": group["lr"],
                    "seconds": time.perf_counter() - started,
                }
            )
            if (epoch + 1) % max(1, epochs // 10) == 0:
                print(
                    f"epoch {epoch + 1}: test ELBO pyro {trainer.metrics[-1].get('test_elbo', math.nan):.3f}, "
                    f"plain {test_elbo(plain.vae, trainer.experiment.test_x, trainer.experiment.test_y, 1000):.3f}",
                    flush=True,
                )
        trainer.release()
        test_x, test_y = trainer.experiment.test_x, trainer.experiment.test_y
        result = {
            "epochs": epochs,
            "dataset": config.data.name,
            "train_examples": n,
            "test_examples": len(test_x),
            "batch_size": batch_size,
            "lr": config.train.lr,
            "schedule": config.schedule.name,
            "pyro_test_elbo": test_elbo(trainer.vae, test_x, test_y, 1000),
            "plain_test_elbo": test_elbo(plain.vae, test_x, test_y, 1000),
            "pyro_images_per_s": epochs * n / seconds["pyro"],
            "plain_images_per_s": epochs * n / seconds["plain"],
        }
        if keep:
            plain_metrics[-1].update(test_elbo=result["plain_test_elbo"], test_examples=len(test_x))
            keep_plain(trainer, plain, Path(keep) / "plain", plain_metrics, overwrite)
    result["elbo_difference"] = result["pyro_test_elbo"] - result["plain_test_elbo"]
    result["throughput_ratio"] = result["pyro_images_per_s"] / result["plain_images_per_s"]
    return result


def discriminative(config_name, overrides, device):
    """The figure a generative classifier has to beat: an MLP of the encoder's size (x → network.hidden →
    classes, the network's activation) trained by cross-entropy on the training examples of known label
    (observed as the VAE observes them, binarized afresh each step where it binarizes dynamically), for
    as many steps of the same batch size as the VAE's epochs take over the whole training split (passes
    over the labelled examples, each in a new order, where ``data.labels`` keeps few), with the same Adam; returns its
    test accuracy on the observed test examples. On the dataset ``codes`` this is Kingma et al.'s M1."""
    config = load_config(config_name, list(overrides) + [f"train.device={device}"])
    experiment, options = build(config, device), config.network.options
    if config.network.name != "mlp":
        raise PyroVAEError("--discriminative builds an MLP of network.hidden; use a config with network.name = mlp")
    torch.manual_seed(config.train.seed)
    x_dim = math.prod(experiment.vae.spec.image_shape)
    sizes = [x_dim, *options["hidden"], experiment.data.num_classes]
    net = torch.nn.Sequential(torch.nn.Flatten(), mlp(sizes, activation_class(options["activation"]))).to(
        experiment.vae.device
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=config.train.lr, eps=config.train.adam_eps)
    generator = torch.Generator(experiment.vae.device).manual_seed(config.train.seed)
    likelihood, n, batch_size = experiment.vae.likelihood, len(experiment.train_x), config.train.batch_size
    labelled = torch.nonzero(experiment.train_y >= 0).flatten()
    if not len(labelled):
        raise PyroVAEError("--discriminative trains on labelled examples; this training split has none")
    started, steps, total = time.perf_counter(), 0, config.train.epochs * math.ceil(n / batch_size)
    while steps < total:  # passes over the labelled examples in a new order each, until the VAE's step count
        for index in labelled[torch.randperm(len(labelled), generator=generator, device=labelled.device)].split(
            batch_size
        )[: total - steps]:
            x = expand(experiment.train_x[index])
            x = likelihood.observe(x, generator) if likelihood.dynamic else x
            loss = F.cross_entropy(net(x), experiment.train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    with torch.no_grad():
        accuracy = (net(experiment.test_x).argmax(-1) == experiment.test_y).double().mean().item()
    return {
        "config": config_name,
        "dataset": config.data.name,
        "train_examples": n,
        "labelled_examples": len(labelled),
        "test_examples": len(experiment.test_x),
        "hidden": options["hidden"],
        "epochs": config.train.epochs,
        "test_accuracy": accuracy,
        "seconds": time.perf_counter() - started,
    }


def keep_plain(trainer, plain, folder, metrics, overwrite=False):
    """The plain loop's networks as a run folder (the project run's config and checkpoint, its weights
    swapped in, no optimizer state, its own ``metrics``), so that every command reads it like any run."""
    state = {
        **trainer.state([{"torch": torch.get_rng_state()}]),
        "model": plain.vae.state_dict(),
        "optimizer": None,
        "metrics": metrics,
    }
    lock = open_run_dir(folder, overwrite=overwrite)
    try:
        atomic_write(folder / "config.toml", to_toml(trainer.config))
        save_checkpoint(folder, state)
        write_metrics(folder, metrics)
    finally:
        lock.release()


def scaling(nproc, overrides, device, epochs=3):
    """Training images/s of one process against ``nproc`` processes (``torchrun`` on this machine), the
    same run config, batch size and data: the median epoch after the first (which traces the JIT), and
    the scaling efficiency rate_N / (N · rate_1). On the CPU the 1-process run uses every core and each of
    the N processes cores/N threads; on GPUs each process drives its own GPU."""
    config = load_config(None, list(overrides) + [f"train.device={device}", f"train.epochs={epochs}"])
    examples = len(load_data(config.data).train.images)
    cores = len(os.sched_getaffinity(0))
    flags = ["--quiet", "--device", device, "--epochs", str(epochs)] + [f for o in overrides for f in ("--set", o)]
    result = {
        "processes": nproc,
        "device": device,
        "train_examples": examples,
        "batch_size": config.train.batch_size,
        "epochs_timed": epochs - 1,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, nproc):
            launcher = (
                [sys.executable]
                if n == 1
                else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
            )
            threads = cores if device == "cpu" and n == 1 else max(1, cores // n)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            done = subprocess.run(
                launcher + ["-m", "pyro_vae", "train", "--runs-root", tmp, "--name", f"p{n}", *flags],
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode:
                raise PyroVAEError(f"the {n}-process run failed: {done.stderr.strip().splitlines()[-1:]}")
            metrics = [json.loads(line) for line in (Path(tmp) / f"p{n}" / "metrics.jsonl").read_text().splitlines()]
            rate = statistics.median(examples / m["seconds"] for m in metrics[1:] if "seconds" in m)
            result[f"images_per_s_{n}"] = rate
            result[f"threads_per_process_{n}"] = threads
            result[f"test_elbo_{n}"] = metrics[-1]["test_elbo"]
    result["speedup"] = result[f"images_per_s_{nproc}"] / result["images_per_s_1"]
    result["efficiency"] = result["speedup"] / nproc
    return result


def compare_run(run_dir, num_samples, device):
    """``pyro-vae evaluate`` of a trained run against plain_log_likelihood of the same networks on
    the same test images: both means, their difference and its standard error, and the evaluator's
    share of the float32 matrix-product limit (its FLOP/s: N·(encoder + K·decoder) forward FLOPs over its seconds)."""
    from ..report.evaluation import evaluate_run, run_examples
    from ..runs.folders import run_config

    config = run_config(run_dir)
    plain_kind = {
        "network.name": "mlp",
        "likelihood.name": "bernoulli",
        "prior.name": "standard_normal",
        "condition.name": "none",
        "model.layers": [],
    }
    found = {key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1]) for key in plain_kind}
    differ = [f"{key} = {found[key]!r}" for key, value in plain_kind.items() if found[key] != value]
    if differ:
        raise PyroVAEError(
            f"--compare-run's plain estimate is the one-layer MLP VAE with a Bernoulli likelihood and "
            f"N(0, I) prior; {run_dir} has {', '.join(differ)}"
        )
    summary = evaluate_run(run_dir, num_samples=num_samples, device=device)
    _, vae, x, _ = run_examples(run_dir, device=device)
    started = time.perf_counter()
    plain = torch.cat([plain_log_likelihood(vae, x[i : i + 100], num_samples, 50) for i in range(0, len(x), 100)])
    plain_seconds = time.perf_counter() - started
    # the plain estimate's Monte Carlo error equals the project's in distribution: same proposal, same K
    stderr = math.sqrt(2) * summary["log_likelihood_stderr"]
    flops = len(x) * (forward_flops(vae.encoder) + num_samples * forward_flops(vae.decoder))
    limit = matmul_limit(device, torch.float32, BATCH_SIZES)
    return {
        "run": str(run_dir),
        "num_examples": len(x),
        "num_samples": num_samples,
        "pyro_log_likelihood": summary["log_likelihood"],
        "plain_log_likelihood": plain.mean().item(),
        "difference": summary["log_likelihood"] - plain.mean().item(),
        "difference_stderr": stderr,
        "pyro_elbo": summary["elbo"],
        "pyro_seconds": summary["seconds"],
        "plain_seconds": plain_seconds,
        "flops": flops,
        "matmul_flops_per_s": limit,
        "share_of_limit": flops / summary["seconds"] / limit,
    }


def machine():
    """The processor's name (Linux's /proc/cpuinfo; the platform's word elsewhere) and the threads torch uses."""
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def earlier_runs(out):
    """The reports an earlier ``bench.json`` at ``out`` holds, oldest first (none where there is no file), or a
    one-line refusal where ``out`` is some other file: it is never overwritten."""
    path = Path(out)
    if not path.exists():
        return []
    try:
        earlier = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        earlier = None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("history", []), list):
        raise PyroVAEError(f"{out} exists and is not a pyro-vae bench.json; name another --out")
    return [*earlier.pop("history", []), earlier]


def record(out, report, kind):
    """Write ``report`` (of the bench ``kind``) to ``out`` with its date and machine, the earlier runs the file
    held kept under "history", so that runs on several days and machines sit side by side."""
    report.update(kind=kind, date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), machine=machine())
    atomic_write(out, json.dumps({**report, "history": earlier_runs(out)}, indent=2) + "\n")


def verdict(ratio, quartiles=None):
    """ "ahead", "level" or "behind" of a speed ratio (ours / the reference): ahead where its lower quartile
    (the ratio itself without quartiles) is at least 1, behind where its upper quartile is below 1."""
    low, high = quartiles or (ratio, ratio)
    return "ahead" if low >= 1 else "behind" if high < 1 else "level within the quartiles"


def config_throughput(config, overrides, device, quick, out):
    """The training throughput of ``config`` (a colour conv config, say) at its own batch size: the project's
    trainer against the plain and careful loops of ``TRAINING_VARIANTS``, float32 and bfloat16, as ratios."""
    batch_size = load_config(config, overrides).train.batch_size
    report = {
        "config": config,
        **machine_fields(device),
        "training": training_throughput(
            overrides, [batch_size], 2 if quick else 7, 2 if quick else 5, device, None, config
        ),
    }
    r = report["training"][batch_size]
    print(f"{device_line(report)}; config {config}, batch {batch_size}")
    for name, what in TRAINING_VARIANTS.items():
        if f"{name}_images_per_s" in r:
            print(f"  {name:>13}: {what:<75} {r[f'{name}_images_per_s']:>8.1f} img/s")
    print(ratios_text(r) + " (median [quartiles] of the repeats' ratios)")
    print_verdicts(report["training"], report["bfloat16_in_hardware"])
    record(out, report, "config")
    print(f"wrote {out}")
    return report


def ratios_text(r):
    """The ratios of one batch size's figures ``r``, each as "label median [quartiles]", comma-separated."""
    return ", ".join(
        f"{label} {r[key]:.3f} [{r[f'{key}_quartiles'][0]:.2f}–{r[f'{key}_quartiles'][1]:.2f}]"
        for key, (_, _, label, _) in RATIOS.items()
        if key in r
    )


def print_verdicts(training, native_bfloat16):
    """One line per ratio of ``training`` ({batch size: figures}): the figure, its quartiles and its verdict, the
    bfloat16 ones marked as emulated where the machine has no bfloat16 hardware (``native_bfloat16`` False)."""
    for batch_size, r in training.items():
        for key, (*_, label) in RATIOS.items():
            if label is None or key not in r:
                continue
            line = verdict_line(f"batch {batch_size}, {label}", r[key], r[f"{key}_quartiles"])
            emulated = "bf16" in key and not native_bfloat16
            print(line + " (bfloat16 emulated: says nothing of bfloat16 hardware)" if emulated else line)


def machine_fields(device):
    """What a report says of the machine it ran on: the device, whether it multiplies bfloat16 in hardware
    (``devices.bfloat16_in_hardware``), the versions of torch and Pyro."""
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "bfloat16_in_hardware": bfloat16_in_hardware(device),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }


def device_line(report):
    """The printed line of ``machine_fields`` in ``report``."""
    bfloat16 = "bfloat16 in hardware" if report["bfloat16_in_hardware"] else "bfloat16 emulated (no bfloat16 hardware)"
    return f"device: {report['device']}, {bfloat16}, torch {report['torch']}, pyro {report['pyro']}"


def verdict_line(label, ratio, quartiles):
    """ "label: ratio [quartiles]: verdict" (without the brackets where there are no quartiles)."""
    spread = f" [{quartiles[0]:.2f}–{quartiles[1]:.2f}]" if quartiles else ""
    return f"{label}: {ratio:.3f}{spread}: {verdict(ratio, quartiles)}"


def check_arguments(parity_epochs, compare, num_samples, nproc, config, keep, classifier, semi=False):
    """Refuse, before any measuring, a benchmark's arguments that do not fit together: at most one of the
    separate benchmarks (``--parity``, ``--compare-run``, ``--nproc``, ``--discriminative``), each
    number in its range, and the options that belong to one of them only with it."""
    modes = [
        flag
        for flag, given in (
            ("--parity", parity_epochs is not None),
            ("--compare-run", compare is not None),
            ("--nproc", nproc is not None),
            ("--discriminative", classifier),
            ("--semi-supervised", semi),
        )
        if given
    ]
    if len(modes) > 1:
        raise PyroVAEError(f"{' and '.join(modes)} are separate benchmarks; run them one at a time")
    if parity_epochs is not None and parity_epochs < 1:
        raise PyroVAEError(f"--parity must be a positive number of epochs, got {parity_epochs}")
    if nproc is not None and nproc < 2:
        raise PyroVAEError(f"--nproc compares 1 process with N ≥ 2, got {nproc}")
    if num_samples < 1:
        raise PyroVAEError(f"--num-samples must be positive, got {num_samples}")
    if keep is not None and parity_epochs is None:
        raise PyroVAEError("--keep keeps the two models that --parity trains; it needs --parity")
    if config is not None and (nproc is not None or compare is not None):
        raise PyroVAEError(
            "--nproc and --compare-run use the default config with --set overrides; --config goes with --parity, "
            "--discriminative, --semi-supervised, or alone (the training throughput of that config)"
        )


def main(
    quick=False,
    out="runs/bench.json",
    device="auto",
    parity_epochs=None,
    overrides=(),
    compare=None,
    num_samples=5000,
    nproc=None,
    config=None,
    keep=None,
    classifier=False,
    overwrite=False,
    semi=False,
):
    """Run the benchmark, print a table and write JSON to ``out``."""
    check_arguments(parity_epochs, compare, num_samples, nproc, config, keep, classifier, semi)
    if overwrite and keep is None:
        raise PyroVAEError("--overwrite replaces the runs that --keep names; it needs --keep")
    make_folder(Path(out).parent)  # before minutes of measuring
    earlier_runs(out)  # a file that is not a bench.json is refused now, not after them
    device = str(resolve_device(device))
    torch.manual_seed(0)
    if classifier or semi:
        result = (
            discriminative(config, overrides, device)
            if classifier
            else semi_supervised_speed(config or "mnist-m2", overrides, device, *((2, 3) if quick else ()))
        )
        print(json.dumps(result, indent=2))
        record(out, result, "discriminative" if classifier else "semi_supervised")
        return result
    if nproc is not None:
        if device == "cuda" and nproc > torch.cuda.device_count():
            raise PyroVAEError(f"--nproc {nproc} needs {nproc} GPUs; this machine has {torch.cuda.device_count()}")
        tiny = ["data.name=synthetic", "network.hidden=[32]", "model.z_dim=4", "train.batch_size=32"] if quick else []
        r = scaling(nproc, tiny + list(overrides), device, epochs=2 if quick else 4)
        print(f"{'processes':>10} {'img/s':>10} {'threads each':>13} {'test ELBO':>10}")
        for n in (1, nproc):
            print(
                f"{n:>10} {r[f'images_per_s_{n}']:>10.0f} {r[f'threads_per_process_{n}']:>13} {r[f'test_elbo_{n}']:>10.3f}"
            )
        print(
            f"speed-up {r['speedup']:.3f}, scaling efficiency {r['efficiency']:.3f} (batch {r['batch_size']}, "
            f"{r['train_examples']} examples, median of {r['epochs_timed']} epochs after the first)"
        )
        record(out, r, "scaling")
        return r
    if parity_epochs is not None or compare is not None:
        result = (
            compare_run(compare, num_samples, device)
            if compare
            else parity(parity_epochs, config, list(overrides), device, keep, overwrite)
        )
        print(json.dumps(result, indent=2))
        record(out, result, "compare_run" if compare else "parity")
        return result
    if config is not None:
        return config_throughput(config, list(overrides), device, quick, out)
    tiny = (["network.hidden=[32]", "model.z_dim=4"] if quick else []) + list(overrides)
    batch_sizes = [32] if quick else BATCH_SIZES

    def read_limits():
        return {
            name: matmul_limit(device, dtype, batch_sizes, seconds=0.1 if quick else 0.5)
            for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
        }

    limits = read_limits()
    report = {
        **machine_fields(device),
        "matmul_flops_per_s": limits,
        "training": training_throughput(tiny, batch_sizes, 2 if quick else 11, 3 if quick else 30, device, limits),
        "fixed_cost": fixed_cost(list(overrides), 2 if quick else 11, 3 if quick else 100, device),
        "evaluation": evaluator_speed(tiny, 20 if quick else 5000, 4 if quick else 100, 1 if quick else 9, device),
    }
    again = report["matmul_flops_per_s_after"] = read_limits()  # a second reading far from the first: a noisy machine
    report["evaluation"]["share_of_limit"] = (
        report["evaluation"]["flops"] / report["evaluation"]["pyro_seconds"] / limits["float32"]
    )
    print(device_line(report))
    print(
        f"matrix-product limit (best [B × 784] · [784 × 400], B = {', '.join(map(str, batch_sizes))}, either layout): "
        "float32 "
        f"{limits['float32'] / 1e12:.3f} TFLOP/s, bfloat16 {limits['bfloat16'] / 1e12:.3f} TFLOP/s (measured at start; "
        f"{again['float32'] / 1e12:.3f} and {again['bfloat16'] / 1e12:.3f} at the end)"
    )
    measured = [name for name in TRAINING_VARIANTS if f"{name}_images_per_s" in next(iter(report["training"].values()))]
    for name in measured:
        print(f"  {name:>13}: {TRAINING_VARIANTS[name]}")
    print(
        f"{'batch':>6} "
        + " ".join(f"{name:>13}" for name in measured)
        + "  (img/s, share of the limit; ratios: median [quartiles] of the repeats' ratios)"
    )
    for batch_size, r in report["training"].items():
        print(
            f"{batch_size:>6} "
            + " ".join(f"{r[f'{name}_images_per_s']:>7.0f} ({r[f'{name}_share_of_limit']:.0%})" for name in measured)
            + "   "
            + ratios_text(r)
            + ("" if r["pyro_uses_jit"] else "  (JIT unavailable: eager)")
        )
    f = report["fixed_cost"]
    extra = f["pyro_seconds_per_step"] - f["careful_seconds_per_step"]
    print(
        "fixed cost per step (width 8, batch 8, z of 2: no arithmetic left): "
        + ", ".join(f"{name.removesuffix('_seconds_per_step')} {seconds * 1e3:.2f} ms" for name, seconds in f.items())
        + f"; pyro's difference, {extra * 1e3:.2f} ms, is "
        + ", ".join(f"{extra * r['careful_images_per_s'] / b:.1%}" for b, r in report["training"].items())
        + f" of a careful step at batch {', '.join(map(str, report['training']))}"
    )
    if "compiled_seconds_per_step" in f:
        parts = []
        for precision, suffix in (("float32", ""), ("bfloat16", "_bf16")):
            ratio = f[f"compiled{suffix}_seconds_per_step"] / f[f"careful{suffix}_seconds_per_step"]
            parts.append(f"{precision} {ratio:.3f} ({'at or below' if ratio <= 1 else 'above'} the careful loop's)")
        print("fixed cost, compiled / careful: " + ", ".join(parts))
    e = report["evaluation"]
    print(
        f"log p(x), K={e['num_samples']}, {e['num_examples']} examples: pyro, one example after another as evaluate "
        f"runs them, {e['pyro_seconds']:.2f} s ({e['share_of_limit']:.0%} of the float32 limit); pyro on all at once "
        f"{e['pyro_batched_seconds']:.2f} s; pyro compiled (evaluate --compile) {e['pyro_compiled_seconds']:.2f} s, "
        f"after {e['compiled_build_seconds']:.1f} s of building"
        + ("" if e["compiled_in_use"] else " (it fell back to eager)")
        + f"; plain on all at once, chunk {e['chunk_size']}, {e['plain_seconds']:.2f} s; speed ratios (plain / pyro) "
        f"{e['speed_ratio']:.3f}, {e['batched_speed_ratio']:.3f} and {e['compiled_speed_ratio']:.3f}; "
        f"peak extra memory pyro {e['pyro_peak_extra_mb']:.0f} MB, plain {e['plain_peak_extra_mb']:.0f} MB"
    )
    print_verdicts(report["training"], report["bfloat16_in_hardware"])
    for label, key in (("evaluator", "speed_ratio"), ("evaluator --compile", "compiled_speed_ratio")):
        print(verdict_line(f"{label} (one stream per example) / plain estimate", e[key], e[f"{key}_quartiles"]))
    record(out, report, "throughput")
    print(f"wrote {out}")
    return report
