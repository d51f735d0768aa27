import signal
import time
from pathlib import Path

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def clean_pyro():
    """Each test starts with an empty param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def restore_registries():
    """A component a test registers is gone after it, so that no test depends on the order they run in."""
    from pyro_vae.runs.config import REGISTRIES

    saved = {name: registry.snapshot() for name, registry in REGISTRIES.items()}
    yield
    for name, registry in REGISTRIES.items():
        registry.restore(saved[name])


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a tiny, fast model on the bundled synthetic data, and a runs root in tmp."""
    return {
        "runs_root": str(tmp_path / "runs"),
        "set": [
            "data.name=synthetic",
            "network.hidden=[16]",
            "model.z_dim=2",
            "train.epochs=1",
            "train.batch_size=200",
            "train.eval_batch_size=100",
        ],
    }


def cli_args(command, tiny, *extra):
    """pyro-vae command-line arguments for a tiny run."""
    args = [command, "--runs-root", tiny["runs_root"], "--quiet"]
    for override in tiny["set"]:
        args += ["--set", override]
    return args + list(extra)


@pytest.fixture
def linear_gaussian():
    return LinearGaussian()


class LinearGaussian:
    """z ~ N(0, I_Z), x | z, y ~ N(Wz + U·onehot(y) + b, s² I_D): every quantity in closed form.

    log p(x|y) = log N(x; U·onehot(y) + b, WWᵀ + s²I); the posterior p(z|x, y) is Gaussian with
    precision I + WᵀW/s² and mean Σ Wᵀ(x − U·onehot(y) − b)/s².
    """

    def __init__(self, D=3, Z=2, C=3, s=0.5):
        g = torch.Generator().manual_seed(1)
        self.D, self.Z, self.C, self.s = D, Z, C, s
        self.W = torch.randn(D, Z, generator=g, dtype=torch.float64)
        self.U = 2 * torch.randn(D, C, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)

    def offset(self, y):
        return self.b if y is None else self.b + torch.nn.functional.one_hot(y, self.C).double() @ self.U.T

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(self.Z, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(z @ self.W.T + self.offset(y), self.s).to_event(1), obs=x)

    def posterior(self, x, y=None):
        cov = torch.linalg.inv(torch.eye(self.Z, dtype=torch.float64) + self.W.T @ self.W / self.s**2)
        return (x - self.offset(y)) @ self.W @ cov.T / self.s**2, cov

    def guide(self, x, y=None, shift=0.0, inflate=1.0):
        mean, cov = self.posterior(x, y)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.MultivariateNormal(mean + shift, cov * inflate**2))

    def wrong_guide(self, shift=0.7, inflate=1.5):
        """A guide with a shifted mean and inflated covariance: the weights vary."""
        return lambda x, y=None: self.guide(x, y, shift, inflate)

    def mean_field_guide(self, x, y=None):
        """The posterior's marginals as a diagonal Normal (for TraceMeanField_ELBO's analytic KL)."""
        mean, cov = self.posterior(x, y)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(mean, cov.diagonal().sqrt()).to_event(1))

    def log_marginal(self, x, y=None):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.offset(y), cov).log_prob(x)

    def data(self, n, seed=2):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, self.C, (n,), generator=g)
        z = torch.randn(n, self.Z, generator=g, dtype=torch.float64)
        x = z @ self.W.T + self.offset(y) + self.s * torch.randn(n, self.D, generator=g, dtype=torch.float64)
        return x, y


def wait_for(path, timeout=120):
    """Wait until ``path`` exists (a file a subprocess writes), failing after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def sigterm_caught(pid):
    """Whether process ``pid`` has a handler for SIGTERM (bit 15 of SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False
