"""The posterior family chosen by name: ``full`` exact on a linear-Gaussian model, ``iaf``'s density the
change of variables of its flow, every family through training and evaluation, and the refusals."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.cli import main
from pyro_vae.infer.importance import importance_sample
from pyro_vae.model.posteriors import FullCovariance, InverseAutoregressiveFlow


class LinearGaussianOneExample:
    """z ~ N(0, I_2), x | z ~ N(Wz + b, s² I_3) for one x: p(x) = N(b, WWᵀ + s²I), p(z|x) = N(m, Σ) in closed form."""

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.W = torch.randn(3, 2, generator=g)
        self.b, self.s = torch.randn(3, generator=g), 0.5
        self.x = torch.randn(1, 3, generator=g)
        self.cov = torch.linalg.inv(torch.eye(2) + self.W.T @ self.W / self.s**2)
        self.mean = (self.x - self.b) @ self.W @ self.cov / self.s**2

    def model(self, x):
        with pyro.plate("data", 1):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def log_px(self):
        return dist.MultivariateNormal(self.b, self.W @ self.W.T + self.s**2 * torch.eye(3)).log_prob(self.x[0])


def full_guide(head, h, name="head"):
    def guide(x):
        pyro.module(name, head)
        with pyro.plate("data", 1):
            pyro.sample("z", head.distribution(*head(h)))

    return guide


def test_full_covariance_is_the_exact_posterior_of_a_linear_gaussian_model():
    """Set to p(z|x), the evaluator is exact for any K; fitted by SVI from zero, its ELBO reaches log p(x)."""
    m = LinearGaussianOneExample()
    head = FullCovariance(1, 2)
    chol = torch.linalg.cholesky(m.cov)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.cat([m.mean[0], torch.log(torch.expm1(chol.diagonal() - 1e-4)), chol[1, :1]]))
    h = torch.ones(1, 1)
    for k in (1, 13):
        estimate = importance_sample(m.model, full_guide(head, h), m.x, num_samples=k)
        assert estimate.log_likelihood.item() == pytest.approx(m.log_px().item(), abs=1e-4)
    fitted = FullCovariance(1, 2)
    guide = full_guide(fitted, h, "fitted")
    svi = SVI(
        m.model,
        guide,
        pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.998}),  # the rate decays to 0.001 over the 2000 steps
        Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1),
    )
    for _ in range(2000):
        svi.step(m.x)
    elbo = -Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1).loss(m.model, guide, m.x)
    assert elbo == pytest.approx(m.log_px().item(), abs=0.02)
    assert elbo <= m.log_px().item() + 0.01


def test_iaf_density_is_the_change_of_variables_of_its_flow():
    """log q(z_T) = log N(z₀; loc, scale²) − log |det ∂z_T/∂z₀|, the Jacobian taken by autograd; each step's
    Jacobian is triangular in its order (lower for the identity order, upper for the reversed one)."""
    torch.manual_seed(0)
    head = InverseAutoregressiveFlow(4, 3, steps=2, hidden=[8], context=5)
    for flow in head.flows:  # away from the identity at initialization
        for p in flow.parameters():
            torch.nn.init.normal_(p, std=0.5)
    loc, scale, context = head(torch.randn(1, 4))
    q = head.distribution(loc, scale, context)
    steps = [t for t in q.transforms]
    z0 = dist.Normal(loc, scale).to_event(1).sample()

    def flow(z):
        for t in steps:
            z = t(z)
        return z

    z = flow(z0)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0], z0[0])
    by_hand = dist.Normal(loc, scale).to_event(1).log_prob(z0) - torch.linalg.slogdet(jacobian)[1]
    assert q.log_prob(z).item() == pytest.approx(by_hand.item(), abs=1e-4)
    first = torch.autograd.functional.jacobian(lambda v: steps[0](v[None])[0], z0[0])
    second = torch.autograd.functional.jacobian(lambda v: steps[1](v[None])[0], steps[0](z0)[0])
    assert torch.equal(first, first.tril()) and torch.equal(second, second.triu())
    assert not torch.equal(first, torch.diag(first.diagonal()))  # the flow mixes coordinates


@pytest.mark.parametrize("posterior", ["full", "iaf"])
def test_each_family_trains_resumes_and_evaluates(posterior, tmp_path):
    runs = tmp_path / "runs"
    tiny = ["data.name=synthetic", "network.hidden=[16]", "model.z_dim=3", f"posterior.name={posterior}"]
    tiny += ["posterior.hidden=[8]"] if posterior == "iaf" else []
    args = ["train", "--runs-root", str(runs), "--name", "a", "--quiet", "--epochs", "2"]
    main(args + sum((["--set", o] for o in tiny), []))
    main(["evaluate", str(runs / "a"), "-k", "20", "--limit", "10", "--quiet"])
    summary = json.loads((runs / "a" / "eval.json").read_text())
    assert math.isfinite(summary["log_likelihood"]) and summary["elbo"] <= summary["log_likelihood"]


REFUSED = {
    "several layers": (["posterior.name=full", "model.layers=[4]"], "family of a one-layer model"),
    "score function": (["posterior.name=iaf", "model.reparameterize=false"], "drawn by reparameterization"),
    "vamp prior": (["posterior.name=full", "prior.name=vamp"], "mixture of diagonal posteriors"),
    "unknown family": (["posterior.name=planar"], "unknown posterior 'planar'; valid choices: diagonal, full, iaf"),
    "no steps": (["posterior.name=iaf", "posterior.steps=0"], "posterior 'iaf' option 'steps' must be positive, got 0"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_families_refuse_what_they_cannot_do_in_one_line(case, tmp_path, capsys):
    overrides, message = REFUSED[case]
    args = ["train", "--runs-root", str(tmp_path / "runs"), "--quiet", "--set", "data.name=synthetic"]
    with pytest.raises(SystemExit) as stop:
        main(args + sum((["--set", o] for o in overrides), []))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and err.count("\n") == 1, err
