"""Inference beyond the encoder: per-example fits reach the best q of their family, AIS recovers a closed-form
log p(x), and ``gap`` and ``evaluate --refine`` / ``--method ais`` work from a run folder."""

import json
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import cli_args

from pyro_vae.cli import main
from pyro_vae.errors import PyroVAEError
from pyro_vae.infer.ais import annealed_importance_sample
from pyro_vae.infer.importance import importance_sample
from pyro_vae.infer.local import LocalPosterior
from pyro_vae.model.posteriors import FullCovariance, GaussianHead
from pyro_vae.model.vae import VAE
from pyro_vae.runs.config import load_config


def fitted_elbo(lg, head, start, x, y, flow_steps=0):
    torch.manual_seed(0)
    local = LocalPosterior(head, start, flow_steps).fit(lg.model, x, y, steps=300, lr=0.05, num_particles=32)
    return importance_sample(lg.model, local.guide, x, y, num_samples=20000).elbo  # standard error below 0.003


def test_per_example_fit_reaches_the_best_q_of_its_family(linear_gaussian):
    """On a linear-Gaussian model, each example's full-covariance q fitted from N(0, I) reaches the exact
    posterior's ELBO, log p(x); the diagonal one reaches the mean-field optimum, log p(x) − KL(q*‖p(z|x)) with
    q* = N(m, diag(1/Λᵢᵢ)), Λ the posterior precision: KL = ½(log det Σ + Σᵢ log Λᵢᵢ)."""
    lg = linear_gaussian
    x, y = lg.data(6)
    truth = lg.log_marginal(x, y)
    zeros = torch.zeros(6, lg.Z, dtype=torch.float64)
    identity = torch.eye(lg.Z, dtype=torch.float64).expand(6, lg.Z, lg.Z)
    full = fitted_elbo(lg, FullCovariance(1, lg.Z).double(), (zeros, identity), x, y)
    assert (full - truth).abs().max() < 0.02  # 3 standard errors and what 300 noisy steps leave
    _, cov = lg.posterior(x, y)
    precision = torch.linalg.inv(cov)
    kl = 0.5 * (torch.logdet(cov) + precision.diagonal().log().sum())
    diagonal = fitted_elbo(lg, GaussianHead(1, lg.Z).double(), (zeros, torch.ones_like(zeros)), x, y)
    assert kl > 0.05  # the mean-field optimum is strictly below log p(x) here
    assert (diagonal - (truth - kl)).abs().max() < 0.02


def test_flow_steps_start_at_the_identity_and_fit_beyond_the_diagonal(linear_gaussian):
    """Planar steps started at û = 0 leave q as the family gives it; fitted, the flow's ELBO passes the
    diagonal family's optimum (the posterior is correlated, which no diagonal Gaussian matches)."""
    lg = linear_gaussian
    x, y = lg.data(6)
    head = GaussianHead(1, lg.Z).double()
    start = (torch.randn(6, lg.Z, dtype=torch.float64), torch.rand(6, lg.Z, dtype=torch.float64) + 0.5)
    z = torch.randn(6, lg.Z, dtype=torch.float64)
    plain, flowed = LocalPosterior(head, start), LocalPosterior(head, start, flow_steps=3)
    with torch.no_grad():
        q = flowed.distribution()  # a planar step scores only its own draws (it has no inverse)
        draw = q.rsample()
        assert torch.allclose(q.log_prob(draw), plain.distribution().log_prob(draw))
        assert torch.allclose(plain.distribution().log_prob(z), head.distribution(*start).log_prob(z))
    diagonal = fitted_elbo(lg, head, start, x, y)
    flow = fitted_elbo(lg, head, start, x, y, flow_steps=4)
    assert flow.mean() > diagonal.mean() + 0.02


def test_ais_recovers_the_closed_form_and_approaches_it_as_distributions_grow(linear_gaussian):
    """AIS's log p̂(x) lies within its stated error of the closed form with T = 200, and its mean error shrinks
    from T = 3 to T = 200."""
    lg = linear_gaussian
    x, y = lg.data(20)
    truth = lg.log_marginal(x, y)
    errors = {}
    for t in (3, 200):
        torch.manual_seed(0)
        estimate, log_w, acceptance = annealed_importance_sample(
            lg.model, x, y, num_chains=16, num_distributions=t, leapfrog_steps=5
        )
        assert log_w.shape == (16, 20) and acceptance.shape == (20,)
        errors[t] = (estimate.log_likelihood - truth).abs().mean().item()
        stderr = estimate.stderr.square().sum().sqrt().item() / 20
    assert abs((estimate.log_likelihood - truth).mean().item()) < 4 * stderr + 0.01
    assert errors[200] < errors[3] / 2


def test_ais_refuses_a_discrete_latent():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    with pytest.raises(PyroVAEError, match="'c' is not a continuous variable"):
        annealed_importance_sample(model, torch.zeros(3))


def test_per_example_fit_refuses_models_without_one_latent():
    config = load_config(None, ["data.name=synthetic", "network.hidden=[8]", "model.z_dim=2", "model.layers=[3]"])
    vae = VAE.from_config(config, (1, 8, 8), 10)
    with pytest.raises(PyroVAEError, match="2 stochastic layers"):
        vae.posterior_params(torch.zeros(1, 1, 8, 8))


@pytest.fixture
def trained(tiny, capsys):
    main(cli_args("train", tiny, "--name", "a"))
    capsys.readouterr()
    return f"{tiny['runs_root']}/a"


def test_gap_writes_its_table_from_the_run_folder(trained, capsys):
    """gap: L[q] ≤ L[q*] (the fit starts at q and climbs), log p̂ above every bound, the files written."""
    args = [trained, "--limit", "40", "--steps", "40", "-k", "200", "--quiet"]
    main(["gap", *args])
    out = capsys.readouterr().out
    assert "amortization gap L[q*] − L[q]" in out
    summary = json.loads(Path(f"{trained}/gap.json").read_text())
    m, e = summary["means"], summary["stderrs"]
    assert summary["num_examples"] == 40 and summary["steps"] == 40
    assert m["amortization_gap"] > -3 * e["amortization_gap"]
    assert m["log_likelihood"] >= max(m["elbo_fitted"], m["elbo_flow"], m["elbo_encoder"])
    rows = Path(f"{trained}/gap_examples.csv").read_text().splitlines()
    assert len(rows) == 41 and "approximation_gap" in rows[0]
    main(["gap", trained, "--limit", "20", "--steps", "10", "-k", "50", "--quiet"])
    assert "kept the earlier gap" in capsys.readouterr().out


def test_evaluate_refine_and_ais_beside_importance_sampling(trained, capsys):
    """--refine tightens the ELBO of the proposal; --method ais writes eval-ais.* beside eval.*, near the
    importance-sampled estimate; --refine with ais is one line."""
    base = [trained, "--limit", "30", "-k", "100", "--quiet"]
    main(["evaluate", *base])
    plain = json.loads(Path(f"{trained}/eval.json").read_text())
    main(["evaluate", *base, "--refine", "30"])
    refined = json.loads(Path(f"{trained}/eval.json").read_text())
    assert "kept the earlier evaluation" in capsys.readouterr().out
    assert refined["refine"] == 30 and refined["elbo"] > plain["elbo"]
    assert abs(refined["log_likelihood"] - plain["log_likelihood"]) < 0.2
    main(["evaluate", trained, "--limit", "30", "-k", "8", "--method", "ais", "--distributions", "100", "--quiet"])
    ais = json.loads(Path(f"{trained}/eval-ais.json").read_text())
    assert ais["method"] == "ais" and ais["num_distributions"] == 100 and 0 < ais["mean_acceptance"] <= 1
    assert abs(ais["log_likelihood"] - plain["log_likelihood"]) < 0.3
    assert json.loads(Path(f"{trained}/eval.json").read_text()) == refined  # AIS left the IS files alone
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", *base, "--method", "ais", "--refine", "5"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--refine refines the importance sampler's proposal" in err[0]
    assert math.isfinite(ais["log_likelihood_stderr"])
