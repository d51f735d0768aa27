"""Registries: components (priors, likelihoods, networks, datasets, objectives) chosen by name.

A component is a class registered under a name. Its options are the keyword-only arguments of
its ``__init__`` (with defaults and type annotations); a config section ``[prior]`` with
``name = "mog"`` and ``num_components = 20`` builds ``MixtureOfGaussians(..., num_components=20)``.
A size or a rate is annotated with its sane range (``Annotated[int, Range(1, 10_000)]``, or one of the
aliases below), so that every value is checked before anything is built.
"""

import inspect
import math
import typing
from dataclasses import dataclass
from typing import Annotated

from .errors import PyroVAEError


@dataclass(frozen=True)
class Range:
    """The values an option may take: ``low`` ≤ value ≤ ``high`` (``low`` < value where ``open_low``)."""

    low: float
    high: float
    open_low: bool = False
    why: str = ""  # where given, every value outside is refused with the whole range and this reason

    def check(self, what, value):
        """``value``, or a one-line error that states the range."""
        if self.why and not (self.low <= value <= self.high):
            raise PyroVAEError(f"{what} must lie in {self.why}, got {value}")
        if value < self.low or (self.open_low and value == self.low):
            positive = (self.low == 0 and self.open_low) or (self.low == 1 and isinstance(value, int))
            bound = (
                "positive"
                if positive
                else "zero or more"
                if self.low == 0
                else (f"above {self.low:g}" if self.open_low else f"at least {self.low:g}")
            )
            raise PyroVAEError(f"{what} must be {bound}, got {value}")
        if value > self.high:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            raise PyroVAEError(f"{what} must be at most {self.high:g}, got {shown}")
        return value


MAX_SIZE = 2**16  # a network width, latent size, count of components or flows
MAX_COUNT = 10**8  # examples, epochs, steps
Size = Annotated[int, Range(1, MAX_SIZE)]  # a width or count of at least one
Count = Annotated[int, Range(1, MAX_COUNT)]  # examples, epochs or steps, at least one
Particles = Annotated[int, Range(1, 10_000)]  # samples per example in a training step
Seed = Annotated[int, Range(0, 2**32 - 1, why="0 … 2^32 − 1 (PyTorch's CPU generator keeps 32 bits of a seed)")]
Positive = Annotated[float, Range(0, 1e6, open_low=True)]  # a scale or a rate above 0


class Registry:
    """Maps names to component classes; refuses duplicate names and lists the valid ones. ``common``, where
    given, is a function whose keyword-only arguments are options every component of the registry takes
    (the data's ``labels``, say): they are checked and completed with the others, and left out when a
    component is built, for the layer that reads them."""

    def __init__(self, kind, common=None):
        self.kind = kind
        self.common = common
        self._classes = {}

    def register(self, name):
        """Decorator that registers a class (or a factory function) under ``name``."""

        def decorator(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._classes[name].__name__}")
            self._classes[name] = cls
            cls.registered_name = name
            return cls

        return decorator

    def names(self):
        return sorted(self._classes)

    def snapshot(self):
        """The registrations as they are now, for ``restore`` (a test that registers a component undoes it)."""
        return dict(self._classes)

    def restore(self, snapshot):
        """Back to the registrations of ``snapshot``."""
        self._classes = dict(snapshot)

    def __contains__(self, name):
        return name in self._classes

    def get(self, name):
        """The class registered as ``name``; an unknown name lists the valid ones."""
        try:
            return self._classes[name]
        except KeyError:
            raise PyroVAEError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}") from None

    def options(self, name):
        """The options of component ``name``: {option: (type, default)} from its keyword-only arguments, then
        the registry's ``common`` ones."""
        cls = self.get(name)
        return {**keyword_options(cls.__init__ if inspect.isclass(cls) else cls), **self.common_options()}

    def common_options(self):
        """{option: (type, default)} of the options every component takes (none without ``common``)."""
        return keyword_options(self.common) if self.common is not None else {}

    def resolve(self, name, options):
        """``options`` checked against component ``name`` and completed with its defaults."""
        valid = self.options(name)
        resolved = {}
        for key, value in options.items():
            if key not in valid:
                choices = ", ".join(sorted(valid)) or "none"
                raise PyroVAEError(f"unknown option {key!r} for {self.kind} {name!r}; valid options: {choices}")
            resolved[key] = check_type(f"{self.kind} {name!r} option {key!r}", value, valid[key][0])
        return {key: resolved.get(key, default) for key, (_, default) in valid.items()}

    def build(self, name, options, *args, **context):
        """An instance of component ``name`` built with ``*args``, ``context`` and the checked ``options``."""
        common = self.common_options()
        own = {key: value for key, value in self.resolve(name, options).items() if key not in common}
        return self.get(name)(*args, **context, **own)


def keyword_options(function):
    """{option: (type, default)} of ``function``'s keyword-only arguments."""
    hints = typing.get_type_hints(function, include_extras=True)
    return {
        p.name: (hints.get(p.name, type(p.default)), p.default)
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def is_of_type(value, tp):
    """Whether ``check_type`` takes ``value`` as a ``tp`` as it is (a member of a union)."""
    try:
        return check_type("", value, tp) is value
    except PyroVAEError:
        return False


def type_name(tp):
    """How an option's type reads in an error: ``int``, ``list``, ``true, false or "auto"``."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin not in (typing.Union, typing.Literal):
        return getattr(tp, "__name__", str(tp)).replace("typing.", "")
    members = []
    for member in typing.get_args(tp):
        members += typing.get_args(member) if typing.get_origin(member) is typing.Literal else [member]
    names = ["true, false" if m is bool else f'"{m}"' if isinstance(m, str) else type_name(m) for m in members]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_type(what, value, tp):
    """``value`` converted to type ``tp`` (int→float allowed, list items checked, the ``Range`` of an
    ``Annotated`` type enforced, one of a ``Literal``'s values or of a union's members: ``bool |
    Literal["auto"]``) or a clear error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, typing.Literal):
        for member in typing.get_args(tp):
            if value == member if origin is typing.Literal else is_of_type(value, member):
                return value
        raise PyroVAEError(f"{what} must be {type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = check_type(what, value, base)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(what, value)
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise PyroVAEError(f"{what} must be a list of {type_name(item_type)}, got {value!r}")
        return [check_type(what, item, item_type) for item in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1023 else math.inf
    if (
        tp is bool
        and not isinstance(value, bool)
        or not isinstance(value, tp)
        or (tp is int and isinstance(value, bool))
    ):
        raise PyroVAEError(f"{what} must be {type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float and not math.isfinite(value):
        raise PyroVAEError(f"{what} must be a finite number, got {value!r}")
    if tp is int and not -(2**63) <= value < 2**64:
        raise PyroVAEError(f"{what} must fit in 64 bits, got {value}")
    if tp is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a path from bytes that are not UTF-8: TOML could not store it
            raise PyroVAEError(
                f"{what} holds bytes that are not UTF-8 ({value!r}), which a config file cannot store; "
                "rename the file or folder"
            ) from None
    return value
