"""A generative classifier from a conditional model: p(y|x) ∝ p(x|y) p(y)."""

import torch

from .importance import importance_sample


@torch.no_grad()
def class_log_posterior(model, guide, x, num_classes, *, log_prior=None, num_samples=100, chunk_size=None):
    """log p(y|x) [B, num_classes] = log p̂(x|y) + log p(y) − log Σ_y' p̂(x|y') p(y').

    log p̂(x|y) is the importance-sampled estimate of ``evaluate.importance_sample`` with K =
    ``num_samples``, for every class at once: x [B, …] is repeated for each class into one batch
    of num_classes·B examples. ``log_prior`` [num_classes] is log p(y) (uniform when None).
    """
    batch = x.shape[0]
    xs = x.expand(num_classes, *x.shape).reshape(num_classes * batch, *x.shape[1:])
    ys = torch.arange(num_classes, device=x.device).repeat_interleave(batch)
    estimate = importance_sample(model, guide, xs, ys, num_samples=num_samples, chunk_size=chunk_size)
    log_joint = estimate.log_likelihood.reshape(num_classes, batch).T
    if log_prior is not None:
        log_joint = log_joint + log_prior.to(log_joint)
    return log_joint - torch.logsumexp(log_joint, dim=-1, keepdim=True)
