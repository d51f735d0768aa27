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
# # Estimate log p(x) of your own model
#
# pyro_vae's evaluator takes any Pyro model and guide that keep one contract, not only the library's
# VAE. It estimates each example's log p(x) by importance sampling,
#
# $$\log p(x) \approx \log \frac{1}{K} \sum_k \frac{p(x, z_k)}{q(z_k|x)}, \qquad z_k \sim q(z|x),$$
#
# and says how far to trust it. This tutorial writes a model whose log p(x) is known in closed form
# (a linear-Gaussian one), checks the estimate against it, reads the diagnostics of a poor guide, meets
# a refusal and fixes it, and checks the estimate once more with annealed importance sampling, which
# needs no guide at all.

# %%
import pyro
import pyro.distributions as dist
import torch

from pyro_vae import LocalPosterior, PyroVAEError, annealed_importance_sample, importance_sample
from pyro_vae.model.posteriors import GaussianHead

torch.manual_seed(0)
D, Z, N, s = 5, 2, 8, 0.5
W = torch.randn(D, Z)

# %% [markdown]
# ## A model that keeps the contract
#
# z ~ N(0, I), x | z ~ N(Wz, s² I). Every sample site lies inside one `pyro.plate("data", B)`, and each
# declares its per-example dimensions with `.to_event(1)`, so that its log-density has shape [B]: one
# number per example. The exact posterior p(z|x) is Gaussian, and so is p(x) = N(0, WWᵀ + s²I).


# %%
def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, s).to_event(1), obs=x)


def posterior(x):
    cov = torch.linalg.inv(torch.eye(Z) + W.T @ W / s**2)
    return x @ W @ cov / s**2, cov


def guide(x, shift=0.0, inflate=1.0):
    mean, cov = posterior(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.MultivariateNormal(mean + shift, cov * inflate**2))


x = dist.MultivariateNormal(torch.zeros(D), W @ W.T + s**2 * torch.eye(D)).sample((N,))
exact = dist.MultivariateNormal(torch.zeros(D), W @ W.T + s**2 * torch.eye(D)).log_prob(x)

# %% [markdown]
# ## The estimate and its diagnostics
#
# With the exact posterior as the guide every weight equals p(x): the estimate is exact for any K, the
# effective sample size (ESS) is K, and the standard error is 0.

# %%
estimate = importance_sample(model, guide, x, num_samples=1000)
print("error    ", (estimate.log_likelihood - exact).abs().max().item())
print("ESS      ", estimate.ess.mean().item())

# %% [markdown]
# A guide that is shifted and too narrow misses part of the posterior. The estimate is then a lower
# bound of unknown slack: the ESS falls, and the Pareto shape k̂ of the largest weights rises above 0.7,
# where the standard error no longer measures the error (Vehtari et al.). Read k̂ before the estimate.

# %%
poor = importance_sample(model, lambda x: guide(x, shift=1.0, inflate=0.5), x, num_samples=1000)
for name, e in (("exact guide", estimate), ("poor guide", poor)):
    print(
        f"{name:>12}: error {(e.log_likelihood - exact).mean():+.3f}, stated error {e.stderr.mean():.3f}, "
        f"ESS {e.ess.mean():6.1f}, k̂ {e.pareto_k.median():.2f}"
    )

# %% [markdown]
# ## A refusal, and its fix
#
# Forget `.to_event(1)` and the five dimensions of x become batch dimensions: the site's log-density
# would have shape [B, 5], and the weights would be wrong. The evaluator checks the contract once,
# before drawing anything, and says which site breaks it and how to fix it.


# %%
def careless_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, s), obs=x)  # no .to_event(1)


try:
    importance_sample(careless_model, guide, x, num_samples=10)
except PyroVAEError as error:
    print("refused:", error)

# %% [markdown]
# The fix is the `.to_event(1)` of `model` above. The full contract (plates, enumerated sites, auxiliary
# guide sites, point masses, supports) is on the [evaluation page](../evaluation.md).
#
# ## A second opinion: annealed importance sampling
#
# AIS (Neal 2001) needs no guide: each chain starts at z ~ p(z) and is moved by Hamiltonian Monte Carlo
# through distributions p(z) p(x|z)^β as β grows from 0 to 1. Where it agrees with importance sampling,
# the encoder (here the guide) is not hiding anything.

# %%
ais, _, acceptance = annealed_importance_sample(model, x, num_chains=16, num_distributions=200, leapfrog_steps=5)
print(f"AIS error {(ais.log_likelihood - exact).mean():+.3f}, acceptance {acceptance.mean():.2f}")

# %% [markdown]
# ## Mending a poor guide per example
#
# When the encoder is the weak part, each example's own q can be fitted by SVI, started where the poor
# guide put it (`LocalPosterior`, the machinery of `pyro-vae evaluate --refine` and `pyro-vae gap`). Its
# family here is the diagonal Gaussian, so the fit reaches the best diagonal q, not the exact posterior.

# %%
mean, cov = posterior(x)
start = (mean + 1.0, 0.5 * cov.diagonal().sqrt().expand(N, Z))
local = LocalPosterior(GaussianHead(1, Z), start).fit(model, x, steps=300, lr=0.05, num_particles=16)
refined = importance_sample(model, local.guide, x, num_samples=1000)
print(f"after the fit: error {(refined.log_likelihood - exact).mean():+.3f}, ESS {refined.ess.mean():.0f} of 1000")
