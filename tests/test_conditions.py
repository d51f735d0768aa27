"""Conditions on part of the image (image completion): exact masks, an exact conditional evaluator, the
deterministic baseline and the CVAE through the command line."""

import json
from pathlib import Path

import pyro
import pytest
import torch
from conftest import cli_args
from pyro.infer import Trace_ELBO

from pyro_vae import importance_sample
from pyro_vae.cli import main
from pyro_vae.model.conditions import CONDITIONS
from pyro_vae.runs.config import load_config

MASKS = [
    ("quadrants", {"given": 1}, 196),
    ("quadrants", {"given": 2}, 392),
    ("quadrants", {"given": 3}, 588),
    ("column", {}, 28),
    ("column", {"width": 4}, 112),
]


@pytest.mark.parametrize("name, options, num_given", MASKS)
def test_given_and_missing_pixels_partition_the_image(name, options, num_given):
    condition = CONDITIONS.build(name, options, (1, 28, 28), 10)
    given, missing = set(condition.given.tolist()), set(condition.missing.tolist())
    assert not given & missing and given | missing == set(range(784)) and len(given) == num_given
    assert condition.dim == num_given and condition.target_shape == (784 - num_given,)
    x = torch.rand(5, 1, 28, 28)
    t, c = condition.split(x, None)
    assert t.shape == (5, 784 - num_given) and c.shape == (5, num_given)
    torch.testing.assert_close(condition.complete(x, t), x, rtol=0, atol=0)
    samples = condition.complete(x, torch.zeros(3, *t.shape))  # leading sample dimensions are kept
    assert samples.shape == (3, 5, 1, 28, 28)
    assert torch.equal(condition.split(samples, None)[1], c.expand(3, -1, -1))
    assert (condition.split(samples, None)[0] == 0).all()


def test_quadrants_are_pyros():
    """Pyro's examples/cvae/mnist.py: 1 quadrant = the bottom-left; 2 = the left half; 3 = all but the bottom-right."""
    regions = {1: (slice(14, None), slice(None, 14)), 2: (slice(None), slice(None, 14))}
    for given, (rows, cols) in regions.items():
        mask = torch.zeros(28, 28, dtype=torch.bool)
        mask[rows, cols] = True
        condition = CONDITIONS.build("quadrants", {"given": given}, (1, 28, 28), 10)
        assert torch.equal(mask.flatten().nonzero().squeeze(-1), condition.given)
    three = CONDITIONS.build("quadrants", {"given": 3}, (1, 28, 28), 10)
    bottom_right = torch.zeros(28, 28, dtype=torch.bool)
    bottom_right[14:, 14:] = True
    assert torch.equal(bottom_right.flatten().nonzero().squeeze(-1), three.missing)


class LinearGaussianCompletion:
    """Image completion with every quantity in closed form, on images [1, 4, 4] split by the one-quadrant
    mask (4 given pixels c, 12 missing t): z | c ~ N(Ac + a, I) (a linear prior network), t | z, c ~
    N(Bz + Cc + b, s²I). Then p(t|c) = N(B(Ac + a) + Cc + b, BBᵀ + s²I) and the posterior p(z|t,c) is
    Gaussian with precision I + BᵀB/s² and mean Σ (Ac + a + Bᵀ(t − Cc − b)/s²)."""

    def __init__(self, Z=2, s=0.4):
        g = torch.Generator().manual_seed(3)
        self.condition = CONDITIONS.build("quadrants", {"given": 1}, (1, 4, 4), 1)
        G, M = self.condition.dim, self.condition.target_shape[0]
        self.A, self.a = (
            torch.randn(Z, G, generator=g, dtype=torch.float64),
            torch.randn(Z, generator=g, dtype=torch.float64),
        )
        self.B, self.b = (
            torch.randn(M, Z, generator=g, dtype=torch.float64),
            torch.randn(M, generator=g, dtype=torch.float64),
        )
        self.C = torch.randn(M, G, generator=g, dtype=torch.float64)
        self.Z, self.s = Z, s

    def model(self, x):
        t, c = self.condition.split(x, None)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(c @ self.A.T + self.a, 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(z @ self.B.T + c @ self.C.T + self.b, self.s).to_event(1), obs=t)

    def guide(self, x):
        t, c = self.condition.split(x, None)
        cov = torch.linalg.inv(torch.eye(self.Z, dtype=torch.float64) + self.B.T @ self.B / self.s**2)
        mean = (c @ self.A.T + self.a + (t - c @ self.C.T - self.b) @ self.B / self.s**2) @ cov.T
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.MultivariateNormal(mean, cov))

    def log_conditional(self, x):
        t, c = self.condition.split(x, None)
        cov = self.B @ self.B.T + self.s**2 * torch.eye(len(self.b), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(
            (c @ self.A.T + self.a) @ self.B.T + c @ self.C.T + self.b, cov
        ).log_prob(t)


@pytest.mark.parametrize("num_samples", [1, 7])
def test_evaluator_is_exact_on_a_linear_gaussian_completion_for_any_k(num_samples):
    lg = LinearGaussianCompletion()
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    estimate = importance_sample(lg.model, lg.guide, x, num_samples=num_samples)
    torch.testing.assert_close(estimate.log_likelihood, lg.log_conditional(x), rtol=0, atol=1e-9)
    loss = Trace_ELBO(max_plate_nesting=1).loss(lg.model, lg.guide, x)
    assert loss == pytest.approx(-lg.log_conditional(x).sum().item(), abs=1e-8)


def test_only_the_missing_pixels_are_scored():
    """The completion model observes the missing pixels only (48 of 64 pixels with one quadrant given), and the
    baseline without a latent is its own exact log p(x_M|x_G) for any K, every sample of full weight."""
    config = load_config(None, ["condition.name=quadrants", "model.z_dim=0", "network.hidden=[8]"])
    from pyro_vae.model.vae import VAE

    vae = VAE.from_config(config, (1, 8, 8), 4)
    x = torch.rand(3, 1, 8, 8).bernoulli()
    trace = pyro.poutine.trace(vae.model).get_trace(x)
    assert trace.nodes["x"]["value"].shape == (3, 48) and not vae.latent_sites
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=5)
    torch.testing.assert_close(
        estimate.log_likelihood, trace.nodes["x"]["fn"].log_prob(trace.nodes["x"]["value"]).double()
    )
    torch.testing.assert_close(estimate.ess, torch.full((3,), 5.0, dtype=torch.float64))


def test_baseline_and_cvae_train_evaluate_and_draw_completions(tiny, capsys):
    tiny["set"] += ["condition.name=quadrants", "condition.given=2"]
    main(cli_args("train", tiny, "--name", "nn", "--z-dim", "0"))
    main(cli_args("train", tiny, "--name", "cvae", "--prior", "network", "--set", "prior.hidden=[8]"))
    root = Path(tiny["runs_root"])
    for name in ("nn", "cvae"):
        assert {"completions.png", "loss.png"} <= {p.name for p in (root / name).iterdir()}
        main(["evaluate", str(root / name), "-k", "40", "--limit", "20", "--quiet"])
        summary = json.loads((root / name / "eval.json").read_text())
        assert summary["what"] == "log p(x_M|x_G)" and summary["condition"] == "quadrants"
        assert summary["log_likelihood"] >= summary["elbo"] - 4 * summary["log_likelihood_stderr"]
    nn = json.loads((root / "nn" / "eval.json").read_text())
    assert (
        nn["log_likelihood"] == pytest.approx(nn["elbo"]) == pytest.approx(nn["elbo_10_particles"])
    )  # no latent: exact
    assert nn["mean_ess"] == pytest.approx(40)
    assert "log p(x_M|x_G)" in capsys.readouterr().out
    main(["compare", str(root / "nn"), str(root / "cvae"), "--out", str(root / "cmp")])
    assert (root / "cmp" / "completions.png").stat().st_size > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["sample", str(root / "cvae")])
    assert refused.value.code == 2 and "completes images from a given part" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["gradvar", str(root / "nn"), "--draws", "2", "--examples", "2", "--quiet"])
    assert "has no latent" in capsys.readouterr().err
    main(cli_args("train", tiny, "--name", "vae", "--set", "condition.name=none"))
    with pytest.raises(SystemExit):
        main(["compare", str(root / "nn"), str(root / "vae"), "--out", str(root / "mixed")])
    assert "compare with runs of the same condition" in capsys.readouterr().err
    assert not (root / "mixed").exists()  # refused before any folder is made


def test_label_cvae_reads_the_earlier_spelling():
    """Runs saved before the [condition] section wrote model.conditional; they load as the label CVAE."""
    assert load_config(None, ["model.conditional=true"]).condition.name == "label"
    assert load_config(None, ["model.conditional=false"]).condition.name == "none"
    assert load_config("mnist-cvae").condition.name == "label"
