"""Training by stochastic variational inference, in one process or in several (``torchrun``).

Each step minimizes −ELBO(x) = −E_q[log p(x|z)] + β·KL(q(z|x) ‖ p(z)), summed over the global batch
of ``train.batch_size`` examples, β rising linearly over ``warmup_epochs`` (``poutine.scale`` on the
latent site). The objective is Pyro's ELBO in its ``nn.Module`` form (``VAELoss``), stepped by a
fused ``torch.optim.Adam``; with N processes the module is wrapped in ``DistributedDataParallel``.

N processes: every rank holds the data and draws the same permutation and the same binarization of
each global batch from the shared data stream, then takes its contiguous shard (sizes differ by at
most one; a last batch smaller than N is joined to the one before, so every example is seen once an
epoch). Each rank's loss is its shard's −ELBO times N: DDP averages gradients over N ranks, so every
rank steps with the gradient of the global batch's −ELBO, exactly as one process at the same batch.
The latent noise differs between ranks (rank r's stream is seeded from ``train.seed`` and r).

Where ``objective.jit`` is on (the default) steps run Pyro's JIT-compiled ELBO once it has been
traced and checked against the eager one, and eager steps cover a β warm-up; ``objective.compile`` runs
the ELBO compiled by inductor instead, on full batches: by default (``"auto"``) in runs of at least
``COMPILE_FROM_STEPS`` full batches, where its seconds of building pay. After every epoch the
test ELBO per example is logged and rank 0 writes a checkpoint atomically; SIGINT/SIGTERM on any
rank stop every rank after the same step, with a checkpoint; ``--resume`` continues bit-identically
on the CPU with the same number of processes. Pictures are drawn by ``train`` after training.
"""

import math
import signal
import threading
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .devices import allocation_line, bfloat16_in_hardware, forked_rng, free_memory, resolve_device
from .distributed import World
from .errors import Interrupted, PyroVAEError
from .infer.compiled import CompiledTrace_ELBO, tracing_failed
from .infer.objectives import OBJECTIVES, SemiSupervisedLoss, VAELoss
from .infer.optim import adam, load_adam_state
from .infer.schedules import SCHEDULES
from .progress import bar as progress_bar
from .progress import say
from .report import plots
from .report.board import Board
from .runs.config import (
    PRECISIONS,
    Config,
    absolute_paths,
    config_differences,
    config_from_dict,
    to_toml,
)
from .runs.datasets import TEST_SEED
from .runs.experiment import build, expand, seeded_batches
from .runs.files import RunLock, atomic_write, size_text
from .runs.folders import (
    load_weights,
    open_run_dir,
    resumed_checkpoint,
    save_checkpoint,
    write_metrics,
)
from .serial import PYRO_LOCK

COMPILE_FROM_STEPS = 10_000  # objective.compile = "auto": full-batch steps from which inductor's building pays


class Trainer:
    """Trains the VAE of ``config`` into ``run_dir``, or resumes the run saved there, as this process's
    rank of the ``torchrun`` world (or alone)."""

    def __init__(self, config, run_dir, resume=False, overwrite=False, progress=True):
        self.world = distributed.world()
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress and self.world.main
        self.device = distributed.device_for(resolve_device(config.train.device), self.world)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matrix products on GPUs that have them
        torch.manual_seed(config.train.seed)  # the param store is left alone: each VAE has names of its own
        self.experiment = build(config, self.device)
        self.vae, self.likelihood = self.experiment.vae, self.experiment.vae.likelihood
        self.train_x, self.train_y = self.experiment.train_x, self.experiment.train_y
        if config.train.batch_size < self.world.size:
            raise distributed.agreed_error(
                f"train.batch_size = {config.train.batch_size} is the global batch; "
                f"{self.world.size} processes need at least one example each"
            )
        self.generator = torch.Generator(self.device).manual_seed(config.train.seed)  # data order and binarization
        self.precision = PRECISIONS[config.train.precision]  # the steps' networks only: test figures stay float32
        if self.precision == torch.bfloat16 and not bfloat16_in_hardware(self.device) and self.world.main:
            hardware = "this GPU" if self.device.type == "cuda" else "this CPU (it has no AVX-512 BF16 or AMX)"
            warnings.warn(
                f"train.precision = bfloat16: {hardware} multiplies bfloat16 matrices in emulation, several times "
                "slower than float32 (train.precision = float32 avoids it)",
                stacklevel=2,
            )
        options = config.objective.options
        compiling = {key: False for key in ("jit", "compile") if key in options}
        self.eager_elbo = OBJECTIVES.build(config.objective.name, {**options, **compiling})
        self.semi_supervised = self.vae.conditioning.latent_label
        if self.semi_supervised:  # Kingma et al.'s M2: labelled and unlabelled examples, a classification term
            self.labelled = torch.nonzero(self.train_y >= 0).flatten()
            self.loss = SemiSupervisedLoss(self.vae, self.eager_elbo, self.vae.conditioning.alpha)
        else:
            self.loss = VAELoss(self.vae, self.eager_elbo)
        self.check_step_memory()
        self.jit_elbo = self.traced_elbo(dict(options))
        self.optimizer = adam(self.vae, config.train.lr, config.train.adam_eps)
        self.schedule = SCHEDULES.build(config.schedule.name, config.schedule.options)
        self.board = Board(config, self.run_dir) if config.train.tensorboard and self.world.main else None
        self.module = self.loss
        if self.world.size > 1:
            self.module = DistributedDataParallel(self.loss)
        self.epoch = self.step = self.position = 0
        self.loss_sum, self.permutation, self.metrics, self.stop_signal = 0.0, None, [], None
        self.lock = None
        if self.experiment.data.labelled is not None and self.progress:
            counts = self.experiment.label_counts
            say(
                f"data.labels = {int(counts.sum())}: kept {int(counts[0])} labels of each class (label_seed "
                f"{config.data.options['label_seed']}) and hid those of the other {int((self.train_y < 0).sum())} "
                "training examples"
            )
        state = distributed.on_main(lambda: self.open(resume, overwrite))
        if self.world.size > 1:  # each rank its own latent noise, seeded once the collectives of setting up are done
            torch.manual_seed(rank_seed(config.train.seed, self.world.rank))
        try:
            if state is not None:
                self.restore(state)
        except BaseException:  # a refused resume must not leave this process holding the run
            self.release()
            raise

    def open(self, resume, overwrite):
        """Rank 0: lock the run folder (creating it for a new run), read the checkpoint to resume from
        (None for a new run or one stopped before its first checkpoint) and write config.toml."""
        self.lock = RunLock(self.run_dir).acquire() if resume else open_run_dir(self.run_dir, overwrite)
        try:
            state = resumed_checkpoint(self.run_dir, self.config) if resume else None
            if state is not None:
                self.check_epochs(state)
            elif resume and self.progress:
                say(f"{self.run_dir} has no checkpoint yet (stopped before its first): training from the start")
            atomic_write(self.run_dir / "config.toml", to_toml(self.config))
            return state
        except BaseException:
            self.release()
            raise

    def check_epochs(self, state):
        """A resume trains up to train.epochs in all: refuse a total below what checkpoint ``state`` has begun
        (an epoch stopped midway counts), before anything in the run folder changes; say so where the run
        has trained them all."""
        done, midway = state["epoch"], state["position"] > 0
        if self.config.train.epochs < done + midway:
            raise PyroVAEError(
                f"{self.run_dir} has trained {done} epoch{'s' * (done != 1)}"
                f"{' and part of the next' if midway else ''}; --epochs is the total to reach, so pass "
                f"{done + midway} or more (got {self.config.train.epochs})"
            )
        if self.config.train.epochs == done and not midway and self.progress:
            say(
                f"{self.run_dir} has trained all {done} of its epochs: nothing to train "
                f"(--epochs {done + 10} would train 10 more)"
            )

    def release(self):
        if self.board is not None:
            self.board.close()
        if self.lock is not None:
            self.lock.release()

    @property
    def steps_per_epoch(self):
        """⌈n / batch⌉ global batches, one fewer where the last would have fewer examples than processes."""
        n, batch_size = len(self.train_x), self.config.train.batch_size
        steps = math.ceil(n / batch_size)
        return steps - 1 if steps > 1 and 0 < n % batch_size < self.world.size else steps

    def batch_end(self, start):
        """Where the global batch that begins at ``start`` ends: ``train.batch_size`` examples on, or the end
        of the epoch where fewer than one per process would be left over."""
        n = len(self.train_x)
        end = min(start + self.config.train.batch_size, n)
        return n if n - end < self.world.size else end

    def beta(self):
        """β at the current step: linear warm-up from β/warm-up-steps to β."""
        warmup_steps = self.config.train.warmup_epochs * self.steps_per_epoch
        return (
            self.config.train.beta * min(1.0, (self.step + 1) / warmup_steps)
            if warmup_steps
            else self.config.train.beta
        )

    def run(self):
        """Train until ``train.epochs``; returns the metrics, one dict per epoch."""
        # signals reach the main thread only; a trainer run from another thread is stopped by its caller
        main_thread = threading.current_thread() is threading.main_thread()
        handlers = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
        try:
            with warnings.catch_warnings():
                # a non-finite loss stops training with its step and the way out; Pyro's warning of it would come first
                warnings.filterwarnings("ignore", message="Encountered (NaN|[+-]?inf)", category=UserWarning)
                if self.config.train.epochs == 0:  # the run is its initial weights, to evaluate or resume
                    self.checkpoint()
                    if self.world.main:
                        write_metrics(self.run_dir, self.metrics)
                while self.epoch < self.config.train.epochs:
                    self.train_one_epoch()
        except (RuntimeError, distributed.PeerLost) as e:  # RuntimeError: DDP's all-reduce inside backward()
            if isinstance(e, RuntimeError) and not (self.world.size > 1 and distributed.is_collective_failure(e)):
                raise
            lost = distributed.lost(e) if isinstance(e, RuntimeError) else e
            raise distributed.PeerLost(
                f"{lost}; the last checkpoint is kept, resume with: pyro-vae train --resume "
                f"{self.run_dir} (torchrun --max-restarts does it by itself)"
            ) from None
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        return self.metrics

    def on_signal(self, signum, frame):
        """First SIGINT/SIGTERM: finish the step, checkpoint, stop. A second one stops at once
        (the last checkpoint on disk stays whole: it is written atomically)."""
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum

    def batch(self, index, generator):
        """This rank's share of the model's arguments for the global batch of training examples ``index``:
        (x,) or (x, y), x redrawn with ``generator`` where the likelihood binarizes dynamically (the whole
        batch on every rank, so that the draws do not depend on the number of processes)."""
        x = expand(self.train_x.index_select(0, index))
        if self.likelihood.dynamic:
            x = self.likelihood.observe(x, generator)
        begin, end = self.world.shard(0, len(index))
        x = x[begin:end]
        if self.semi_supervised:
            return (x, self.train_y.index_select(0, index[begin:end]), *self.labelled_batch(generator))
        return (x, self.train_y.index_select(0, index[begin:end])) if self.vae.spec.conditional else (x,)

    def labelled_batch(self, generator):
        """This rank's share of ``labelled_batch`` labelled training examples (x_l, y_l) drawn uniformly, with
        replacement, with ``generator``, for M2's classification term (empty where no example has a label)."""
        if not len(self.labelled):
            return self.train_x[:0].float(), self.train_y[:0]
        size = self.vae.conditioning.labelled_batch
        index = self.labelled[torch.randint(len(self.labelled), (size,), generator=generator, device=self.device)]
        x = expand(self.train_x.index_select(0, index))
        if self.likelihood.dynamic:
            x = self.likelihood.observe(x, generator)
        begin, end = self.world.shard(0, size)
        return x[begin:end], self.train_y.index_select(0, index[begin:end])

    def check_step_memory(self):
        """Refuse, before the run folder is made, a step that would not fit in the device's free memory:
        its activations, counted by ``AllocatedBytes`` on batches of 1 and 2 examples and extrapolated to
        this process's share of ``train.batch_size`` (twice, for the backward pass), plus the gradients
        and Adam's two moments (3 × the weights). Runs under a forked RNG on a generator of its own."""
        generator = torch.Generator(self.device).manual_seed(TEST_SEED)
        with forked_rng(self.device), pyro.validation_enabled(False):
            batches = {  # n examples in this process's share of each measured batch
                n: self.batch(torch.arange(min(n * self.world.size, len(self.train_x)), device=self.device), generator)
                for n in (1, 2)
            }
            fixed, per_example = allocation_line(lambda n: self.loss(*batches[n], beta=self.config.train.beta))
        local = math.ceil(self.config.train.batch_size / self.world.size)
        weights = sum(p.numel() * p.element_size() for p in self.vae.parameters())
        need = 3 * weights + 2 * (fixed + local * per_example)
        free = free_memory(self.device)
        if need > free:
            raise distributed.agreed_error(
                f"a training step needs about {size_text(need)} ({local} examples of "
                f"{size_text(2 * per_example)} each, with {self.config.objective.name}'s particles), more than the "
                f"{size_text(free)} free on {self.device.type}; lower train.batch_size, objective.num_particles or the "
                "network sizes"
            )

    def full_batches(self):
        """The full-batch steps the whole run takes: ``train.epochs`` × ⌊N / ``train.batch_size``⌋ (at least one
        an epoch: a batch larger than the N training examples is all of them)."""
        return self.config.train.epochs * max(1, len(self.train_x) // self.config.train.batch_size)

    def traced_elbo(self, options):
        """The objective that steps run once it is checked (``checked_jit``), for the objective's ``options``:
        compiled by inductor where ``compile`` is true, or ``"auto"`` and the run takes at least
        ``COMPILE_FROM_STEPS`` full batches (``full_batches``); otherwise, or where the compiled one fails its
        check, Pyro's JIT where ``jit`` is on; None (eager steps) where neither is on or both fail."""
        name, steps = self.config.objective.name, self.full_batches()
        if options.get("compile") == "auto":
            options["compile"] = options["jit"] and steps >= COMPILE_FROM_STEPS
            if options["compile"] and self.progress:
                say(
                    f"objective.compile = auto: {steps:,} full batches, so the step is compiled by inductor "
                    "(seconds of building, once; objective.compile = false skips it)"
                )
        if options.get("compile"):
            elbo = self.checked_jit(OBJECTIVES.build(name, options), "Pyro's JIT instead" if options["jit"] else None)
            if elbo is not None:
                return elbo
            options["compile"] = False
        return self.checked_jit(OBJECTIVES.build(name, options)) if options.get("jit") else None

    def checked_jit(self, elbo, fallback=None):
        """``elbo``, the JIT or compiled objective, traced here at the final β on the first training batch,
        then checked on a batch of other examples, of another size for the JIT (whose one graph serves every
        size) and of the same size for the compiled objective (a graph per shape): from the same random draws,
        the traced and the eager objective must give the same loss and the same gradient. None, with a
        warning, where tracing fails or the losses differ (say, a component whose Python control flow or Python
        numbers depend on tensor values): training goes on with ``fallback`` (the warning names it; None:
        eager). Runs under a forked RNG and leaves no gradients behind, so a resumed run stays bit-identical
        to an uninterrupted one."""
        n = len(self.train_x)
        size = min(self.config.train.batch_size, n)
        generator = torch.Generator(self.device).manual_seed(TEST_SEED)
        traced = self.batch(torch.arange(size, device=self.device), generator)
        checked_size = size if isinstance(elbo, CompiledTrace_ELBO) else max(self.world.size, size // 2)
        checked = self.batch(torch.arange(n - checked_size, n, device=self.device), generator)
        beta, losses, gradients, problem = self.config.train.beta, [], [], None
        params = [p for p in self.vae.parameters() if p.requires_grad]
        with forked_rng(self.device), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch.jit.trace` is deprecated", category=FutureWarning)
            try:
                with pyro.validation_enabled(False), self.vae.autocast(self.precision):
                    self.loss.elbo = elbo  # one module, one bound model and guide: Pyro's JIT keys by their ids
                    self.loss(*traced, beta=beta)
                    for objective in (elbo, self.eager_elbo):
                        torch.manual_seed(TEST_SEED)
                        self.loss.elbo = objective
                        loss = self.loss(*checked, beta=beta)
                        grads = torch.autograd.grad(loss, params, allow_unused=True)  # into no .grad: none left behind
                        losses.append(loss.item())
                        gradients.append(
                            torch.cat(
                                [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]
                            )
                        )
            except Exception as error:  # tracing fails in many ways: unsupported ops, Python values, new params
                problem = tracing_failed(error)
            finally:
                self.loss.elbo = self.eager_elbo
        # the gradients agree to 10⁻³ of their norm, or to one rounding of the step's precision where that is coarser
        tolerance = max(1e-3, torch.finfo(self.precision).eps) if self.precision is not None else 1e-3
        if problem is None and not math.isclose(*losses, rel_tol=1e-4, abs_tol=1e-2):
            problem = f"the traced loss {losses[0]:.6g} differs from the eager loss {losses[1]:.6g} on the same draws"
        elif problem is None and (gradients[0] - gradients[1]).norm() > tolerance * gradients[1].norm() + 1e-6:
            ratio = (gradients[0].norm() / gradients[1].norm()).item()
            problem = (
                f"the traced gradient differs from the eager one on the same draws (norm {ratio:.3g}× the eager one's)"
            )
        if problem is not None:
            if self.world.main:
                option = "compile" if isinstance(elbo, CompiledTrace_ELBO) else "jit"
                instead = f"with {fallback}" if fallback else f"without {option.upper()}"
                warnings.warn(
                    f"objective.{option}: {problem}; training {instead} (objective.{option}=false skips this attempt)",
                    stacklevel=3,
                )
            return None
        return elbo

    def train_step(self, index):
        """One step on the global batch of training examples ``index``: this rank's shard's −ELBO times N
        backpropagated (DDP averages the N gradients into the global batch's), clipping, Adam. Returns
        this rank's −ELBO (a 0-dim tensor). The JIT objective runs once β has reached its final value
        (it was traced at that β); the compiled one, on full batches only (its graph has their shape)."""
        beta = self.beta()
        traced = self.jit_elbo is not None and beta == self.config.train.beta
        if isinstance(self.jit_elbo, CompiledTrace_ELBO):
            traced = traced and len(index) == min(self.config.train.batch_size, len(self.train_x))
        self.loss.elbo = self.jit_elbo if traced else self.eager_elbo
        args = self.batch(index, self.generator)
        with (
            pyro.validation_enabled(False),
            self.vae.autocast(self.precision),
        ):  # the data were checked once when loaded
            loss = self.module(*args, beta=beta)
        (loss * self.world.size if self.world.size > 1 else loss).backward()
        if self.config.train.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), self.config.train.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def agree(self, loss):
        """(the global batch's −ELBO, the signal that stops every rank after this step or None), the
        same on every rank: one all-reduce of [loss, signal]."""
        if self.world.size == 1:
            return loss.item(), self.stop_signal
        shared = distributed.all_sum(torch.tensor([loss.item(), float(self.stop_signal or 0)], dtype=torch.float64))
        stop = None if shared[1] == 0 else self.stop_signal or signal.SIGTERM
        return shared[0].item(), stop

    @property
    def lr(self):
        """The learning rate of the current epoch: train.lr times the schedule's factor."""
        return self.config.train.lr * self.schedule.factor(self.epoch)

    def train_one_epoch(self):
        """Train the next epoch and log it (test ELBO, checkpoint, metrics): returns its record, one line of
        metrics.jsonl, with its ``seconds``. What ``run`` repeats, and what the benchmark times."""
        self.train_epoch()
        self.end_epoch()
        return self.metrics[-1]

    def train_epoch(self):
        n = len(self.train_x)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        if self.permutation is None:
            self.permutation = torch.randperm(n, generator=self.generator, device=self.device)
        done = min(math.ceil(self.position / self.config.train.batch_size), self.steps_per_epoch)
        bar = progress_bar(
            total=self.steps_per_epoch,
            initial=done,
            enabled=self.progress,
            desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}",
            unit="step",
            leave=False,
        )
        started = time.perf_counter()
        while self.position < n:
            end = self.batch_end(self.position)
            loss, stop = self.agree(self.train_step(self.permutation[self.position : end]))
            if not math.isfinite(loss):
                raise distributed.agreed_error(
                    f"loss became {loss} at epoch {self.epoch + 1} step {self.step + 1}; {self.way_out()}"
                )
            self.loss_sum += loss
            self.position, self.step = end, self.step + 1
            bar.update()
            bar.set_postfix(loss=f"{self.loss_sum / self.position:.2f}")
            if stop is not None:
                bar.close()
                self.checkpoint()
                raise Interrupted(
                    f"{signal.Signals(stop).name}: stopped at epoch {self.epoch + 1} step {self.step} with a checkpoint "
                    f"saved; resume with: pyro-vae train --resume {self.run_dir}",
                    128 + stop,
                )
            if self.config.train.checkpoint_every and self.step % self.config.train.checkpoint_every == 0:
                self.checkpoint()
        bar.close()
        self.epoch_seconds = time.perf_counter() - started

    def end_epoch(self):
        train = self.config.train
        record = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": self.loss_sum / len(self.train_x),
            "lr": self.lr,
            "seconds": self.epoch_seconds,
        }
        if (self.epoch + 1) % train.test_every == 0 or self.epoch + 1 == train.epochs:
            n = train.test_examples or len(self.experiment.test_x)
            record["test_elbo"] = test_elbo(
                self.vae, self.experiment.test_x[:n], self.experiment.test_y[:n], train.eval_batch_size, self.world
            )
            record["test_examples"] = min(n, len(self.experiment.test_x))
        self.metrics.append(record)
        if self.board is not None:
            self.board.epoch(record, self.vae, self.experiment.test_x, self.experiment.test_y, self.beta())
        self.epoch, self.position, self.loss_sum, self.permutation = self.epoch + 1, 0, 0.0, None
        self.checkpoint()
        if self.world.main:
            write_metrics(self.run_dir, self.metrics)
        if self.progress:
            test = f"  test ELBO {record['test_elbo']:9.3f}" if "test_elbo" in record else ""
            say(
                f"epoch {record['epoch']:>4}  train loss {record['train_loss']:9.3f}{test}  ({record['seconds']:.1f} s)"
            )

    def checkpoint(self):
        """Every rank sends its random state; rank 0 writes the checkpoint."""
        if not all(torch.isfinite(p).all() for p in self.vae.parameters()):
            raise distributed.agreed_error(
                f"parameters became non-finite at epoch {self.epoch + 1} step {self.step}; {self.way_out()}"
            )
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        ranks = distributed.all_gather(rng)
        if self.world.main:
            save_checkpoint(self.run_dir, self.state(ranks))

    def way_out(self):
        """What to do after a non-finite loss: resume from the last checkpoint with a lower learning rate or
        with clipping (both may change on resume), or start again where there is no checkpoint yet."""
        lower = f"--lr {self.config.train.lr / 10:g}"
        if self.config.train.lr <= 1e-6:
            return (
                f"the learning rate is {self.config.train.lr:g} already, so a lower one will not help: look for the "
                "cause in the settings (train.beta, the likelihood's scale, the prior) or the data"
            )
        if (self.run_dir / "checkpoint.pt").is_file():
            return (
                f"the last good checkpoint is kept; resume it with a lower learning rate or clipping: "
                f"pyro-vae train --resume {self.run_dir} {lower} (or --set train.clip_norm=10)"
            )
        return (
            f"no checkpoint was written yet; start again with a lower learning rate or clipping: "
            f"pyro-vae train --resume {self.run_dir} {lower} (or --set train.clip_norm=10)"
        )

    def state(self, ranks):
        """The training state as a checkpoint: weights, Adam, position in the epoch and its permutation, the
        random streams (every rank's), metrics, and what rebuilds the model. ``restore`` reads it back."""
        rng = {**ranks[0], "data": self.generator.get_state()}
        if len(ranks) > 1:
            rng["ranks"] = ranks
        return {
            "config": self.config.to_dict(),
            "image_shape": list(self.vae.spec.image_shape),
            "num_classes": self.vae.spec.num_classes,
            "label_counts": self.experiment.label_counts,
            "labelled": self.experiment.data.labelled,  # the training examples whose labels data.labels kept
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "position": self.position,
            "loss_sum": self.loss_sum,
            "permutation": self.permutation,
            "metrics": self.metrics,
            "rng": rng,
            "processes": self.world.size,
        }

    def restore(self, state):
        """Continue from a checkpoint (``state``): rank r takes rank r's random streams where the run had as
        many processes as now; with another number it draws fresh ones and the run continues, though no
        longer bit-identical to an uninterrupted one."""
        load_weights(self.vae, state, self.run_dir)
        if state["optimizer"] is not None:
            load_adam_state(self.optimizer, state["optimizer"], self.config.train.lr)
        self.epoch, self.step, self.position = state["epoch"], state["step"], state["position"]
        self.loss_sum, self.metrics = state["loss_sum"], state["metrics"]
        self.permutation = None if state["permutation"] is None else state["permutation"].to(self.device)
        changed = config_differences(state["config"], self.config.to_dict())
        if changed:  # settings a resume may change (RESUMABLE_KEYS), recorded where they took effect
            self.metrics.append(
                {
                    "event": "resume",
                    "epoch": self.epoch,
                    "step": self.step,
                    "changed": {key: list(values) for key, values in changed.items()},
                }
            )
        rng = state["rng"]
        processes = state.get("processes", 1)
        if processes == self.world.size:
            mine = rng["ranks"][self.world.rank] if self.world.size > 1 else rng
            torch.set_rng_state(mine["torch"].cpu())
            if "cuda" in mine and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"].cpu(), self.device)
        else:
            torch.manual_seed(rank_seed(self.config.train.seed + self.step, self.world.rank))
            if self.progress:
                say(
                    f"resuming a run of {processes} process(es) with {self.world.size}: it continues with fresh "
                    "latent noise, no longer bit-identical to an uninterrupted run"
                )
        self.generator.set_state(rng["data"].cpu())
        if self.world.main:
            write_metrics(self.run_dir, self.metrics)


def rank_seed(seed, rank):
    """The seed of rank r's latent noise (N > 1 processes): ``seed`` for rank 0, another for every other rank,
    different in the low 32 bits that PyTorch's CPU generator keeps (rank × 0x7F4A7C15, odd, mod 2³²)."""
    return (seed + rank * 0x9E3779B97F4A7C15) % 2**64


@torch.no_grad()
def test_elbo(vae, x, y, batch_size, world=World()):
    """Mean ELBO per example over x [N, …] (labels y [N] used by a conditional VAE),
    E_q[log p(x|z)] − KL(q ‖ p) with the KL analytic where registered (one stochastic layer), drawn with fixed noise (batch j
    seeded by TEST_SEED + j) so that epochs, runs and numbers of processes compare; with several
    processes rank r scores batches r, r + N, … and the sums are added. The caller's random stream
    is left untouched."""
    # the KL in closed form where it is one latent's, reparameterized; sampled where a layer depends on
    # another or the guide's draws carry no gradient (TraceMeanField_ELBO refuses those)
    analytic = len(vae.latent_sites) == 1 and vae.reparameterize
    elbo = (TraceMeanField_ELBO if analytic else Trace_ELBO)(max_plate_nesting=1)
    if vae.conditioning.latent_label:  # M2: the unknown label summed out, a bound on log p(x)
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
    total = torch.zeros((), dtype=torch.float64)
    for args in seeded_batches(vae, x, y, batch_size, world.rank, world.size):
        total -= elbo.loss(vae.model, vae.guide, *args)
    return distributed.all_sum(total).item() / len(x)


def train(config, run_dir, resume=False, overwrite=False, progress=True):
    """Train (or resume) the run in ``run_dir`` and draw its pictures; returns the trained VAE. An existing
    run is replaced only with ``overwrite=True``; the folder is locked against other processes while this
    one trains. Under ``torchrun`` every rank calls this; rank 0 writes the files. ``config`` is checked
    again here, and a data root or path in it is stored absolute, so the run reads its data from any
    working folder. Calls from several threads run one after another (``serial.PYRO_LOCK``)."""
    if not isinstance(config, Config):
        raise PyroVAEError(
            f"train takes a Config (pyro_vae.load_config(name, overrides)), not a {type(config).__name__}"
        )
    config = absolute_paths(
        config_from_dict(config.to_dict())
    )  # checked again: a Config's fields can be set to anything
    with PYRO_LOCK:
        trainer = Trainer(config, run_dir, resume=resume, overwrite=overwrite, progress=progress)
        try:
            metrics = trainer.run()
            if trainer.world.main:
                e = trainer.experiment
                plots.training_figures(trainer.vae, trainer.run_dir, metrics, e.test_x, e.test_y)
        finally:
            trainer.release()
    return trainer.vae
