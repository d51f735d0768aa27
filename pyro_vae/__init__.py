"""pyro_vae: variational autoencoders written the Pyro way.

    from pyro_vae import load_config, train, load_run, log_likelihood
    config = load_config("mnist-vae", ["train.epochs=5"])
    vae = train(config, "runs/demo")
    log_px = log_likelihood(vae.model, vae.guide, x, num_samples=5000)   # [B]

Names are imported on first use (PEP 562), so that ``pyro-vae`` can set up its signal handling
before torch and Pyro load.
"""

import importlib

from .version import __version__ as __version__

_EXPORTS = {
    "Config": "runs.config",
    "ImportanceEstimate": "infer.importance",
    "ImportanceSampler": "infer.importance",
    "LocalPosterior": "infer.local",
    "PyroVAEError": "errors",
    "VAE": "model.vae",
    "annealed_importance_sample": "infer.ais",
    "class_log_posterior": "infer.classifier",
    "importance_sample": "infer.importance",
    "load_config": "runs.config",
    "load_run": "runs.folders",
    "log_likelihood": "infer.importance",
    "train": "trainer",
}
__all__ = sorted(_EXPORTS)


def __dir__():
    return [*__all__, "__version__"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
