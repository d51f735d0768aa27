"""TensorBoard logging of a run (``train.tensorboard = true``; the optional extra ``pip install -e ".[tensorboard]"``).

Into ``RUN/tensorboard/``, through ``torch.utils.tensorboard``: the run's config as text once; every
epoch the train loss, the learning rate and β, and, on the epochs that score the test set, the test
ELBO with its two parts, E_q[log p(x|z)] (reconstruction) and the rest (the KL term, so that the two
add up to the ELBO); every ``train.tensorboard_images_every`` epochs and after the last, test digits
with their reconstructions and samples decoded from z ~ p(z) (completions of test digits for a
condition on part of the image).
"""

import pyro
import torch
from pyro import poutine
from torchvision.utils import make_grid

from ..devices import forked_rng
from ..errors import PyroVAEError
from ..runs.config import to_toml
from ..runs.datasets import TEST_SEED
from ..runs.experiment import seeded_batches
from . import plots

INSTALL = 'pip install -e ".[tensorboard]"'


class Board:
    """The run's TensorBoard writer (rank 0 only)."""

    def __init__(self, config, run_dir):
        """Checks that TensorBoard is installed; the writer (and RUN/tensorboard) comes with the first epoch."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PyroVAEError(f"train.tensorboard needs the tensorboard package: {INSTALL}") from None
        self.config, self.run_dir, self.make_writer, self._writer = config, run_dir, SummaryWriter, None

    @property
    def writer(self):
        if self._writer is None:
            self._writer = self.make_writer(log_dir=str(self.run_dir / "tensorboard"))
            self._writer.add_text("config", "```\n" + to_toml(self.config) + "\n```", 0)
        return self._writer

    def epoch(self, record, vae, test_x, test_y, beta):
        """Log one epoch's ``record`` (a line of metrics.jsonl) and, where due, the pictures."""
        train, step = self.config.train, record["epoch"]
        self.writer.add_scalar("train/loss", record["train_loss"], step)
        self.writer.add_scalar("train/lr", record["lr"], step)
        self.writer.add_scalar("train/beta", beta, step)
        if "test_elbo" in record:
            x, y = test_x[: record["test_examples"]], test_y[: record["test_examples"]]
            reconstruction = test_reconstruction(vae, x, y, train.eval_batch_size)
            self.writer.add_scalar("test/elbo", record["test_elbo"], step)
            self.writer.add_scalar("test/reconstruction", reconstruction, step)
            self.writer.add_scalar("test/kl", reconstruction - record["test_elbo"], step)
        if step % train.tensorboard_images_every == 0 or step == train.epochs:
            self.pictures(vae, test_x[:32], test_y[:32], step)
        self.writer.flush()

    @torch.no_grad()
    def pictures(self, vae, x, y, step):
        """Test images beside their reconstructions, and samples (none for points in ℝ^D: their pictures
        are the run's scatter plots)."""
        if vae.spec.points:
            return
        if vae.conditioning.partial:
            rows, _ = plots.completion_rows([("", vae)], x[:10])
            self.writer.add_image("completions", make_grid(torch.cat(rows).float().cpu(), nrow=10, pad_value=1.0), step)
            return
        labels = y if vae.spec.conditional else None
        pairs = torch.stack([x, vae.reconstruct(x, labels)], dim=1).reshape(-1, *x.shape[1:])
        self.writer.add_image("reconstructions", make_grid(pairs.float().cpu(), nrow=16, pad_value=1.0), step)
        with forked_rng(vae.device):
            torch.manual_seed(TEST_SEED)
            samples = vae.sample(
                64, torch.arange(64, device=vae.device) % vae.spec.num_classes if labels is not None else None
            )
        self.writer.add_image("samples", make_grid(samples.float().cpu(), nrow=8, pad_value=1.0), step)

    def close(self):
        if self._writer is not None:
            self._writer.close()


@torch.no_grad()
def test_reconstruction(vae, x, y, batch_size):
    """Mean E_q[log p(x|z)] per example over x [N, …], one z ~ q(z|x) each, drawn as ``trainer.test_elbo``
    draws them (batch j seeded by TEST_SEED + j), so that the ELBO minus it is the KL term of the same draws."""
    total = 0.0
    with pyro.validation_enabled(False):
        for args in seeded_batches(vae, x, y, batch_size):
            guide = poutine.trace(vae.guide).get_trace(*args)
            model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(*args)
            total += model.nodes["x"]["fn"].log_prob(model.nodes["x"]["value"]).sum().item()
    return total / len(x)
