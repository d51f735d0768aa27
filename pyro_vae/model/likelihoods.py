"""Likelihoods p(x|z) chosen by name: decoder outputs → a distribution over x.

A likelihood says how many decoder outputs it needs per pixel (``num_outputs``), turns outputs
of shape [..., num_outputs, *image_shape] into a distribution with event shape ``image_shape``,
and maps grey images in [0, 1] to its own data space with ``observe`` (binarization for the
Bernoulli, 8-bit levels for the discretized logistic). Each is a normalized density or mass on
that space, so log p(x) values of one likelihood are comparable across models.
"""

import math
from typing import Annotated

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from ..errors import PyroVAEError
from ..registry import Range, Registry

LIKELIHOODS = Registry("likelihood")


class Likelihood(nn.Module):
    num_outputs = 1  # decoder outputs per pixel
    discrete = False  # True where log p(x) is a log mass, so bits per dimension are reported
    dynamic = False  # True where observe() draws a fresh x at every use (dynamic binarization)
    real = False  # True where x may be any real vector (points in ℝ^D), not only grey levels in [0, 1]
    grey_only = False  # True where only one channel makes sense (binarized grey levels)

    def __init__(self, image_shape):
        super().__init__()
        self.image_shape = tuple(image_shape)

    def outputs(self, params):
        """The ``num_outputs`` tensors [..., *image_shape] held in decoder outputs [..., P, *image_shape]
        (one output as a view: unbind's backward would stack a copy of the gradient)."""
        dim = -len(self.image_shape) - 1
        return (params.squeeze(dim),) if params.shape[dim] == 1 else params.unbind(dim)

    def forward(self, params):
        """p(x|z) with batch shape params.shape[:-len(image_shape)-1] and event shape ``image_shape``."""
        raise NotImplementedError

    def observe(self, grey, generator=None):
        """x in this likelihood's data space for grey images in [0, 1] (same shape)."""
        return grey

    def mean(self, params):
        """E[x|z], clamped to [0, 1] for images (grey levels) and left as it is for points in ℝ^D."""
        mean = self(params).mean
        return mean if len(self.image_shape) == 1 else mean.clamp(0, 1)


def bernoulli_log_mass(logits, x):
    """log p(x) of Bernoulli(σ(logits)) at x ∈ {0, 1}, elementwise, x broadcast against logits (say x [B, …]
    against logits [K, B, …]): log σ(t) = −log(1 + e⁻ᵗ), t = logits·(2x − 1), exact and stable. Where a gradient
    is taken, as −binary_cross_entropy_with_logits (one fused kernel each way, which TorchScript differentiates
    natively); without one, as logsigmoid(t) (two passes, where the cross-entropy takes more)."""
    if torch.is_grad_enabled() and (logits.requires_grad or x.requires_grad):
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    return F.logsigmoid(logits * (2 * x - 1))


class LogitBernoulli(dist.Bernoulli):
    """Bernoulli(logits) whose log p(x) at x ∈ {0, 1} is ``bernoulli_log_mass``: computed from logits
    broadcast over the [particles, B, pixels] tensors, without Pyro's expand of x to their shape."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return bernoulli_log_mass(self.logits, value)


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    """Bernoulli on binarized pixels, parameterized by logits.

    ``binarize = "dynamic"`` draws x ~ Bernoulli(grey) afresh each time a training image is used
    (as in the IWAE literature); ``"static"`` binarizes the training set once. Test images are
    always binarized once with a fixed seed.
    """

    discrete = True
    grey_only = True

    def __init__(self, image_shape, *, binarize: str = "dynamic"):
        super().__init__(image_shape)
        if binarize not in ("dynamic", "static"):
            raise PyroVAEError(f"likelihood.binarize must be dynamic or static, got {binarize!r}")
        self.dynamic = binarize == "dynamic"

    def forward(self, params):
        (logits,) = self.outputs(params)
        return LogitBernoulli(logits=logits).to_event(len(self.image_shape))

    def observe(self, grey, generator=None):
        """x = [u < grey], u ~ U[0, 1): a Bernoulli(grey) draw in a quarter of torch.bernoulli's time on the CPU."""
        return torch.rand(grey.shape, generator=generator, device=grey.device, dtype=grey.dtype).lt_(grey)

    def mean(self, params):
        return torch.sigmoid(self.outputs(params)[0])


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalized density on grey levels in [0, 1]."""

    def forward(self, params):
        (logits,) = self.outputs(params)
        return dist.ContinuousBernoulli(logits=logits).to_event(len(self.image_shape))


class LocScale(Likelihood):
    """A location-scale family on grey levels with the decoder giving the location.

    ``learn_scale``: ``"fixed"`` keeps ``scale``; ``"shared"`` learns one scale; ``"pixel"`` learns
    one per pixel. Learned scales stay above ``min_scale``.
    """

    family = None  # a pyro.distributions class taking (loc, scale)
    real = True

    def __init__(
        self,
        image_shape,
        *,
        scale: Annotated[float, Range(1e-6, 1e6)] = 0.1,
        learn_scale: str = "fixed",
        min_scale: Annotated[float, Range(0, 1e6)] = 0.01,
    ):
        super().__init__(image_shape)
        shapes = {"fixed": None, "shared": (), "pixel": self.image_shape}
        if learn_scale not in shapes:
            raise PyroVAEError(f"likelihood.learn_scale must be one of {', '.join(shapes)}, got {learn_scale!r}")
        if not 0 <= min_scale < scale:
            raise PyroVAEError(f"likelihood needs 0 <= min_scale < scale, got min_scale={min_scale}, scale={scale}")
        self.min_scale = min_scale
        initial = math.log(math.expm1(scale - min_scale))  # softplus⁻¹(scale − min_scale)
        if shapes[learn_scale] is None:
            self.register_buffer("raw_scale", torch.tensor(initial))
        else:
            self.raw_scale = nn.Parameter(torch.full(shapes[learn_scale], initial))

    def forward(self, params):
        (loc,) = self.outputs(params)
        scale = self.min_scale + F.softplus(self.raw_scale)
        return self.family(loc, scale.expand(loc.shape)).to_event(len(self.image_shape))


@LIKELIHOODS.register("gaussian")
class Gaussian(LocScale):
    """Normal(decoder(z), scale²) per pixel: the squared-error loss ‖x − x̂‖² / 2scale² made a density."""

    family = dist.Normal


@LIKELIHOODS.register("laplace")
class Laplace(LocScale):
    """Laplace(decoder(z), scale) per pixel: the absolute-error loss made a density."""

    family = dist.Laplace


class DiscretizedLogisticDistribution(dist.TorchDistribution):
    """Logistic(loc, scale) discretized to ``num_bins`` equally spaced levels in [0, 1].

    P(x = k/(n−1)) = σ((x + h − loc)/scale) − σ((x − h − loc)/scale), h = 1/(2(n−1)); the edge bins
    take the tails, so the masses sum to 1 (Salimans et al. 2017).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, loc, scale, num_bins=256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.num_bins = num_bins
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return DiscretizedLogisticDistribution(
            self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.num_bins
        )

    @property
    def mean(self):
        return self.loc.clamp(0, 1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            u = torch.rand(self._extended_shape(sample_shape), device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            x = self.loc + self.scale * (u.log() - (-u).log1p())
            return (x.clamp(0, 1) * (self.num_bins - 1)).round() / (self.num_bins - 1)

    def log_prob(self, value):
        half = 0.5 / (self.num_bins - 1)
        upper = (value + half - self.loc) / self.scale
        lower = (value - half - self.loc) / self.scale
        log_cdf_upper = F.logsigmoid(upper)
        log_sf_lower = F.logsigmoid(-lower)
        # σ(u) − σ(l) = σ(u) σ(−l) (1 − e^{l−u}): stable in both tails
        log_mass = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(lower - upper))
        log_mass = torch.where(value < half, log_cdf_upper, log_mass)
        return torch.where(value > 1 - half, log_sf_lower, log_mass)


@LIKELIHOODS.register("discretized_logistic")
class DiscretizedLogistic(Likelihood):
    """Discretized logistic on 8-bit grey levels (256 bins); the decoder gives loc and scale per pixel."""

    num_outputs = 2
    discrete = True

    def __init__(
        self,
        image_shape,
        *,
        num_bins: Annotated[int, Range(2, 2**16)] = 256,
        min_scale: Annotated[float, Range(1e-6, 1e6)] = 1e-3,
    ):
        super().__init__(image_shape)
        self.num_bins = num_bins
        self.min_scale = min_scale

    def forward(self, params):
        loc, raw_scale = self.outputs(params)
        scale = self.min_scale + F.softplus(raw_scale)
        return dist.Independent(DiscretizedLogisticDistribution(loc, scale, self.num_bins), len(self.image_shape))

    def observe(self, grey, generator=None):
        return (grey * (self.num_bins - 1)).round() / (self.num_bins - 1)


class DiscretizedLogisticMixtureDistribution(dist.TorchDistribution):
    """Per pixel, a mixture of ``K`` discretized logistics: P(x) = Σₖ πₖ P_k(x) over ``num_bins`` levels
    (Salimans et al. 2017, PixelCNN++), from ``logits``, ``loc`` and ``scale`` [..., K]. The channels of a
    pixel are independent given z (PixelCNN++'s dependence between channels needs an autoregressive
    decoder); each mixture is normalized over the levels because each component is."""

    arg_constraints = {}
    support = constraints.unit_interval

    def __init__(self, logits, loc, scale, num_bins=256, validate_args=None):
        self.logits, self.loc, self.scale = torch.broadcast_tensors(logits, loc, scale)
        self.num_bins = num_bins
        super().__init__(self.loc.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = (*batch_shape, self.loc.shape[-1])
        return DiscretizedLogisticMixtureDistribution(
            self.logits.expand(shape), self.loc.expand(shape), self.scale.expand(shape), self.num_bins
        )

    @property
    def mean(self):
        return (self.logits.softmax(-1) * self.loc.clamp(0, 1)).sum(-1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
            pick = lambda t: t.expand(*sample_shape, *t.shape).gather(-1, k).squeeze(-1)  # noqa: E731
            return DiscretizedLogisticDistribution(pick(self.loc), pick(self.scale), self.num_bins).sample()

    def log_prob(self, value):
        components = DiscretizedLogisticDistribution(self.loc, self.scale, self.num_bins).log_prob(value.unsqueeze(-1))
        return torch.logsumexp(components + self.logits.log_softmax(-1), -1)


@LIKELIHOODS.register("discretized_logistic_mixture")
class DiscretizedLogisticMixture(Likelihood):
    """A mixture of ``num_components`` discretized logistics per pixel and channel on 8-bit levels (the
    PixelCNN++ likelihood without its dependence between channels); the decoder gives each component's
    weight logit, loc and scale."""

    discrete = True

    def __init__(
        self,
        image_shape,
        *,
        num_components: Annotated[int, Range(1, 64)] = 5,
        num_bins: Annotated[int, Range(2, 2**16)] = 256,
        min_scale: Annotated[float, Range(1e-6, 1e6)] = 1e-3,
    ):
        super().__init__(image_shape)
        self.num_components, self.num_bins, self.min_scale = num_components, num_bins, min_scale
        self.num_outputs = 3 * num_components

    def forward(self, params):
        outputs = self.outputs(params)
        k = self.num_components
        logits, loc, raw_scale = (torch.stack(outputs[i * k : (i + 1) * k], -1) for i in range(3))
        scale = self.min_scale + F.softplus(raw_scale)
        return dist.Independent(
            DiscretizedLogisticMixtureDistribution(logits, loc, scale, self.num_bins), len(self.image_shape)
        )

    def observe(self, grey, generator=None):
        return (grey * (self.num_bins - 1)).round() / (self.num_bins - 1)
