"""The importance-sampled log p(x) against the closed form of a linear-Gaussian model."""

import math
import re
import warnings

import pyro
import pytest
import torch
from conftest import LinearGaussian
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import PyroVAEError, importance_sample, log_likelihood


@pytest.mark.parametrize("num_samples", [1, 7, 100])
def test_exact_posterior_guide_gives_log_marginal_for_any_k(linear_gaussian, num_samples):
    lg = linear_gaussian
    x, _ = lg.data(6)
    estimate = log_likelihood(lg.model, lg.guide, x, num_samples=num_samples)
    assert estimate.shape == (6,)
    torch.testing.assert_close(estimate, lg.log_marginal(x), rtol=0, atol=1e-9)


def test_wrong_guide_converges_within_standard_errors(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(8)
    result = importance_sample(lg.model, lg.wrong_guide(), x, num_samples=20000)
    error = (result.log_likelihood - lg.log_marginal(x)).abs()
    assert (result.stderr > 0).all() and (result.ess < 20000).all()
    assert (error < 4 * result.stderr + 2e-3).all(), (error, result.stderr)


def test_bound_rises_with_k_and_starts_at_the_elbo(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(40)
    truth = lg.log_marginal(x).mean().item()
    means, stderrs = [], []
    for k in (1, 10, 100, 1000):
        result = importance_sample(lg.model, lg.wrong_guide(), x, num_samples=k)
        means.append(result.log_likelihood.mean().item())
        if k == 1:  # one weight says nothing of its spread: no standard error, not a false 0
            torch.testing.assert_close(result.log_likelihood, result.elbo)
            assert result.stderr.isnan().all()
            stderrs.append(result.log_likelihood.std().item() / len(x) ** 0.5)  # the spread between examples
        else:
            stderrs.append(result.stderr.square().sum().sqrt().item() / len(x))
    for i in range(len(means) - 1):  # non-decreasing in expectation: allow 3 standard errors of noise
        assert means[i + 1] > means[i] - 3 * (stderrs[i] + stderrs[i + 1]), (means, stderrs)
    assert means[1] > means[0] + 1.0  # the first steps rise far beyond the noise
    assert abs(means[-1] - truth) < 3 * stderrs[-1] + 0.05


def test_condition_passed_through_args(linear_gaussian):
    lg = linear_gaussian
    x, y = lg.data(6)
    exact = log_likelihood(lg.model, lg.guide, x, y, num_samples=5)
    torch.testing.assert_close(exact, lg.log_marginal(x, y), rtol=0, atol=1e-9)
    result = importance_sample(lg.model, lg.wrong_guide(), x, y, num_samples=20000)
    assert ((result.log_likelihood - lg.log_marginal(x, y)).abs() < 4 * result.stderr + 2e-3).all()


def test_chunked_equals_unchunked_with_the_same_random_stream(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(4)  # 4 examples × 2 latents: a chunk of 2 samples is 16 normals, a whole block of the stream
    results = []
    for chunk_size in (None, 64, 2):
        pyro.set_rng_seed(5)
        results.append(importance_sample(lg.model, lg.wrong_guide(), x, num_samples=128, chunk_size=chunk_size))
    for other in results[1:]:
        for name in ("log_likelihood", "elbo", "ess", "stderr"):
            torch.testing.assert_close(getattr(other, name), getattr(results[0], name), rtol=1e-12, atol=1e-10)


def test_per_example_values_equal_each_example_alone(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(5)
    batch = log_likelihood(lg.model, lg.guide, x, num_samples=3)
    assert len(set(batch.tolist())) == 5
    alone = torch.cat([log_likelihood(lg.model, lg.guide, x[i : i + 1], num_samples=3) for i in range(5)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-9)
    noisy = importance_sample(lg.model, lg.wrong_guide(), x, num_samples=4000)
    for i in range(5):
        single = importance_sample(lg.model, lg.wrong_guide(), x[i : i + 1], num_samples=4000)
        tolerance = 4 * math.hypot(noisy.stderr[i].item(), single.stderr[0].item()) + 1e-3
        assert abs(single.log_likelihood[0].item() - noisy.log_likelihood[i].item()) < tolerance


class TwoLayerLinearGaussian:
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1² I), x | z1 ~ N(B z1 + b, s2² I), sites named as the VAE's
    (top "z", below it "z1"). log p(x) = log N(x; B a + b, B(AAᵀ + s1²I)Bᵀ + s2²I); the exact posterior
    factorizes as the guide does, q(z1|x) q(z2|z1) with q(z1|x) = p(z1|x) and q(z2|z1) = p(z2|z1)."""

    def __init__(self, D=4, Z1=3, Z2=2, s1=0.6, s2=0.4):
        g = torch.Generator().manual_seed(3)
        self.s1, self.s2 = s1, s2
        self.A, self.a = (
            torch.randn(Z1, Z2, generator=g, dtype=torch.float64),
            torch.randn(Z1, generator=g, dtype=torch.float64),
        )
        self.B, self.b = (
            torch.randn(D, Z1, generator=g, dtype=torch.float64),
            torch.randn(D, generator=g, dtype=torch.float64),
        )
        self.cov1 = self.A @ self.A.T + s1**2 * torch.eye(Z1, dtype=torch.float64)  # p(z1)

    def model(self, x):
        Normal = pyro.distributions.Normal
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z", Normal(torch.zeros(self.A.shape[1], dtype=torch.float64), 1.0).to_event(1))
            z1 = pyro.sample("z1", Normal(z2 @ self.A.T + self.a, self.s1).to_event(1))
            pyro.sample("x", Normal(z1 @ self.B.T + self.b, self.s2).to_event(1), obs=x)

    def guide(self, x):
        precision1 = torch.linalg.inv(self.cov1) + self.B.T @ self.B / self.s2**2
        cov_z1 = torch.linalg.inv(precision1)
        mean_z1 = (self.a @ torch.linalg.inv(self.cov1) + (x - self.b) @ self.B / self.s2**2) @ cov_z1
        cov_z2 = torch.linalg.inv(torch.eye(self.A.shape[1], dtype=torch.float64) + self.A.T @ self.A / self.s1**2)
        MVN = pyro.distributions.MultivariateNormal
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", MVN(mean_z1, cov_z1))
            pyro.sample("z", MVN((z1 - self.a) @ self.A / self.s1**2 @ cov_z2, cov_z2))

    def log_marginal(self, x):
        cov = self.B @ self.cov1 @ self.B.T + self.s2**2 * torch.eye(len(self.b), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.B @ self.a + self.b, cov).log_prob(x)


@pytest.mark.parametrize("num_samples", [1, 9])
def test_two_stochastic_layers_with_the_exact_posterior_give_log_marginal_for_any_k(num_samples):
    h = TwoLayerLinearGaussian()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    estimate = importance_sample(h.model, h.guide, x, num_samples=num_samples)
    torch.testing.assert_close(estimate.log_likelihood, h.log_marginal(x), rtol=0, atol=1e-9)
    loss = Trace_ELBO(max_plate_nesting=1).loss(h.model, h.guide, x)
    assert loss == pytest.approx(-h.log_marginal(x).sum().item(), abs=1e-8)


def test_ess_and_stderr_of_exact_guide(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(3)
    result = importance_sample(lg.model, lg.guide, x, num_samples=50)
    torch.testing.assert_close(result.ess, torch.full((3,), 50.0, dtype=torch.float64))
    assert (result.stderr < 1e-6).all()


def test_trace_elbo_of_exact_posterior_is_minus_log_marginal(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(7)
    loss = Trace_ELBO(max_plate_nesting=1).loss(lg.model, lg.guide, x)
    assert loss == pytest.approx(-lg.log_marginal(x).sum().item(), rel=1e-12)


def test_mean_field_elbo_matches_its_monte_carlo_twin(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(7)
    draws = {
        name: torch.tensor([-elbo.loss(lg.model, lg.mean_field_guide, x) for _ in range(300)], dtype=torch.float64)
        for name, elbo in (
            ("analytic", TraceMeanField_ELBO(max_plate_nesting=1)),
            ("sampled", Trace_ELBO(max_plate_nesting=1)),
        )
    }
    a, b = draws["analytic"], draws["sampled"]
    stderr = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
    assert abs(a.mean().item() - b.mean().item()) < 4 * stderr
    assert a.mean().item() < lg.log_marginal(x).sum().item()  # a diagonal guide leaves a gap


def test_model_without_data_plate_is_refused(linear_gaussian):
    def model(x):
        pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))

    with pytest.raises(PyroVAEError, match='pyro.plate\\("data"'):
        log_likelihood(model, model, torch.zeros(3), num_samples=2)


def test_nonpositive_k_is_refused(linear_gaussian):
    with pytest.raises(PyroVAEError, match="positive"):
        log_likelihood(linear_gaussian.model, linear_gaussian.guide, torch.zeros(2, 3), num_samples=0)


# --- model/guide styles: exact where they can be, refused where they cannot -------------------------------


class Mixture:
    """c ~ Categorical(π), z | c ~ N(μ_c, 1), x | z ~ N(z, s²), one scalar each per example:
    p(x) = Σ_c π_c N(x; μ_c, 1 + s²) and p(z | x) = Σ_c p(c|x) N(z; m_c, v), v = s²/(1 + s²), m_c = v (μ_c + x/s²)."""

    pi = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mu = torch.tensor([-3.0, 0.0, 4.0], dtype=torch.float64)
    s = 0.7

    def model(self, x, enumerate=True):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample(
                "c", pyro.distributions.Categorical(self.pi), infer={"enumerate": "parallel"} if enumerate else {}
            )
            z = pyro.sample("z", pyro.distributions.Normal(self.mu[c], 1.0))
            pyro.sample("x", pyro.distributions.Normal(z, self.s), obs=x)

    def plain_model(self, x):
        return self.model(x, enumerate=False)

    def posterior(self, x):
        v = self.s**2 / (1 + self.s**2)
        log_c = self.pi.log() + pyro.distributions.Normal(self.mu, math.sqrt(1 + self.s**2)).log_prob(x[:, None])
        return log_c.softmax(-1), v * (self.mu + x[:, None] / self.s**2), math.sqrt(v)

    def exact_guide(self, x, enumerate=True):
        probs, means, sd = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z",
                pyro.distributions.MixtureSameFamily(
                    pyro.distributions.Categorical(probs), pyro.distributions.Normal(means, sd)
                ),
            )

    def rough_guide(self, x, enumerate=True):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(x / 2, 3.0))

    def log_marginal(self, x):
        log_terms = self.pi.log() + pyro.distributions.Normal(self.mu, math.sqrt(1 + self.s**2)).log_prob(x[:, None])
        return log_terms.logsumexp(-1)

    def data(self, n):
        return torch.linspace(-5, 6, n, dtype=torch.float64)


@pytest.mark.parametrize("num_samples", [1, 3, 50])
def test_enumerated_discrete_latent_is_summed_out_exactly_for_any_k(num_samples):
    m = Mixture()
    x = m.data(7)
    result = importance_sample(m.model, m.exact_guide, x, num_samples=num_samples)
    torch.testing.assert_close(result.log_likelihood, m.log_marginal(x), rtol=0, atol=1e-9)


def test_enumerated_model_with_a_rough_guide_converges_within_standard_errors():
    m = Mixture()
    x = m.data(6)
    result = importance_sample(m.model, m.rough_guide, x, num_samples=20000)
    assert ((result.log_likelihood - m.log_marginal(x)).abs() < 4 * result.stderr + 2e-3).all()


def test_all_latents_enumerated_with_an_empty_guide():
    pi, mu = Mixture.pi, Mixture.mu

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", pyro.distributions.Categorical(pi), infer={"enumerate": "parallel"})
            pyro.sample("x", pyro.distributions.Normal(mu[c], 1.0), obs=x)

    x = Mixture().data(5)
    truth = (pi.log() + pyro.distributions.Normal(mu, 1.0).log_prob(x[:, None])).logsumexp(-1)
    torch.testing.assert_close(log_likelihood(model, lambda x: None, x, num_samples=4), truth, rtol=0, atol=1e-9)


def test_autonormal_keeps_sites_per_example_and_is_accepted(linear_gaussian):
    from pyro.infer.autoguide import AutoNormal

    lg = linear_gaussian
    x, _ = lg.data(5)
    mean, _ = lg.posterior(x)
    guide = AutoNormal(lg.model, init_loc_fn=lambda site: mean, init_scale=0.8)
    result = importance_sample(lg.model, guide, x, num_samples=20000)
    assert (result.ess < 20000).all()
    assert ((result.log_likelihood - lg.log_marginal(x)).abs() < 4 * result.stderr + 2e-3).all()


def global_model(x):
    shift = pyro.sample("shift", pyro.distributions.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", pyro.distributions.Normal(shift, 1.0), obs=x)


def per_example_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", pyro.distributions.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))


def refusal_cases(lg):
    """(model, guide, args, expected message) for each style that cannot give a per-example log p(x)."""
    from pyro.infer.autoguide import (
        AutoDelta,
        AutoDiagonalNormal,
        AutoMultivariateNormal,
    )

    x, _ = lg.data(4)
    m = Mixture()

    def subsampled_model(x):
        with pyro.plate("data", 40, subsample_size=x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(z @ lg.W.T + lg.b, lg.s).to_event(1), obs=x)

    def subsampled_guide(x):
        mean, cov = lg.posterior(x)
        with pyro.plate("data", 40, subsample_size=x.shape[0]):
            pyro.sample("z", pyro.distributions.MultivariateNormal(mean, cov))

    def sequential_model(x):
        for i in pyro.plate("data", x.shape[0]):
            pyro.sample(f"x_{i}", pyro.distributions.Normal(0.0, 1.0), obs=x[i, 0])

    def other_plate_model(x):
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(0.0, 1.0).expand([3]).to_event(1), obs=x)

    def no_to_event_model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("x", pyro.distributions.Normal(torch.zeros_like(x), 1.0), obs=x)

    def extra_guide(x):
        mean, cov = lg.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.MultivariateNormal(mean, cov))
            pyro.sample("u", pyro.distributions.Normal(0.0, 1.0))

    def grey_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "x", pyro.distributions.Bernoulli(logits=torch.zeros(3, dtype=torch.float64)).to_event(1), obs=x
            )

    def swallowing_model(x):  # .to_event(2) inside the plate: the event holds the whole batch
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(z @ lg.W.T + lg.b, lg.s).to_event(2), obs=x)

    def no_to_event_guide(x):
        mean, _ = lg.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(mean, 1.0))

    def auxiliary_guide(x):  # z ~ q(z|u): the weight would divide by q(u) q(z|u), not q(z)
        mean, _ = lg.posterior(x)
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample(
                "u", pyro.distributions.Normal(torch.zeros_like(mean), 1.0).to_event(1), infer={"is_auxiliary": True}
            )
            pyro.sample("z", pyro.distributions.Normal(mean + u, 1.0).to_event(1))

    def unrelated_auxiliary_guide(x):  # a point mass beside an auxiliary site it does not depend on
        mean, _ = lg.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "u", pyro.distributions.Normal(torch.zeros_like(mean), 1.0).to_event(1), infer={"is_auxiliary": True}
            )
            pyro.sample("z", pyro.distributions.Delta(mean, event_dim=1))

    def positive_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.LogNormal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(z @ lg.W.T + lg.b, lg.s).to_event(1), obs=x)

    def normal_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(torch.ones(x.shape[0], 2, dtype=torch.float64), 0.1).to_event(1))

    def beta_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "x", pyro.distributions.Beta(torch.full((3,), 0.5, dtype=torch.float64), 0.5).to_event(1), obs=x
            )

    def uniform_guide(x):  # elementwise bounds, some below the model's support
        with pyro.plate("data", x.shape[0]):
            low = -torch.ones(x.shape[0], 2, dtype=torch.float64)
            pyro.sample("z", pyro.distributions.Uniform(low, 1.0).to_event(1))

    def unbroadcastable_model(x):  # shapes written for one draw: expand(x.shape) drops the particles' dim
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
            loc = z.sum(-1, keepdim=True).expand(x.shape)
            pyro.sample("x", pyro.distributions.Normal(loc, 1.0).to_event(1), obs=x)

    edges = torch.tensor([[0.0, 0.5, 0.5], [0.5, 1.0, 0.5]], dtype=torch.float64)
    return {
        "event holding the batch": (
            swallowing_model,
            lg.guide,
            (x,),
            "has event shape (4, 3), which holds the 4 examples",
        ),
        "guide without .to_event": (lg.model, no_to_event_guide, (x,), "must be declared with .to_event(n)"),
        "latent drawn given an auxiliary": (lg.model, auxiliary_guide, (x,), "is drawn given the auxiliary site 'u'"),
        "point mass beside an auxiliary": (
            lg.model,
            unrelated_auxiliary_guide,
            (x,),
            "guide site 'z' is a point mass (Delta)",
        ),
        "guide wider than the model's support": (positive_model, normal_guide, (x,), "wider than the model's support"),
        "Beta observations at 0 and 1": (
            beta_model,
            lambda x: None,
            (edges,),
            "has a log-density of inf for 2 of 2 examples",
        ),
        "guide with elementwise bounds wider than the model's": (
            positive_model,
            uniform_guide,
            (x,),
            "draws from [-1, 1], wider than the model's support (0, inf)",
        ),
        "shapes that do not broadcast over the samples": (
            unbroadcastable_model,
            lg.guide,
            (x,),
            "fails when its K samples are drawn at once under an outer plate",
        ),
        "AutoDiagonalNormal": (
            lg.model,
            AutoDiagonalNormal(lg.model),
            (x,),
            "guide site '_AutoDiagonalNormal_latent' lies outside",
        ),
        "AutoMultivariateNormal": (
            lg.model,
            AutoMultivariateNormal(lg.model),
            (x,),
            "AutoNormal keeps them per example",
        ),
        "global model latent": (
            global_model,
            lambda x: None,
            (x,),
            "model site 'shift' lies outside pyro.plate(\"data\", B)",
        ),
        "latent the guide leaves out": (lg.model, lambda x: None, (x,), "model latent 'z' is not sampled by the guide"),
        "discrete latent not marked": (
            m.plain_model,
            m.exact_guide,
            (m.data(3),),
            "model latent 'c' is not sampled by the guide",
        ),
        "annealing scale": (poutine.scale(lg.model, scale=0.5), lg.guide, (x,), "has a scaled log-density (scale 0.5"),
        "subsampled plate": (subsampled_model, subsampled_guide, (x,), "has a scaled log-density (scale 10"),
        "sequential plate": (sequential_model, lambda x: None, (x,), 'sequential pyro.plate("data")'),
        "differently named plate": (other_plate_model, lambda x: None, (x,), "(its plates: ['batch'])"),
        "batch dims outside plates": (no_to_event_model, lambda x: None, (x,), "batch dimensions outside its plates"),
        "guide site not in the model": (
            lg.model,
            extra_guide,
            (x,),
            "guide site 'u' has no site of that name in the model",
        ),
        "AutoDelta": (lg.model, AutoDelta(lg.model), (x,), "is a point mass (Delta)"),
        "grey levels for a Bernoulli": (
            grey_model,
            lambda x: None,
            (torch.full((4, 3), 0.3, dtype=torch.float64),),
            "has 12 values outside the support of its Independent (Boolean()), e.g. 0.3",
        ),
    }


REFUSALS = list(refusal_cases(LinearGaussian()))


@pytest.mark.parametrize("case", REFUSALS)
def test_styles_that_cannot_be_estimated_per_example_are_refused_in_one_line(case, linear_gaussian):
    model, guide, args, message = refusal_cases(linear_gaussian)[case]
    with pytest.raises(PyroVAEError) as error:
        importance_sample(model, guide, *args, num_samples=10)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_an_event_holding_the_batch_is_refused_at_any_chunk_size(linear_gaussian):
    model, guide, args, message = refusal_cases(linear_gaussian)["event holding the batch"]
    with pytest.raises(PyroVAEError, match="holds the 4 examples"):
        importance_sample(model, guide, *args, num_samples=4, chunk_size=1)


def test_the_autocontinuous_hint_is_given_to_autocontinuous_guides_only(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(3)

    def shared_auxiliary_guide(x):
        pyro.sample("u", pyro.distributions.Normal(0.0, 1.0), infer={"is_auxiliary": True})

    with pytest.raises(PyroVAEError) as error:
        importance_sample(lg.model, shared_auxiliary_guide, x, num_samples=2)
    assert "lies outside" in str(error.value) and "AutoContinuous" not in str(error.value)


def test_harmless_sites_are_accepted_and_the_estimate_stays_exact(linear_gaussian):
    """pyro.deterministic outside the plate (model) and in the guide, and poutine.scale by a tensor 1.0: no
    density changes, so the exact posterior as guide still gives log p(x) for any K."""
    lg = linear_gaussian
    x, _ = lg.data(4)

    def model(x):
        pyro.deterministic("noise_sd", torch.tensor(lg.s))
        lg.model(x)

    def guide(x):
        mean, cov = lg.posterior(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.MultivariateNormal(mean, cov))
            pyro.deterministic("z_norm", z.norm(dim=-1))

    for m, g in ((model, guide), (poutine.scale(lg.model, scale=torch.tensor(1.0)), lg.guide)):
        torch.testing.assert_close(log_likelihood(m, g, x, num_samples=3), lg.log_marginal(x), rtol=0, atol=1e-9)


def test_a_point_mass_that_is_a_function_of_an_auxiliary_site_is_exact(linear_gaussian):
    """u ~ N(0, I) auxiliary, z = m + L u a Delta with log-density −log |det L|: q(z) = N(m, LLᵀ), the exact
    posterior, so every weight is p(x) and the estimate is exact for any K."""
    lg = linear_gaussian
    x, _ = lg.data(5)

    def guide(x):
        mean, cov = lg.posterior(x)
        chol = torch.linalg.cholesky(cov)
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample(
                "u", pyro.distributions.Normal(torch.zeros_like(mean), 1.0).to_event(1), infer={"is_auxiliary": True}
            )
            log_det = chol.diagonal().log().sum().expand(x.shape[0])
            pyro.sample("z", pyro.distributions.Delta(mean + u @ chol.T, log_density=-log_det, event_dim=1))

    torch.testing.assert_close(log_likelihood(lg.model, guide, x, num_samples=7), lg.log_marginal(x), rtol=0, atol=1e-9)


def test_an_empty_batch_is_refused(linear_gaussian):
    x, _ = linear_gaussian.data(3)
    with pytest.raises(PyroVAEError, match="holds no examples"):
        importance_sample(linear_gaussian.model, linear_gaussian.guide, x[:0], num_samples=3)


def test_calls_from_several_threads_each_give_their_own_result(linear_gaussian):
    """Pyro's handler stack is global: without the lock, two threads' traces would mix their sites."""
    import threading

    lg = linear_gaussian
    batches = [lg.data(n, seed=n)[0] for n in (3, 4, 5, 6)]
    results = [None] * len(batches)

    def estimate(i):
        results[i] = log_likelihood(lg.model, lg.guide, batches[i], num_samples=50, chunk_size=5)

    threads = [threading.Thread(target=estimate, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, result in zip(batches, results):
        torch.testing.assert_close(result, lg.log_marginal(x), rtol=0, atol=1e-9)


def test_support_is_checked_only_with_validation_on():
    def grey_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Bernoulli(logits=torch.zeros(3)).to_event(1), obs=x)

    with pyro.validation_enabled(False):
        importance_sample(grey_model, lambda x: None, torch.full((2, 3), 0.3), num_samples=2)


def test_pareto_k_matches_a_known_tail():
    """q(z) = U(0, 1), p(z) = Beta(α, 1): w = α z^(α−1) is exactly Pareto with shape k = 1 − α, and
    p(x) = N(x; 0, 1) whatever z."""

    def model(x, alpha):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Beta(torch.tensor(alpha, dtype=torch.float64), 1.0))
            pyro.sample("x", pyro.distributions.Normal(0.0, 1.0), obs=x)

    def guide(x, alpha):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Uniform(torch.tensor(0.0, dtype=torch.float64), 1.0))

    x = torch.linspace(-1, 1, 40, dtype=torch.float64)
    for alpha in (0.8, 0.5, 0.2):
        result = importance_sample(model, guide, x, alpha, num_samples=5000)
        k = result.pareto_k
        assert abs(k.mean().item() - (1 - alpha)) < 0.08, (alpha, k.mean(), k.std())
        if alpha > 0.5:  # finite variance of the weights (k < 1/2): the standard error holds
            error = result.log_likelihood - pyro.distributions.Normal(0.0, 1.0).log_prob(x)
            assert (error.abs() < 4 * result.stderr + 0.02).all()
    assert importance_sample(model, guide, x, 0.5, num_samples=5).pareto_k.isnan().all()  # too few weights to fit


def test_measured_chunk_size_keeps_the_peak_within_the_budget():
    """With two hidden layers of 512, a 2-dimensional z and 16 pixels the networks, not the sites, use the memory
    (all 400 samples at once took 101 MB); the peak of the heap (glibc's in-use bytes, read after every tensor operation) stays under the budget."""
    import ctypes

    from torch.utils._python_dispatch import TorchDispatchMode

    from pyro_vae import VAE, load_config

    class Mallinfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2

    def in_use():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    class PeakHeap(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    config = load_config(None, ["network.hidden=[512, 512]", "model.z_dim=2"])
    vae = VAE.from_config(config, (1, 4, 4), 10).eval()
    x = (torch.rand(64, 1, 4, 4) < 0.3).float()
    budget = 24 * 2**20
    with pyro.validation_enabled(False):
        importance_sample(vae.model, vae.guide, x, num_samples=8)  # warm up allocator and caches
        base = in_use()
        with PeakHeap() as heap:
            heap.peak = base
            result = importance_sample(vae.model, vae.guide, x, num_samples=400, memory=budget)
    assert result.log_likelihood.isfinite().all()
    assert heap.peak - base <= budget, (heap.peak - base) / 2**20


class TinyPair(torch.nn.Module):
    """A user's model/guide pair in float32, networks of its own: p(z) N(x; W z + b, σ²) and q(z|x) from a
    linear encoder; with ``python_scale`` the model's σ is a Python number read from the drawn z."""

    def __init__(self, python_scale=False):
        super().__init__()
        torch.manual_seed(0)
        self.decoder, self.encoder, self.python_scale = torch.nn.Linear(2, 5), torch.nn.Linear(5, 4), python_scale

    def model(self, x):
        pyro.module("tiny_pair", self)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
            scale = 1.0 + float(z.detach().abs().max()) if self.python_scale else 1.0
            pyro.sample("x", pyro.distributions.Normal(self.decoder(z), scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("tiny_pair", self)
        with pyro.plate("data", len(x)):
            loc, raw = self.encoder(x).chunk(2, -1)
            pyro.sample("z", pyro.distributions.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1))


@pytest.mark.parametrize("python_scale", [False, True])
def test_the_compiled_sampler_gives_the_eager_estimate_bit_for_bit_or_stands_aside(python_scale):
    from pyro_vae.infer.importance import ImportanceSampler

    pair = TinyPair(python_scale)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    compiled = ImportanceSampler(pair.model, pair.guide, (x[:1],), {}, num_samples=70, chunk_size=16, jit=True)
    eager = ImportanceSampler(pair.model, pair.guide, (x[:1],), {}, num_samples=70, chunk_size=16, jit=False)
    for i in range(len(x)):  # one example after another, each from its own stream, as ``evaluate`` runs them
        results = []
        for sampler in (compiled, eager):
            torch.manual_seed(i)
            results.append(sampler.estimate(x[i : i + 1]))
            results.append(torch.rand(()))  # where each leaves the stream
        for name in ("log_likelihood", "elbo", "ess", "pareto_k"):
            assert torch.equal(getattr(results[0], name), getattr(results[2], name))
        assert torch.equal(results[1], results[3])
    # chunks of 16 and the last of 6: a graph for each, used where it reproduced the eager weights
    assert sorted(compiled.compiled) == [6, 16]
    # a σ read from the draws as a Python number is frozen into a traced graph: the check turns it away
    assert all((graph is None) == python_scale for graph in compiled.compiled.values())
    assert not eager.compiled


@pytest.mark.parametrize("python_scale", [False, True])
def test_the_inductor_compiled_sampler_draws_what_eager_draws_within_rounding_or_says_why_it_stands_aside(
    python_scale,
):
    from pyro_vae.infer.importance import ImportanceSampler

    pair = TinyPair(python_scale)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))

    def sampler(**options):
        return ImportanceSampler(pair.model, pair.guide, (x[:1],), {}, num_samples=70, chunk_size=16, **options)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, eager, estimates = sampler(compile=True), sampler(jit=False), []
        for i in range(len(x)):
            results = []
            for each in (compiled, eager):
                torch.manual_seed(i)
                results.append(each.estimate(x[i : i + 1]))
                results.append(torch.rand(()))  # where each leaves the stream
            for name in ("log_likelihood", "elbo", "ess"):
                assert torch.allclose(getattr(results[0], name), getattr(results[2], name), rtol=1e-5, atol=1e-5)
            assert torch.equal(results[1], results[3])
            estimates.append(results[0].log_likelihood)
        # a sampler that starts at example 1 (a second rank's share) checks its graphs there: the same estimates
        later = sampler(compile=True)
        for i in range(1, len(x)):
            torch.manual_seed(i)
            assert torch.equal(later.estimate(x[i : i + 1]).log_likelihood, estimates[i])
    assert sorted(compiled.compiled) == [6, 16]
    assert all((graph is None) == python_scale for graph in compiled.compiled.values())
    assert compiled.compile is not python_scale
    messages = [str(w.message) for w in caught if str(w.message).startswith("compile:")]
    if python_scale:  # a σ read from the draws into Python cannot be traced: the reason, once per sampler; the JIT,
        # tried next, is turned away by its own check for each chunk size, silently
        assert len(messages) == 2 and all(
            re.fullmatch(r"compile: tracing failed \(.*\); estimating with Pyro's JIT instead \(--no-compile .*", m)
            for m in messages
        )
    else:
        assert messages == []


def test_where_inductor_fails_the_sampler_goes_on_with_the_jit_and_the_eager_estimate(monkeypatch):
    from pyro_vae.infer import importance

    def fails(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nthe rest of a long message")

    monkeypatch.setattr(importance, "StoreCompiled", fails)
    pair = TinyPair()
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    samplers = [
        importance.ImportanceSampler(pair.model, pair.guide, (x[:1],), {}, num_samples=70, chunk_size=16, **options)
        for options in ({"compile": True}, {"jit": False})
    ]
    with pytest.warns(UserWarning) as caught:
        for i in range(len(x)):
            estimates = []
            for sampler in samplers:
                torch.manual_seed(i)
                estimates.append(sampler.estimate(x[i : i + 1]).log_likelihood)
            assert torch.equal(*estimates)  # the JIT's weights are the eager ones, bit for bit
    assert [str(w.message) for w in caught] == [
        "compile: tracing failed (RuntimeError: no C++ compiler); estimating with Pyro's JIT instead (--no-compile "
        "skips it)"
    ]
    assert samplers[0].compile is False and sorted(samplers[0].compiled) == [6, 16]
    assert all(graph is not None for graph in samplers[0].compiled.values())  # Pyro's JIT graphs, checked
