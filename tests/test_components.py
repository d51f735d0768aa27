"""Priors and likelihoods: shapes, normalization, sample/log_prob consistency, exact formulas."""

import itertools
import math

import pytest
import torch

from pyro_vae.model.likelihoods import LIKELIHOODS
from pyro_vae.model.networks import NETWORKS
from pyro_vae.model.priors import PRIORS, DiagonalNormalMixture
from pyro_vae.model.spec import ModelSpec

UNCONDITIONAL_PRIORS = [n for n in PRIORS.names() if not PRIORS.get(n).conditional]


def build_prior(name, z_dim, image_shape=(1, 4, 4), num_classes=3, **options):
    conditional = PRIORS.get(name).conditional
    spec = ModelSpec(image_shape, z_dim, num_classes, conditional, num_classes if conditional else 0)
    network = NETWORKS.build("mlp", {"hidden": [8]}, spec, 1)
    return PRIORS.build(name, options, spec, network.encoder), spec


def prior_distribution(name, z_dim, **options):
    prior, spec = build_prior(name, z_dim, **options)
    c = torch.nn.functional.one_hot(torch.tensor([1]), spec.num_classes).float() if prior.conditional else None
    with torch.no_grad():
        return prior(c), prior


def grid(z_dim, low=-12.0, high=12.0, steps=2401):
    """Points [N, z_dim] of a regular grid and the volume of one cell."""
    axis = torch.linspace(low, high, steps if z_dim == 1 else 321)
    points = torch.cartesian_prod(*[axis] * z_dim).reshape(-1, z_dim)
    return points, (axis[1] - axis[0]).item() ** z_dim


@pytest.mark.parametrize("name", PRIORS.names())
def test_prior_shapes(name):
    z_dim = 3
    prior, spec = build_prior(name, z_dim)
    c = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 0, 1]), 3).float() if prior.conditional else None
    d = prior(c).expand([5])
    assert d.event_shape == (z_dim,) and d.batch_shape == (5,)
    z = d.sample()
    assert z.shape == (5, z_dim)
    assert d.log_prob(z).shape == (5,)
    assert d.sample((7,)).shape == (7, 5, z_dim)


@pytest.mark.parametrize("name", PRIORS.names())
def test_prior_is_normalized_and_its_samples_follow_its_density(name):
    z_dim = 2 if name == "flow" else 1
    d, _ = prior_distribution(name, z_dim)
    points, cell = grid(z_dim)
    with torch.no_grad():
        density = d.log_prob(points).exp().reshape(-1)
    assert density.sum().item() * cell == pytest.approx(1.0, abs=2e-3)
    mean_from_density = (density * points[:, 0]).sum().item() * cell
    samples = d.sample((20000,)).reshape(20000, -1)[:, 0]
    stderr = samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - mean_from_density) < 4 * stderr


@pytest.mark.parametrize("name", [n for n in PRIORS.names() if n not in ("mog", "vamp")])
def test_prior_rsample_is_differentiable_and_matches_log_prob(name):
    prior, spec = build_prior(name, 2)
    c = torch.nn.functional.one_hot(torch.tensor([1]), 3).float() if prior.conditional else None
    d = prior(c)
    assert d.has_rsample
    torch.manual_seed(0)
    z = d.rsample((5000,))
    log_p = d.log_prob(z)
    assert torch.isfinite(log_p).all()
    # E_p[−log p(z)] is the entropy: compare with the sample's own log-density
    if hasattr(d, "entropy") and name != "flow":
        expected = d.entropy().sum().item() if d.entropy().dim() else d.entropy().item()
        assert -log_p.mean().item() == pytest.approx(expected, abs=4 * log_p.std().item() / math.sqrt(5000))
    params = [p for p in prior.parameters() if p.requires_grad]
    if params:
        z.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_mog_log_prob_equals_logsumexp_by_hand():
    prior, _ = build_prior("mog", 3, num_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.1, -1.0, 0.5, 2.0]))
    z = torch.randn(6, 3)
    weights = torch.log_softmax(prior.logits, 0)
    scales = torch.nn.functional.softplus(prior.raw_scales) + 1e-4
    components = torch.distributions.Normal(prior.locs, scales).log_prob(z[:, None, :]).sum(-1)
    by_hand = torch.logsumexp(weights + components, dim=-1)
    torch.testing.assert_close(prior().log_prob(z), by_hand)


def test_vamp_log_prob_is_the_mixture_of_encoder_posteriors():
    prior, _ = build_prior("vamp", 2, num_components=5)
    z = torch.randn(4, 2)
    loc, scale = prior.encoder(prior.pseudo_inputs)
    per_component = torch.distributions.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)
    by_hand = torch.logsumexp(per_component, -1) - math.log(5)
    torch.testing.assert_close(prior().log_prob(z), by_hand)


def test_vamp_shares_the_encoder_without_holding_a_copy_and_loads_checkpoints_that_did():
    prior, _ = build_prior("vamp", 2, num_components=5)
    assert list(prior.state_dict()) == ["raw_pseudo_inputs"]  # the guide registers the encoder's parameters
    old = {**prior.state_dict(), **{f"encoder.{k}": v for k, v in prior.encoder.state_dict().items()}}
    prior.load_state_dict(old)


def test_mixture_log_prob_is_exact_for_narrow_components_far_from_zero():
    torch.manual_seed(0)
    logits, loc, scale = torch.randn(7), 5 + torch.randn(7, 50), torch.full((7, 50), 0.01)
    z = loc[torch.tensor([[0, 3], [6, 6]])] + 0.02 * torch.randn(2, 2, 50)  # [2, 2, 50] near components
    exact = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits.double()),
        torch.distributions.Independent(torch.distributions.Normal(loc.double(), scale.double()), 1),
    ).log_prob(z.double())
    torch.testing.assert_close(
        DiagonalNormalMixture(logits, loc, scale).log_prob(z).double(), exact, atol=1e-3, rtol=1e-6
    )


def likelihood(name, image_shape, **options):
    return LIKELIHOODS.build(name, options, image_shape)


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_likelihood_shapes(name):
    lik = likelihood(name, (1, 3, 2))
    params = torch.randn(4, 5, lik.num_outputs, 1, 3, 2)
    d = lik(params)
    assert d.batch_shape == (4, 5) and d.event_shape == (1, 3, 2)
    x = lik.observe(torch.rand(5, 1, 3, 2))
    assert d.log_prob(x).shape == (4, 5)
    assert d.sample().shape == (4, 5, 1, 3, 2)
    assert lik.mean(params).shape == (4, 5, 1, 3, 2)


@pytest.mark.parametrize("name", [n for n in LIKELIHOODS.names() if LIKELIHOODS.get(n).discrete])
def test_discrete_likelihood_sums_to_one_and_matches_its_samples(name):
    lik = likelihood(name, (1, 1, 2) if name == "bernoulli" else (1, 1, 1))
    params = torch.randn(lik.num_outputs, *lik.image_shape) * 2
    d = lik(params)
    if name == "bernoulli":
        support = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2))).reshape(-1, 1, 1, 2)
    else:
        support = (torch.arange(256.0) / 255).reshape(-1, 1, 1, 1)
    probs = d.log_prob(support).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    samples = d.sample((20000,))
    matches = (samples[:, None] == support[None]).flatten(2).all(-1).double().mean(0)
    assert (matches - probs).abs().max() < 4 * (probs * (1 - probs) / 20000).sqrt().max() + 1e-3


def test_bernoulli_log_mass_and_its_gradient_match_torch_at_extreme_logits():
    logits = torch.tensor([-100.0, -30.0, -20.0, -19.9, -3.0, 0.0, 3.0, 19.9, 20.0, 30.0, 100.0]).repeat(2, 1)
    x = torch.stack([torch.zeros(11), torch.ones(11)])
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours_lp = likelihood("bernoulli", (11,))(ours[:, None]).base_dist.log_prob(x)
    theirs_lp = -torch.nn.functional.binary_cross_entropy_with_logits(theirs, x, reduction="none")
    torch.testing.assert_close(ours_lp, theirs_lp, rtol=1e-6, atol=1e-6)
    ours_lp.sum().backward(), theirs_lp.sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in LIKELIHOODS.names() if not LIKELIHOODS.get(n).discrete])
def test_continuous_likelihood_integrates_to_one(name):
    lik = likelihood(name, (1, 1, 1))
    params = torch.full((lik.num_outputs, 1, 1, 1), 0.3)
    low, high = (0.0, 1.0) if name == "continuous_bernoulli" else (-4.0, 5.0)
    xs = torch.linspace(low, high, 200001).reshape(-1, 1, 1, 1)
    density = lik(params).log_prob(xs).exp()
    assert torch.trapezoid(density, dx=(high - low) / 200000).item() == pytest.approx(1.0, abs=1e-3)
    samples = lik(params).sample((20000,)).flatten()
    mean = torch.trapezoid(density * xs.flatten(), dx=(high - low) / 200000).item()
    assert abs(samples.mean().item() - mean) < 4 * samples.std().item() / math.sqrt(20000)


def test_bernoulli_observe_binarizes_dynamically_and_discretized_logistic_quantizes():
    grey = torch.full((20000,), 0.3)
    binary = likelihood("bernoulli", (1,)).observe(grey)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert binary.mean().item() == pytest.approx(0.3, abs=0.02)
    levels = likelihood("discretized_logistic", (1,)).observe(torch.rand(1000)) * 255
    torch.testing.assert_close(levels, levels.round())


def test_learned_likelihood_scale_is_a_parameter():
    assert len(list(likelihood("gaussian", (1, 2, 2), learn_scale="pixel").parameters())) == 1
    assert len(list(likelihood("laplace", (1, 2, 2), learn_scale="shared").parameters())) == 1
    assert len(list(likelihood("gaussian", (1, 2, 2)).parameters())) == 0


def test_training_images_are_held_as_bytes_only_where_that_is_exact():
    from pyro_vae.runs.experiment import compact, expand

    eight_bit = torch.randint(0, 256, (5, 1, 4, 4)).float() / 255
    held = compact(eight_bit)
    assert held.dtype == torch.uint8 and torch.equal(expand(held[[3, 0]]), eight_bit[[3, 0]])
    grey = torch.rand(5, 1, 4, 4)
    assert compact(grey) is grey and expand(grey) is grey


def test_the_bernoulli_log_mass_equals_torch_s_with_its_gradients_and_broadcasts_over_particles():
    from pyro_vae.model.likelihoods import bernoulli_log_mass

    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((6, 5), 0.5), generator=generator)
    for shape in ((6, 5), (3, 6, 5)):  # [B, D] and [K, B, D] logits against [B, D] data
        logits = (torch.randn(shape, generator=generator) * 30).requires_grad_()
        theirs = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand(shape), reduction="none")
        ours = bernoulli_log_mass(logits, x)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            *(torch.autograd.grad(f.sum(), logits)[0] for f in (ours, theirs)), rtol=1e-6, atol=1e-6
        )
        with torch.no_grad():  # the path without a gradient, log σ(logits·(2x − 1))
            torch.testing.assert_close(bernoulli_log_mass(logits, x), theirs, rtol=1e-6, atol=1e-6)
    data = x.clone().requires_grad_()  # the data's gradient, where a caller asks for it: the cross-entropy's
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits.detach(), data.expand(shape), reduction="none"
    )
    torch.testing.assert_close(
        torch.autograd.grad(bernoulli_log_mass(logits.detach(), data).sum(), data)[0],
        torch.autograd.grad(expected.sum(), data)[0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_guide_s_normal_scores_its_own_draw_from_the_noise_with_normal_s_value_and_total_gradient():
    from pyro.distributions import Normal

    from pyro_vae.model.posteriors import ReparameterizedNormal
    from pyro_vae.model.priors import UnitNormal

    loc = torch.randn(5, 3, requires_grad=True)
    scale = (torch.rand(5, 3) + 0.1).requires_grad_()
    q = ReparameterizedNormal(loc, scale)
    z = q.rsample()
    ours, theirs = q.log_prob(z), Normal(loc, scale).log_prob(z)  # the second differentiates through z too
    torch.testing.assert_close(ours, theirs)
    gradients = [
        torch.autograd.grad(f.sum(), (loc, scale), retain_graph=True, allow_unused=True) for f in (ours, theirs)
    ]
    assert gradients[0][0] is None and gradients[1][0].abs().max() < 1e-5  # d/dloc log q(loc + scale·ε) = 0
    torch.testing.assert_close(gradients[0][1], gradients[1][1])
    for shape, q_scale in (
        ((), scale),
        ((2,), scale),
        ((), torch.tensor(0.5)),
    ):  # a sample shape; a scale that broadcasts
        draws = []
        for normal in (ReparameterizedNormal, Normal):
            torch.manual_seed(1)
            draws.append(normal(loc, q_scale).rsample(shape))
        torch.testing.assert_close(*draws, rtol=0, atol=0)  # the numbers Normal draws
    other = torch.randn(5, 3)  # any other value: Normal's density
    torch.testing.assert_close(q.log_prob(other), Normal(loc, scale).log_prob(other))
    other.requires_grad_()
    unit, standard = UnitNormal(torch.zeros(3), torch.ones(3)).log_prob(other), Normal(0.0, 1.0).log_prob(other)
    torch.testing.assert_close(unit, standard)
    torch.testing.assert_close(*(torch.autograd.grad(f.sum(), other)[0] for f in (unit, standard)))


@pytest.mark.parametrize("name", ["discretized_logistic", "discretized_logistic_mixture"])
def test_discretized_likelihoods_sum_to_one_over_the_256_levels(name):
    """Each pixel's masses over the 256 levels of 8-bit data add up to 1, whatever the decoder outputs."""
    shape = (3, 2, 2)
    lik = likelihood(name, shape).double()
    params = 3 * torch.randn(lik.num_outputs, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pixel = lik(params).base_dist
    levels = (torch.arange(256, dtype=torch.float64) / 255).reshape(256, 1, 1, 1).expand(256, *shape)
    torch.testing.assert_close(
        pixel.log_prob(levels).logsumexp(0), torch.zeros(shape, dtype=torch.float64), atol=1e-9, rtol=0
    )
