"""Config files, overrides and registries: round trips and one-line errors."""

import pytest

from pyro_vae.errors import PyroVAEError
from pyro_vae.model.priors import PRIORS
from pyro_vae.registry import Registry
from pyro_vae.runs.config import Config, bundled_configs, load_config, to_toml


def test_defaults_resolve_every_option():
    config = load_config()
    assert config.prior.name == "standard_normal" and config.likelihood.options == {"binarize": "dynamic"}
    assert config.network.options == {"hidden": [400], "activation": "softplus"}


@pytest.mark.parametrize("name", bundled_configs())
def test_bundled_config_round_trips_through_toml(name, tmp_path):
    config = load_config(name, ["train.lr=3e-4"])
    path = tmp_path / "saved.toml"
    path.write_text(to_toml(config))
    assert load_config(path).to_dict() == config.to_dict()
    assert config.train.lr == 3e-4


def test_overrides_are_typed_and_renaming_keeps_valid_options():
    config = load_config(None, ["prior.name=mog", "prior.num_components=3", "network.hidden=[8, 4]", "train.epochs=2"])
    assert config.prior.options == {"num_components": 3}
    assert config.network.options["hidden"] == [8, 4]
    assert load_config(None, ["prior.name=mog", "prior.num_components=3", "prior.name=vamp"]).prior.options == {
        "num_components": 3
    }
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # int accepted for a float


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["nosuch.key=1"], "unknown config section \\[nosuch\\]; valid sections: data, condition, model"),
        (["train.nosuch=1"], "unknown key 'nosuch' in \\[train\\]; valid keys: epochs"),
        (["prior.name=nosuch"], "unknown prior 'nosuch'; valid choices: conditional_gaussian, flow, gaussian, mog"),
        (["likelihood.name=mse"], "unknown likelihood 'mse'; valid choices: bernoulli, continuous_bernoulli"),
        (["network.name=resnet"], "unknown network 'resnet'; valid choices: conv, mlp"),
        (["objective.name=vi"], "unknown objective 'vi'; valid choices: autoencoder, iwae, mean_field, trace_elbo"),
        (
            ["data.name=cifar"],
            "unknown dataset 'cifar'; valid choices: array, celeba, cifar10, codes, fashion-mnist, folder, kmnist",
        ),
        (
            ["prior.num_components=3"],
            "unknown option 'num_components' for prior 'standard_normal'; valid options: none",
        ),
        (["train.epochs=ten"], "train.epochs must be int, got 'ten'"),
        (["train.lr=true"], "train.lr must be float, got True"),
        (["network.hidden=3"], "must be a list of int, got 3"),
        (["train.lr=0"], "train.lr must be positive, got 0.0"),
        (["train.batch_size=-4"], "train.batch_size must be positive"),
        (["model.z_dim=-1"], "model.z_dim must be zero or more"),
        (["train.beta=0"], "train.beta must be positive"),
        (["train.warmup_epochs=-1"], "train.warmup_epochs must be zero or more"),
        (["train.device=tpu"], "train.device must be one of auto, cpu, cuda"),
        (["train.lr"], "must look like section.key=value"),
        (["objective.compile=yes"], "option 'compile' must be true, false or \"auto\", got 'yes' \\(str\\)"),
        (["objective.compile=1"], "option 'compile' must be true, false or \"auto\", got 1 \\(int\\)"),
    ],
)
def test_bad_config_gives_a_one_line_error(overrides, message):
    with pytest.raises(PyroVAEError, match=message) as error:
        load_config(None, overrides)
    assert "\n" not in str(error.value)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1")
    with pytest.raises(PyroVAEError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(PyroVAEError, match="neither a file nor a bundled config; bundled: .*mnist-vae"):
        load_config("no-such-config")


def test_registry_refuses_duplicates_and_lists_names():
    registry = Registry("widget")

    @registry.register("a")
    class A:
        def __init__(self, *, size: int = 1):
            self.size = size

    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(A)
    assert registry.build("a", {"size": 3}).size == 3
    with pytest.raises(PyroVAEError, match="unknown widget 'b'; valid choices: a"):
        registry.get("b")
    assert "standard_normal" in PRIORS


def test_config_is_a_dataclass_of_sections():
    assert [f for f in Config().to_dict()] == [
        "data",
        "condition",
        "model",
        "network",
        "posterior",
        "prior",
        "likelihood",
        "objective",
        "schedule",
        "train",
        "plugins",
    ]
