"""The importance-sampled log p(x) against the closed form of a linear-Gaussian model."""
import math

import pyro
import pytest
import torch
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
        stderrs.append(result.stderr.square().sum().sqrt().item() / len(x))
        if k == 1:
            torch.testing.assert_close(result.log_likelihood, result.elbo)
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
        for name, elbo in (("analytic", TraceMeanField_ELBO(max_plate_nesting=1)), ("sampled", Trace_ELBO(max_plate_nesting=1)))
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
