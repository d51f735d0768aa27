"""Kingma, Rezende, Mohamed & Welling (2014)'s M2: a VAE whose label is a latent, for partly labelled data.

The model is p(y) p(z) p(x|y,z), y ~ Categorical(1/C) (one-hot), z ~ the prior, x ~ the likelihood of the
decoder's output for (z, y). The guide is q(y|x) q(z|x,y): a classifier (an MLP) and the encoder fed the
one-hot y. Where an example's label is known, y is observed and the ELBO bounds log p(x, y); where it is
not, the guide's y site is marked for parallel enumeration, so that ``TraceEnum_ELBO`` sums it out exactly:

    U(x) = Σ_y q(y|x) [log p(x|y,z) + log p(y) + log p(z) − log q(z|x,y)] + H(q(y|x)),   z ~ q(z|x,y),

a bound on log p(x). The classifier is trained by U's weighting and by the term α·log q(y|x) of the
labelled examples (``infer.objectives.SemiSupervisedLoss``).
"""

import math

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import OneHotCategorical
from torch import nn

from ..errors import PyroVAEError
from .networks import activation_class, mlp
from .vae import VAE


class Classifier(nn.Module):
    """x [..., B, *image_shape] → logits of q(y|x) [..., B, num_classes]: an MLP of the flattened x."""

    def __init__(self, image_shape, hidden, num_classes, activation):
        super().__init__()
        self.event_dims = len(image_shape)
        self.net = mlp([math.prod(image_shape), *hidden, num_classes], activation)

    def forward(self, x):
        return self.net(x.flatten(-self.event_dims))


class SemiSupervisedVAE(VAE):
    """M2: the model and guide take ``(x, y=None)``; y [B] the labels of x (all known), or None (all unknown,
    summed out). A batch of both kinds is two calls (``SemiSupervisedLoss``), so that each keeps one
    ``pyro.plate("data", B)``."""

    def __init__(self, *args, classifier, **kwargs):
        super().__init__(*args, **kwargs)
        if self.prior.conditional or self.prior.registered_name == "vamp":
            raise PyroVAEError(
                f"the semi_supervised condition (M2) draws z ~ p(z) apart from y, and its encoder needs y; the "
                f"{self.prior.registered_name} prior does not fit it: use standard_normal, gaussian, mog or flow"
            )
        if self.spec.num_classes < 2:
            raise PyroVAEError(
                "the semi_supervised condition (M2) learns a label of two or more classes; this data has one "
                "(a dataset without labels)"
            )
        self.classifier = classifier

    @classmethod
    def extra_modules(cls, condition, spec):
        """The classifier q(y|x): an MLP of the condition's ``hidden`` sizes, softplus between layers (Kingma's)."""
        return {
            "classifier": Classifier(spec.image_shape, condition.hidden, spec.num_classes, activation_class("softplus"))
        }

    def label_condition(self, y, n, dtype):
        """One-hot labels [n, num_classes] of y [n], or None where y is None (the labels are unknown)."""
        return None if y is None else self.onehot(y, n, dtype)

    def model(self, x, y=None, beta=1.0):
        """p(y) p(z) p(x|y,z): y observed where given, else a latent the guide enumerates; ``beta`` scales log p(z)."""
        for part in ("decoder", "prior", "likelihood"):
            pyro.module(f"{self.pyro_name}.{part}", getattr(self, part))
        t, c = self.condition(x, y)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("y", OneHotCategorical(logits=t.new_zeros(self.spec.num_classes)), obs=c)  # uniform p(y)
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior(None))
            pyro.sample("x", self.likelihood(self.network(self.decoder, z, c)), obs=t)

    def guide(self, x, y=None, beta=1.0):
        """q(y|x) q(z|x,y): y drawn from the classifier, marked for parallel enumeration, where not given."""
        pyro.module(f"{self.pyro_name}.encoder", self.encoder)
        pyro.module(f"{self.pyro_name}.classifier", self.classifier)
        t, c = self.condition(x, y)
        with pyro.plate("data", x.shape[0]):
            if c is None:
                logits = self.network(self.classifier, t)
                c = pyro.sample("y", OneHotCategorical(logits=logits), infer={"enumerate": "parallel"})
            with poutine.scale(scale=beta):
                pyro.sample("z", self.encoder.head.distribution(*self.network(self.encoder, t, c)))

    def classify(self, x):
        """Logits of q(y|x) [B, num_classes] for images x [B, *image_shape]."""
        return self.classifier(self.condition(x, None)[0])

    @torch.no_grad()
    def predict(self, x):
        """argmax_y q(y|x) [B]."""
        return self.classify(x).argmax(-1)

    @torch.no_grad()
    def encode(self, x, y=None):
        """(loc, scale) [B, z_dim] of q(z|x,y), y the most likely label under q(y|x) where not given."""
        return super().encode(x, self.predict(x) if y is None else y)

    @torch.no_grad()
    def decode(self, z, y=None):
        """E[x|z,y], of shape [..., B, *image_shape]; y [B] is needed: z alone does not say which class to draw."""
        if y is None:
            raise PyroVAEError("M2 decodes z with a label y: pass the labels to draw (the class) beside z (the style)")
        return self.target_mean(z, F.one_hot(y, self.spec.num_classes).to(z.dtype))

    @torch.no_grad()
    def sample(self, n, y=None):
        """New data: E[x|z,y] for z ~ p(z) and y ~ p(y) (uniform) where not given, shape [n, *image_shape]."""
        if y is None:
            y = torch.randint(self.spec.num_classes, (n,), device=self.device)
        return self.decode(self.sample_prior(n, y), y)

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """E[x|z,y] at z = the mean of q(z|x,y), y the most likely label under q(y|x) where not given."""
        y = self.predict(x) if y is None else y
        return self.decode(self.encode(x, y)[0], y)
