"""The generative classifier p(y|x) ∝ p(x|y) p(y)."""

import torch

from pyro_vae import class_log_posterior, load_config
from pyro_vae.trainer import Trainer


def test_exact_guide_gives_the_bayes_posterior(linear_gaussian):
    lg = linear_gaussian
    x, _ = lg.data(12)
    log_prior = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64).log()
    estimate = class_log_posterior(lg.model, lg.guide, x, lg.C, log_prior=log_prior, num_samples=3)
    joint = torch.stack([lg.log_marginal(x, torch.full((12,), k)) for k in range(lg.C)], -1) + log_prior
    torch.testing.assert_close(estimate, joint - torch.logsumexp(joint, -1, keepdim=True), rtol=0, atol=1e-9)
    torch.testing.assert_close(estimate.exp().sum(-1), torch.ones(12, dtype=torch.float64))


def test_short_training_classifies_separated_classes(tmp_path):
    config = load_config(
        "mnist-cvae",
        [
            "data.name=synthetic",
            "network.hidden=[32]",
            "model.z_dim=2",
            "train.epochs=30",
            "train.batch_size=50",
            "train.lr=3e-3",
        ],
    )
    trainer = Trainer(config, tmp_path, progress=False)
    trainer.run()
    vae = trainer.vae.eval()
    predicted = class_log_posterior(vae.model, vae.guide, trainer.experiment.test_x, 4, num_samples=20).argmax(-1)
    assert (predicted == trainer.experiment.test_y).double().mean() >= 0.98
