"""Kingma et al.'s M2 on partly labelled data: the enumerated ELBO against its sum by hand, log p(x) with the
label summed out against the closed form, the label subset, no leak of hidden labels, and bad input."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_vae.cli import main
from pyro_vae.errors import PyroVAEError
from pyro_vae.infer.classifier import labels_repeated, summed_over_labels
from pyro_vae.infer.importance import importance_sample
from pyro_vae.model.vae import VAE
from pyro_vae.runs.config import Component, load_config
from pyro_vae.runs.datasets import load_data

M2 = [
    "data.name=synthetic",
    "data.labels=8",
    "condition.name=semi_supervised",
    "condition.hidden=[8]",
    "condition.labelled_batch=4",
    "objective.name=trace_enum_elbo",
    "network.hidden=[16]",
    "model.z_dim=2",
    "train.batch_size=50",
    "train.eval_batch_size=100",
]


def tiny_m2():
    config = load_config(None, M2)
    data = load_data(config.data)
    return VAE.from_config(config, data.image_shape, data.num_classes), data


def test_enumerated_elbo_is_the_sum_over_labels_by_hand():
    """U(x) = Σ_y q(y|x)·[log p(x|y,z_y) + log p(y) + log p(z_y) − log q(z_y|x,y)] + H(q(y|x)), z_y = loc_y + scale_y·ε_y
    from the same ε [C, B, z] that the guide draws under enumeration."""
    vae, data = tiny_m2()
    x = (data.test.images[:5] > 0.5).float()  # binary, as the Bernoulli observes them
    C, B = data.num_classes, len(x)
    torch.manual_seed(3)
    enumerated = -TraceEnum_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
    torch.manual_seed(3)
    eps = torch.randn(C, B, vae.spec.z_dim)
    with torch.no_grad():
        log_q_y = torch.log_softmax(vae.classify(x), -1)  # [B, C]
        by_hand = torch.zeros(B)
        for y in range(C):
            onehot = torch.nn.functional.one_hot(torch.full((B,), y), C).float()
            loc, scale = vae.encoder(x, onehot)
            z = loc + scale * eps[y]
            elbo_y = (
                vae.likelihood(vae.decoder(z, onehot)).log_prob(x)
                - math.log(C)
                + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                - dist.Normal(loc, scale).log_prob(z).sum(-1)
            )
            by_hand += log_q_y[:, y].exp() * (elbo_y - log_q_y[:, y])  # Σ_y q_y·ELBO_y + H(q)
    assert enumerated == pytest.approx(by_hand.sum().item(), rel=1e-5)


class DiscreteLinearGaussian:
    """y ~ Categorical(π), z ~ N(0, I), x | y, z ~ N(Wz + u_y, s²I); the guide q(z|x,y) = p(z|x,y) exactly,
    so that log p̂(x, y) is exact for any K and log p(x) = log Σ_y π_y N(x; u_y, WWᵀ + s²I)."""

    def __init__(self, D=3, Z=2, C=3, s=0.5):
        g = torch.Generator().manual_seed(2)
        self.W = torch.randn(D, Z, generator=g, dtype=torch.float64)
        self.U = 2 * torch.randn(C, D, generator=g, dtype=torch.float64)
        self.pi = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
        self.s, self.Z, self.C = s, Z, C
        precision = torch.eye(Z, dtype=torch.float64) + self.W.T @ self.W / s**2
        self.post_cov = torch.linalg.inv(precision)

    def model(self, x, y):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi), obs=y)
            z = pyro.sample("z", dist.Normal(torch.zeros(self.Z, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.U[y], self.s).to_event(1), obs=x)

    def guide(self, x, y):
        mean = (x - self.U[y]) @ self.W @ self.post_cov.T / self.s**2
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mean, self.post_cov))

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.W), dtype=torch.float64)
        joint = torch.stack([dist.MultivariateNormal(u, cov).log_prob(x) for u in self.U], -1) + self.pi.log()
        return torch.logsumexp(joint, -1)


@pytest.mark.parametrize("k", [1, 7])
def test_log_px_with_the_label_summed_out_is_exact_on_a_linear_gaussian(k):
    m = DiscreteLinearGaussian()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    estimate, log_joint = summed_over_labels(
        importance_sample(m.model, m.guide, *labels_repeated(x, m.C), num_samples=k), m.C
    )
    assert torch.allclose(estimate.log_likelihood, m.log_px(x), atol=1e-9)
    assert torch.allclose(torch.logsumexp(log_joint, -1), m.log_px(x), atol=1e-9)
    assert (estimate.elbo <= estimate.log_likelihood + 1e-9).all()


def test_the_label_subset_is_balanced_reproducible_and_follows_its_seed():
    def kept(seed):
        data = load_data(Component("synthetic", {"labels": 12, "label_seed": seed}))
        known = data.train.labels >= 0
        assert torch.bincount(data.train.labels[known], minlength=4).tolist() == [3, 3, 3, 3]
        assert len(data.labelled) == 12
        return data.labelled

    assert torch.equal(kept(0), kept(0))
    assert not torch.equal(kept(0), kept(1))


def saved_array(tmp_path, name, labels):
    rng = np.random.default_rng(0)
    prototypes = rng.random((4, 6, 6)) > 0.5
    images = np.clip(prototypes[np.arange(80) % 4] * 0.9 + rng.normal(0, 0.05, (80, 6, 6)), 0, 1).astype(np.float32)
    test = np.clip(prototypes[np.arange(20) % 4] * 0.9 + 0.05, 0, 1).astype(np.float32)
    path = tmp_path / name
    np.savez(path, train=images, test=test, train_labels=labels, test_labels=np.arange(20) % 4)
    return path


def m2_args(tmp_path, name, path, epochs, *extra):
    """``pyro-vae train`` of a tiny M2 on the array file ``path``."""
    args = ["train", "--runs-root", str(tmp_path / "runs"), "--name", name, "--quiet", "--epochs", str(epochs)]
    for override in ["data.name=array", *M2[1:], f"data.path={path}", "train.batch_size=16", *extra]:
        args += ["--set", override]
    return args


def m2_run(tmp_path, name, path, *extra):
    main(m2_args(tmp_path, name, path, 2, *extra))
    return torch.load(tmp_path / "runs" / name / "checkpoint.pt", weights_only=True)


def test_hidden_labels_never_reach_training(tmp_path):
    """A run that hides labels trains exactly as one whose data never had them (−1, unknown) and as one whose
    hidden labels were shuffled among the examples that stay hidden."""
    labels = np.arange(80) % 4
    full = m2_run(tmp_path, "full", saved_array(tmp_path, "full.npz", labels))
    hidden = np.full(80, -1)
    hidden[full["labelled"].numpy()] = labels[full["labelled"].numpy()]
    unknown = m2_run(tmp_path, "unknown", saved_array(tmp_path, "unknown.npz", hidden), "data.labels=0")
    for key, value in full["model"].items():
        assert torch.equal(value, unknown["model"][key]), key
    assert full["metrics"][-1]["test_elbo"] == unknown["metrics"][-1]["test_elbo"]


def test_m2_trains_resumes_and_evaluates_from_its_run_folder(tmp_path):
    path = saved_array(tmp_path, "data.npz", np.arange(80) % 4)
    whole = m2_run(tmp_path, "whole", path)
    runs = tmp_path / "runs"
    main(m2_args(tmp_path, "half", path, 1))
    main(["train", "--resume", str(runs / "half"), "--epochs", "2", "--quiet"])
    resumed = torch.load(runs / "half" / "checkpoint.pt", weights_only=True)
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    main(["evaluate", str(runs / "whole"), "-k", "5", "--quiet"])
    summary = json.loads((runs / "whole" / "eval.json").read_text())
    assert summary["what"] == "log p(x)" and summary["weights_per_example"] == 20 and summary["labels"] == 8
    assert 0 <= summary["accuracy_classifier"] <= 1 and 0 <= summary["accuracy_generative"] <= 1
    assert summary["elbo"] <= summary["log_likelihood"]
    for picture in ("class_grid.png", "latent.png", "reconstructions.png"):
        assert (runs / "whole" / picture).is_file()


BAD = {
    "more labels than a class has": (["data.labels=4000"], "has 100 labelled examples of class 0"),
    "fewer than one per class": (["data.labels=2"], "give a multiple of 4"),
    "not an equal number per class": (["data.labels=10"], "give a multiple of 4"),
    "a negative alpha": (["condition.alpha=-1"], "condition 'semi_supervised' option 'alpha' must be zero or more"),
    "another objective": (["objective.name=trace_elbo"], "use objective.name = trace_enum_elbo"),
    "a dataset without labels": (["data.num_classes=1"], "this data has one"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_semi_supervised_settings_get_one_line(case, tmp_path, capsys):
    overrides, message = BAD[case]
    args = ["train", "--runs-root", str(tmp_path / "runs"), "--quiet"]
    for override in [*M2, *overrides]:
        args += ["--set", override]
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_label_cvae_refuses_training_examples_without_labels(tmp_path, capsys):
    args = ["train", "--runs-root", str(tmp_path / "runs"), "--quiet"]
    for override in ["data.name=synthetic", "data.labels=8", "condition.name=label", "network.hidden=[8]"]:
        args += ["--set", override]
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "392 of the 400 training examples have no label" in err


def test_m2_decoding_needs_a_label():
    vae, _ = tiny_m2()
    with pytest.raises(PyroVAEError, match="decodes z with a label"):
        vae.decode(torch.zeros(3, 2))
    assert vae.sample(3).shape == (3, 1, 8, 8)


def test_m1_codes_feed_a_classifier_and_m2(tmp_path, tiny):
    """M1: a VAE's codes as the data ``codes``; M1 alone is the discriminative classifier of the labelled codes,
    M1+M2 is M2 trained on them."""
    runs = tmp_path / "runs"
    main(
        ["train", "--runs-root", str(runs), "--name", "m1", "--quiet", "--set", "data.name=synthetic"]
        + ["--set", "network.hidden=[16]", "--set", "model.z_dim=3", "--set", "train.epochs=2"]
    )
    codes = [f"data.run={runs / 'm1'}", "data.labels=8", "network.hidden=[16]", "condition.hidden=[8]", "model.z_dim=2"]
    data = load_data(load_config("mnist-m1m2", codes).data)
    assert data.image_shape == (3,) and (data.train.labels >= 0).sum() == 8 and len(data.test.images) == 100
    out = tmp_path / "m1.json"
    main(
        [
            "bench",
            "--discriminative",
            "--config",
            "mnist-m1m2",
            *sum((["--set", c] for c in codes), []),
            "--set",
            "train.epochs=40",
            "--out",
            str(out),
        ]
    )
    m1 = json.loads(out.read_text())
    assert m1["labelled_examples"] == 8 and m1["test_accuracy"] > 0.5  # four well-separated classes
    main(
        [
            "train",
            "--config",
            "mnist-m1m2",
            "--runs-root",
            str(runs),
            "--name",
            "m1m2",
            "--quiet",
            "--epochs",
            "2",
            *sum((["--set", c] for c in codes), []),
        ]
    )
    main(["evaluate", str(runs / "m1m2"), "-k", "3", "--quiet"])
    assert "accuracy_generative" in json.loads((runs / "m1m2" / "eval.json").read_text())


def test_the_m2_benchmark_times_the_trainer_a_plain_loop_and_the_cvae(tmp_path):
    out = tmp_path / "bench.json"
    tiny = ["data.name=synthetic", "data.labels=8", "network.hidden=[16]", "condition.hidden=[8]", "model.z_dim=2"]
    main(["bench", "--semi-supervised", "--quick", *sum((["--set", o] for o in tiny), []), "--out", str(out)])
    result = json.loads(out.read_text())
    assert min(result[f"{v}_images_per_s"] for v in ("pyro", "plain", "cvae")) > 0 and result["ratio_plain"] > 0


def test_plain_m2_loss_is_the_enumerated_elbo():
    """The benchmark's hand-summed loss and Pyro's TraceEnum_ELBO agree on the same draws (no classification term)."""
    from pyro_vae.benchmarks.bench import PlainM2

    vae, data = tiny_m2()
    x = (data.test.images[:6] > 0.5).float()
    plain = PlainM2.__new__(PlainM2)
    plain.classifier, plain.encoder, plain.decoder, plain.classes, plain.event_dims = (
        vae.classifier,
        vae.encoder,
        vae.decoder,
        data.num_classes,
        3,
    )
    torch.manual_seed(4)
    pyro_loss = TraceEnum_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
    torch.manual_seed(4)
    with torch.no_grad():
        log_q = torch.log_softmax(vae.classify(x), -1)
        every = torch.eye(data.num_classes)[:, None, :]
        u = (log_q.exp() * (plain.elbo(x, every).T - log_q)).sum(-1)
    assert pyro_loss == pytest.approx(-u.sum().item(), rel=1e-5)
