"""Configuration: TOML files read with ``tomllib`` into dataclasses, ``--set section.key=value`` overrides.

A config has one section per component chosen by name from a registry (``data``, ``condition``,
``network``, ``prior``, ``likelihood``, ``objective``, ``schedule``: ``name`` plus that component's options) and two plain
sections (``model``, ``train``). Bundled configs live in ``pyro_vae/configs/*.toml``; the resolved
config saved in a run folder is all that ``evaluate``, ``sample`` and ``--resume`` need.
"""

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import torch

from ..errors import PyroVAEError
from ..infer.objectives import OBJECTIVES
from ..infer.schedules import SCHEDULES
from ..model.conditions import CONDITIONS
from ..model.likelihoods import LIKELIHOODS
from ..model.networks import NETWORKS
from ..model.posteriors import POSTERIORS
from ..model.priors import PRIORS
from ..registry import MAX_COUNT, MAX_SIZE, Count, Range, Seed, Size, check_type
from .datasets import DATASETS
from .files import os_error
from .plugins import load_plugins

REGISTRIES = {
    "data": DATASETS,
    "condition": CONDITIONS,
    "network": NETWORKS,
    "posterior": POSTERIORS,
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "objective": OBJECTIVES,
    "schedule": SCHEDULES,
}


@dataclass
class Component:
    """A registry choice: the component's ``name`` and its ``options``."""

    name: str
    options: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    z_dim: Annotated[int, Range(0, MAX_SIZE)] = 50  # dimension of the (top) latent z, whose prior is [prior]; 0: no
    # latent (the deterministic baseline p(x_M|x_G) of image completion)
    layers: list[Size] = field(default_factory=list)  # sizes of stochastic layers below z, from x up (Burda: [100])
    layer_hidden: list[Size] = field(default_factory=lambda: [100, 100])  # hidden sizes between stochastic layers
    layer_activation: str = "tanh"
    reparameterize: bool = True  # false: the guide's z is drawn without the reparameterization trick, so Pyro's
    # ELBOs form the score-function (REINFORCE) gradient


@dataclass
class TrainConfig:
    epochs: Annotated[int, Range(0, MAX_COUNT)] = 20
    batch_size: Annotated[int, Range(1, 2**20)] = 128
    lr: Annotated[float, Range(0, 1e6, open_low=True)] = 1e-3  # Adam learning rate (times the [schedule]'s factor)
    adam_eps: Annotated[float, Range(0, 1, open_low=True)] = 1e-8  # Adam's ε (Burda et al. use 1e-4)
    beta: Annotated[float, Range(0, 1e4, open_low=True)] = 1.0  # KL weight β: loss = reconstruction + β·KL
    warmup_epochs: Annotated[float, Range(0, MAX_COUNT)] = 0.0  # β rises linearly from 0 over this many epochs
    clip_norm: Annotated[float, Range(0, 1e12)] = 0.0  # gradient clipping by norm (0: off)
    seed: Seed = 0
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: Annotated[int, Range(0, MAX_COUNT)] = (
        0  # also checkpoint every N steps (0: at each epoch's end only)
    )
    eval_batch_size: Annotated[int, Range(1, 2**20)] = 1000  # examples per batch when scoring the test set
    test_examples: Annotated[int, Range(0, MAX_COUNT)] = 0  # the epoch's test ELBO on N test examples (a fixed,
    # class-balanced part; 0: all of them)
    test_every: Count = 1  # the test ELBO every N epochs (and after the last)
    tensorboard: bool = False  # log to RUN/tensorboard (pip install -e ".[tensorboard]")
    tensorboard_images_every: Count = 10  # pictures in TensorBoard every N epochs (and after the last)
    precision: str = "float32"  # float32 | bfloat16: the encoder and decoder of a training step under torch.autocast


@dataclass
class PluginsConfig:
    modules: list[str] = field(default_factory=list)  # modules that register components: importable names or
    # paths of .py files (runs.plugins)


@dataclass
class Config:
    data: Component = field(default_factory=lambda: Component("mnist-5k"))
    condition: Component = field(default_factory=lambda: Component("none"))  # none | label | quadrants | column
    model: ModelConfig = field(default_factory=ModelConfig)
    network: Component = field(default_factory=lambda: Component("mlp"))
    posterior: Component = field(default_factory=lambda: Component("diagonal"))  # diagonal | full | iaf: q(z|x)
    prior: Component = field(default_factory=lambda: Component("standard_normal"))
    likelihood: Component = field(default_factory=lambda: Component("bernoulli"))
    objective: Component = field(default_factory=lambda: Component("trace_elbo"))
    schedule: Component = field(default_factory=lambda: Component("constant"))
    train: TrainConfig = field(default_factory=TrainConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)

    def to_dict(self):
        """The config as nested dicts, one per section (what config.toml holds and ``config_from_dict`` reads)."""
        out = {}
        for name in SECTIONS:
            section = getattr(self, name)
            if isinstance(section, Component):
                out[name] = {"name": section.name, **section.options}
            else:
                out[name] = dataclasses.asdict(section)
        return out


SECTIONS = [f.name for f in dataclasses.fields(Config)]
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}  # training precision → torch.autocast's dtype (None: off)
DEVICES = ("auto", "cpu", "cuda")


def bundled_configs():
    """Names of the configs shipped inside the package."""
    folder = resources.files("pyro_vae") / "configs"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(name_or_path):
    """The TOML table of a bundled config name or a file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and name_or_path in bundled_configs():
        text = (resources.files("pyro_vae") / "configs" / f"{name_or_path}.toml").read_text()
    elif path.is_file():
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as some editors write, is no TOML
        except OSError as e:
            raise os_error("read", path, e) from None
        except UnicodeDecodeError as e:
            raise PyroVAEError(
                f"config {path} is not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r}); TOML files are UTF-8"
            ) from None
    else:
        raise PyroVAEError(
            f"config {name_or_path!r} is neither a file nor a bundled config; bundled: {', '.join(bundled_configs())}"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PyroVAEError(f"config {name_or_path!r} is not valid TOML: {e}") from None


def parse_override(text):
    """``"section.key=value"`` → (section, key, value); the value is read as TOML, else kept as a string."""
    target, sep, raw = text.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not key:
        raise PyroVAEError(f"override {text!r} must look like section.key=value (e.g. train.lr=3e-4)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def load_config(name_or_path=None, overrides=()):
    """The resolved ``Config``: defaults, updated by a TOML file, then by ``section.key=value`` overrides.

    Every key, type, range and component name is checked; the component options are completed with
    their defaults, so the result is the whole configuration of a run.
    """
    table = Config().to_dict()
    updates = [read_toml(name_or_path)] if name_or_path is not None else []
    for text in overrides:
        section, key, value = parse_override(text)
        updates.append({section: {key: value}})
    for update in updates:  # the components they register must exist before any is chosen
        plugins = update.get("plugins") if isinstance(update, dict) else None
        if isinstance(plugins, dict) and "modules" in plugins:
            load_plugins(check_type("plugins.modules", plugins["modules"], list[str]))
    for update in updates:
        merge(table, update)
    return config_from_dict(table)


def merge(table, update):
    """Update the config ``table`` in place; a renamed component keeps only the options its new class
    takes with a value of the right type."""
    for section, values in update.items():
        if section not in table:
            raise PyroVAEError(f"unknown config section [{section}]; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise PyroVAEError(f"config section [{section}] must be a table of key = value")
        current = table[section]
        if section in REGISTRIES and "name" in values and values["name"] != current["name"]:
            registry = REGISTRIES[section]
            new_name = check_type(f"{section}.name", values["name"], str)
            accepted = registry.options(new_name)
            kept = {k: v for k, v in current.items() if k in accepted and fits(v, accepted[k][0])}
            table[section] = current = {"name": new_name, **kept}
        current.update(values)


def fits(value, tp):
    """Whether ``value`` is of type ``tp`` (its range is checked once the config is whole, with its name)."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    try:
        check_type("", value, tp)
        return True
    except PyroVAEError:
        return False


def config_from_dict(table):
    """A checked ``Config`` from a nested dict such as ``Config.to_dict()`` or a parsed TOML file."""
    for section in table:
        if section not in SECTIONS:
            raise PyroVAEError(f"unknown config section [{section}]; valid sections: {', '.join(SECTIONS)}")
    kwargs = {}
    hints = typing.get_type_hints(Config)
    table = legacy_label_file(legacy_conditional(table))
    plugins = table.get("plugins", {})
    load_plugins(
        check_type("plugins.modules", plugins.get("modules", []) if isinstance(plugins, dict) else [], list[str])
    )
    for section in SECTIONS:
        values = dict(table.get(section, {}))
        if section in REGISTRIES:
            name = check_type(f"{section}.name", values.pop("name", getattr(Config(), section).name), str)
            kwargs[section] = Component(name, REGISTRIES[section].resolve(name, values))
        else:
            kwargs[section] = section_from_dict(section, hints[section], values)
    config = Config(**kwargs)
    check_ranges(config)
    return config


def legacy_conditional(table):
    """``table`` with the earlier spelling of the label CVAE, ``model.conditional = true`` (runs saved before the
    [condition] section existed), read as ``condition.name = "label"``."""
    model = dict(table.get("model", {}))
    if "conditional" not in model:
        return table
    flag = check_type("model.conditional", model.pop("conditional"), bool)
    condition = dict(table.get("condition", {"name": "none"}))
    if flag and condition.get("name", "none") not in ("none", "label"):
        raise PyroVAEError(
            f"model.conditional = true asks for the label condition, but condition.name is {condition['name']!r}"
        )
    if flag:
        condition["name"] = "label"
    return {**table, "model": model, "condition": condition}


def legacy_label_file(table):
    """``table`` with the earlier spelling of the array dataset's labels file, ``data.labels = "FILE"`` (runs saved
    before ``data.labels`` counted the labels kept), read as ``data.label_file``."""
    data = table.get("data", {})
    if not isinstance(data, dict) or not isinstance(data.get("labels"), str):
        return table
    data = dict(data)
    data["label_file"] = data.pop("labels")
    return {**table, "data": data}


def section_from_dict(section, cls, values):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    for key in values:
        if key not in fields:
            raise PyroVAEError(f"unknown key {key!r} in [{section}]; valid keys: {', '.join(fields)}")
    return cls(**{k: check_type(f"{section}.{k}", v, hints[k]) for k, v in values.items()})


def check_ranges(config):
    """The rules between settings: the config's own, then each chosen component's ``check_config(config)``
    where it has one (each setting's own range is in its type, checked as it is read)."""
    if not config.model.layer_hidden:
        raise PyroVAEError("model.layer_hidden must hold at least one size")
    for section, registry in REGISTRIES.items():  # each component's own rules about the rest of the config
        check = getattr(registry.get(getattr(config, section).name), "check_config", None)
        if check is not None:
            check(config)
    if config.train.device not in DEVICES:
        raise PyroVAEError(f"train.device must be one of {', '.join(DEVICES)}, got {config.train.device!r}")
    if config.train.precision not in PRECISIONS:
        raise PyroVAEError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {config.train.precision!r}")


PATH_OPTIONS = ("root", "path", "label_file", "run")  # data options that name files or folders


def absolute_paths(config):
    """``config`` with the data options and plugin files that name a file or folder made absolute (a run
    made in one working folder reads its data and components from any other)."""
    options = dict(config.data.options)
    for key in PATH_OPTIONS:
        if isinstance(options.get(key), str) and options[key]:
            options[key] = os.path.abspath(options[key])
    modules = [os.path.abspath(m) if m.endswith(".py") else m for m in config.plugins.modules]
    return dataclasses.replace(config, data=Component(config.data.name, options), plugins=PluginsConfig(modules))


def config_differences(a, b):
    """{"section.key": (value in a, value in b)} for every setting where two ``Config.to_dict()`` differ. A
    setting one of them leaves out (a run saved before the setting existed) counts as its default."""
    flat_a, flat_b = ({f"{s}.{k}": v for s, values in completed(d).items() for k, v in values.items()} for d in (a, b))
    return {
        key: (flat_a.get(key), flat_b.get(key))
        for key in sorted(flat_a.keys() | flat_b.keys())
        if flat_a.get(key) != flat_b.get(key)
    }


def completed(table):
    """``table`` with the defaults of the settings it leaves out (as it is where it does not load)."""
    try:
        return config_from_dict(table).to_dict()
    except PyroVAEError:
        return table


def to_toml(config):
    """The config as TOML text (scalars and lists only, as the dataclasses hold)."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)
