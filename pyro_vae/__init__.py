"""pyro_vae: variational autoencoders written the Pyro way.

    from pyro_vae import load_config, train, load_run, log_likelihood
    config = load_config("mnist-vae", ["train.epochs=5"])
    vae = train(config, "runs/demo")
    log_px = log_likelihood(vae.model, vae.guide, x, num_samples=5000)   # [B]
"""
from .classifier import class_log_posterior
from .config import Config, load_config
from .errors import PyroVAEError
from .evaluate import ImportanceEstimate, importance_sample, log_likelihood
from .model import VAE
from .runs import load_run
from .train import train

__all__ = [
    "Config", "ImportanceEstimate", "PyroVAEError", "VAE", "class_log_posterior", "importance_sample",
    "load_config", "load_run", "log_likelihood", "train",
]
