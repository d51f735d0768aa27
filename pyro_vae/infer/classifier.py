"""A generative classifier from a conditional model: p(y|x) ∝ p(x|y) p(y)."""

import torch

from .importance import ImportanceEstimate, importance_sample


@torch.no_grad()
def class_log_posterior(model, guide, x, num_classes, *, log_prior=None, num_samples=100, chunk_size=None):
    """log p(y|x) [B, num_classes] = log p̂(x|y) + log p(y) − log Σ_y' p̂(x|y') p(y').

    log p̂(x|y) is the importance-sampled estimate of ``evaluate.importance_sample`` with K =
    ``num_samples``, for every class at once: x [B, …] is repeated for each class into one batch
    of num_classes·B examples. ``log_prior`` [num_classes] is log p(y) (uniform when None).
    """
    xs, ys = labels_repeated(x, num_classes)
    estimate = importance_sample(model, guide, xs, ys, num_samples=num_samples, chunk_size=chunk_size)
    log_joint = per_class(estimate.log_likelihood, num_classes)
    if log_prior is not None:
        log_joint = log_joint + log_prior.to(log_joint)
    return log_joint - torch.logsumexp(log_joint, dim=-1, keepdim=True)


def labels_repeated(x, num_classes):
    """(x repeated for every class [num_classes·B, …], labels [num_classes·B]): class-major, block y holding
    all of x with label y, so that one batch scores log p(x, y) for every (x, y)."""
    xs = x.expand(num_classes, *x.shape).reshape(num_classes * x.shape[0], *x.shape[1:])
    return xs, torch.arange(num_classes, device=x.device).repeat_interleave(x.shape[0])


def per_class(values, num_classes):
    """Per-example values [num_classes·B] of the examples of ``labels_repeated``, as [B, num_classes]."""
    return values.reshape(num_classes, -1).T


def summed_over_labels(estimate, num_classes):
    """The estimate of log p(x) = log Σ_y p(x, y) [B] from ``estimate``, the ``ImportanceEstimate`` of
    log p(x, y) for the examples of ``labels_repeated`` (a label that is a latent, as in M2, summed out
    exactly: each class its own K samples from q(z|x,y)), and the log-joint [B, num_classes].

    With π_y = p̂(x, y)/p̂(x), the posterior of the estimates: the ELBO is log Σ_y exp ELBO_y, a bound on
    log p(x) tighter than the one with q(y|x); the standard error √(Σ_y π_y² se_y²) (independent strata);
    the ESS that of the pooled num_classes·K weights, 1 / Σ_y π_y²/ESS_y; k̂ that of the class of largest π_y."""

    def by_class(values):
        return per_class(values, num_classes)

    log_joint = by_class(estimate.log_likelihood)
    log_px = torch.logsumexp(log_joint, -1)
    posterior = (log_joint - log_px[:, None]).exp()
    top = posterior.argmax(-1, keepdim=True)
    return ImportanceEstimate(
        log_likelihood=log_px,
        elbo=torch.logsumexp(by_class(estimate.elbo), -1),
        ess=1 / (posterior.square() / by_class(estimate.ess)).sum(-1),
        stderr=(posterior.square() * by_class(estimate.stderr).square()).sum(-1).sqrt(),
        pareto_k=by_class(estimate.pareto_k).gather(-1, top).squeeze(-1),
        num_samples=estimate.num_samples,
    ), log_joint
