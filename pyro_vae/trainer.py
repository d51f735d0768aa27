"""Training by stochastic variational inference: ``pyro.infer.SVI`` with the configured ELBO and Adam.

Each step minimizes −ELBO(x) = −E_q[log p(x|z)] + β·KL(q(z|x) ‖ p(z)) (summed over the batch),
β rising linearly over ``warmup_epochs`` (``poutine.scale`` on the latent site). The whole dataset
sits on the training device as one tensor and is batched by index; Bernoulli likelihoods redraw
binary images from the grey ones at each use (dynamic binarization). Where ``objective.jit`` is on
(the default) steps run Pyro's JIT-compiled ELBO once it has been traced and checked against the
eager one, and eager steps cover a β warm-up. After every epoch the test
ELBO per example is logged and a checkpoint is written atomically; SIGINT/SIGTERM finish the
current step, checkpoint and stop; ``--resume`` continues bit-identically on the CPU.
"""
import math
import signal
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from tqdm.auto import tqdm

from . import plots
from .config import config_differences, to_toml
from .datasets import TEST_SEED, load_data, observed_split
from .errors import Interrupted, PyroVAEError
from .model import build_vae
from .objectives import OBJECTIVES
from .optim import GroupedAdam
from .devices import forked_rng, resolve_device
from .files import RunLock, atomic_write
from .runs import load_checkpoint, load_weights, open_run_dir, save_checkpoint, write_metrics


class Trainer:
    """Trains the VAE of ``config`` into ``run_dir``, or resumes the run saved there."""

    def __init__(self, config, run_dir, resume=False, overwrite=False, progress=True):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        self.device = resolve_device(config.train.device)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matrix products on GPUs that have them
        torch.manual_seed(config.train.seed)  # the param store is left alone: each VAE has names of its own
        data = load_data(config.data)
        self.vae = build_vae(config, data.image_shape, data.num_classes, self.device)
        self.likelihood = self.vae.likelihood
        self.generator = torch.Generator(self.device).manual_seed(config.train.seed)
        self.test_x, self.test_y = observed_split(data, self.likelihood, "test", self.device)
        if self.likelihood.dynamic:
            self.train_x, self.train_y = data.train.images.to(self.device), data.train.labels.to(self.device)
        else:
            self.train_x, self.train_y = observed_split(data, self.likelihood, "train", self.device)
        self.label_counts = torch.bincount(data.train.labels, minlength=data.num_classes)
        self.optim = GroupedAdam(config.train.lr, config.train.clip_norm)
        options = config.objective.options
        self.eager_elbo = OBJECTIVES.build(config.objective.name, {**options, "jit": False} if "jit" in options else options)
        # one bound-method object each: Pyro's JIT keys its compiled loss by id(model) and id(guide)
        self.model, self.guide = self.vae.model, self.vae.guide
        self.svi = SVI(self.model, self.guide, self.optim, self.eager_elbo)
        self.jit_svi = self.compiled_svi(OBJECTIVES.build(config.objective.name, options)) if options.get("jit") else None
        self.epoch = self.step = self.position = 0
        self.loss_sum, self.permutation, self.metrics, self.stop_signal = 0.0, None, [], None
        self.lock = RunLock(self.run_dir).acquire() if resume else open_run_dir(self.run_dir, overwrite)
        try:
            if resume:
                for torn in self.run_dir.glob(".*.tmp"):  # left by a write that was killed midway
                    torn.unlink()
                if (self.run_dir / "checkpoint.pt").is_file():
                    self.restore(load_checkpoint(self.run_dir, config, self.device))
                elif progress:
                    tqdm.write(f"{self.run_dir} has no checkpoint yet (stopped before its first): training from the start")
            atomic_write(self.run_dir / "config.toml", to_toml(config))
        except BaseException:  # a refused resume must not leave this process holding the run
            self.lock.release()
            raise

    @property
    def steps_per_epoch(self):
        return math.ceil(len(self.train_x) / self.config.train.batch_size)

    def beta(self):
        """β at the current step: linear warm-up from β/warm-up-steps to β."""
        warmup_steps = self.config.train.warmup_epochs * self.steps_per_epoch
        return self.config.train.beta * min(1.0, (self.step + 1) / warmup_steps) if warmup_steps else self.config.train.beta

    def run(self):
        """Train until ``train.epochs``; returns the metrics, one dict per epoch."""
        handlers = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.epoch < self.config.train.epochs:
                self.train_epoch()
                self.end_epoch()
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        plots.training_figures(self.vae, self.run_dir, self.metrics, self.test_x, self.test_y)
        return self.metrics

    def on_signal(self, signum, frame):
        """First SIGINT/SIGTERM: finish the step, checkpoint, stop. A second one stops at once
        (the last checkpoint on disk stays whole: it is written atomically)."""
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum

    def batch(self, index, generator):
        """The model's arguments for training examples ``index``: (x,) or (x, y), x redrawn with
        ``generator`` where the likelihood binarizes dynamically."""
        x = self.train_x.index_select(0, index)
        if self.likelihood.dynamic:
            x = self.likelihood.observe(x, generator)
        return (x, self.train_y.index_select(0, index)) if self.vae.spec.conditional else (x,)

    def compiled_svi(self, elbo):
        """SVI with the JIT objective ``elbo``, traced here at the final β on the first training batch,
        then checked on a batch of other examples and another size: from the same random draws, the
        traced and the eager objective must give the same loss. None, with a warning, where tracing
        fails or the losses differ (say, a component whose Python control flow or Python numbers
        depend on tensor values), and training stays eager. Runs under a forked RNG and leaves no
        gradients behind, so a resumed run stays bit-identical to an uninterrupted one."""
        n = len(self.train_x)
        size = min(self.config.train.batch_size, n)
        generator = torch.Generator(self.device).manual_seed(TEST_SEED)
        traced = self.batch(torch.arange(size, device=self.device), generator)
        checked = self.batch(torch.arange(n - max(1, size // 2), n, device=self.device), generator)
        beta, losses, problem = self.config.train.beta, [], None
        with forked_rng(self.device), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch.jit.trace` is deprecated", category=FutureWarning)
            try:
                with pyro.validation_enabled(False):
                    elbo.loss_and_grads(self.model, self.guide, *traced, beta=beta)
                    for objective in (elbo, self.eager_elbo):
                        torch.manual_seed(TEST_SEED)
                        losses.append(objective.loss_and_grads(self.model, self.guide, *checked, beta=beta))
            except Exception as error:  # tracing fails in many ways: unsupported ops, Python values, new params
                first_line = str(error).partition("\n")[0]  # Pyro appends whole trace-shape tables
                problem = f"tracing failed ({type(error).__name__}: {first_line})"
            finally:
                for parameter in self.vae.parameters():
                    parameter.grad = None
        if problem is None and not math.isclose(*losses, rel_tol=1e-4, abs_tol=1e-2):
            problem = f"the traced loss {losses[0]:.6g} differs from the eager loss {losses[1]:.6g} on the same draws"
        if problem is not None:
            warnings.warn(f"objective.jit: {problem}; training without JIT (objective.jit=false skips this attempt)", stacklevel=3)
            return None
        return SVI(self.model, self.guide, self.optim, elbo)

    def train_step(self, index):
        """One SVI step on the training examples ``index``; returns the batch's −ELBO (a float).
        The JIT objective runs once β has reached its final value (it was traced at that β)."""
        beta = self.beta()
        svi = self.jit_svi if self.jit_svi is not None and beta == self.config.train.beta else self.svi
        with pyro.validation_enabled(False):  # the data were checked once when loaded
            return svi.step(*self.batch(index, self.generator), beta=beta)

    def train_epoch(self):
        n, batch_size = len(self.train_x), self.config.train.batch_size
        if self.permutation is None:
            self.permutation = torch.randperm(n, generator=self.generator, device=self.device)
        bar = tqdm(
            total=self.steps_per_epoch, initial=self.position // batch_size, disable=not self.progress,
            desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}", unit="step", leave=False,
        )
        started = time.perf_counter()
        while self.position < n:
            index = self.permutation[self.position : self.position + batch_size]
            loss = self.train_step(index)
            if not math.isfinite(loss):
                raise PyroVAEError(f"loss became {loss} at epoch {self.epoch + 1} step {self.step + 1}; {self.way_out()}")
            self.loss_sum += loss
            self.position += len(index)
            self.step += 1
            bar.update()
            bar.set_postfix(loss=f"{self.loss_sum / self.position:.2f}")
            if self.stop_signal is not None:
                bar.close()
                self.checkpoint()
                name = signal.Signals(self.stop_signal).name
                raise Interrupted(
                    f"{name}: stopped at epoch {self.epoch + 1} step {self.step} with a checkpoint saved; "
                    f"resume with: pyro-vae train --resume {self.run_dir}",
                    128 + self.stop_signal,
                )
            if self.config.train.checkpoint_every and self.step % self.config.train.checkpoint_every == 0:
                self.checkpoint()
        bar.close()
        self.epoch_seconds = time.perf_counter() - started

    def end_epoch(self):
        record = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": self.loss_sum / len(self.train_x),
            "test_elbo": self.test_elbo(),
            "seconds": self.epoch_seconds,
        }
        self.metrics.append(record)
        self.epoch, self.position, self.loss_sum, self.permutation = self.epoch + 1, 0, 0.0, None
        self.checkpoint()
        write_metrics(self.run_dir, self.metrics)
        if self.progress:
            tqdm.write(
                f"epoch {record['epoch']:>4}  train loss {record['train_loss']:9.3f}  "
                f"test ELBO {record['test_elbo']:9.3f}  ({record['seconds']:.1f} s)"
            )

    def test_elbo(self):
        return test_elbo(self.vae, self.test_x, self.test_y, self.config.train.eval_batch_size)

    def checkpoint(self):
        if not all(torch.isfinite(p).all() for p in self.vae.parameters()):
            raise PyroVAEError(f"parameters became non-finite at epoch {self.epoch + 1} step {self.step}; {self.way_out()}")
        rng = {"torch": torch.get_rng_state(), "data": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.run_dir, {
            "config": self.config.to_dict(),
            "image_shape": list(self.vae.spec.image_shape),
            "num_classes": self.vae.spec.num_classes,
            "label_counts": self.label_counts,
            "model": self.vae.state_dict(),
            "optimizer": self.optim.get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "position": self.position,
            "loss_sum": self.loss_sum,
            "permutation": self.permutation,
            "metrics": self.metrics,
            "rng": rng,
        })

    def way_out(self):
        """What to do after a non-finite loss: resume from the last checkpoint with a lower learning rate or
        with clipping (both may change on resume), or start again where there is no checkpoint yet."""
        lower = f"--lr {self.config.train.lr / 10:g}"
        if (self.run_dir / "checkpoint.pt").is_file():
            return (f"the last good checkpoint is kept; resume it with a lower learning rate or clipping: "
                    f"pyro-vae train --resume {self.run_dir} {lower} (or --set train.clip_norm=10)")
        return (f"no checkpoint was written yet; start again with a lower learning rate or clipping: "
                f"pyro-vae train --resume {self.run_dir} {lower} (or --set train.clip_norm=10)")

    def restore(self, state):
        load_weights(self.vae, state, self.run_dir)
        self.optim.set_state(state["optimizer"])
        self.epoch, self.step, self.position = state["epoch"], state["step"], state["position"]
        self.loss_sum, self.permutation, self.metrics = state["loss_sum"], state["permutation"], state["metrics"]
        changed = config_differences(state["config"], self.config.to_dict())
        if changed:  # settings a resume may change (RESUMABLE_KEYS), recorded where they took effect
            self.metrics.append({"event": "resume", "epoch": self.epoch, "step": self.step,
                                 "changed": {key: list(values) for key, values in changed.items()}})
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.generator.set_state(state["rng"]["data"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        write_metrics(self.run_dir, self.metrics)


@torch.no_grad()
def test_elbo(vae, x, y, batch_size):
    """Mean ELBO per example over x [N, …] (labels y [N] used by a conditional VAE),
    E_q[log p(x|z)] − KL(q ‖ p) with the KL analytic where registered, drawn with fixed noise so that
    epochs and runs compare; the caller's random stream is left untouched."""
    elbo = TraceMeanField_ELBO(max_plate_nesting=1)
    total = 0.0
    with forked_rng(vae.device):
        torch.manual_seed(TEST_SEED)
        for start in range(0, len(x), batch_size):
            args = (x[start : start + batch_size],)
            if vae.spec.conditional:
                args += (y[start : start + batch_size],)
            total -= elbo.loss(vae.model, vae.guide, *args)
    return total / len(x)


def train(config, run_dir, resume=False, overwrite=False, progress=True):
    """Train (or resume) the run in ``run_dir``; returns the trained VAE. An existing run is replaced
    only with ``overwrite=True``; the folder is locked against other processes while this one trains."""
    trainer = Trainer(config, run_dir, resume=resume, overwrite=overwrite, progress=progress)
    try:
        trainer.run()
    finally:
        trainer.lock.release()
    return trainer.vae
