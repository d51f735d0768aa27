"""Registries: components (priors, likelihoods, networks, datasets, objectives) chosen by name.

A component is a class registered under a name. Its options are the keyword-only arguments of
its ``__init__`` (with defaults and type annotations); a config section ``[prior]`` with
``name = "mog"`` and ``num_components = 20`` builds ``MixtureOfGaussians(..., num_components=20)``.
"""
import inspect
import math
import typing

from .errors import PyroVAEError


class Registry:
    """Maps names to component classes; refuses duplicate names and lists the valid ones."""

    def __init__(self, kind):
        self.kind = kind
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

    def __contains__(self, name):
        return name in self._classes

    def get(self, name):
        """The class registered as ``name``; an unknown name lists the valid ones."""
        try:
            return self._classes[name]
        except KeyError:
            raise PyroVAEError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def options(self, name):
        """The options of component ``name``: {option: (type, default)} from its keyword-only arguments."""
        cls = self.get(name)
        signature_of = cls.__init__ if inspect.isclass(cls) else cls
        hints = typing.get_type_hints(signature_of)
        return {
            p.name: (hints.get(p.name, type(p.default)), p.default)
            for p in inspect.signature(signature_of).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

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
        return self.get(name)(*args, **context, **self.resolve(name, options))


def type_name(tp):
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def check_type(what, value, tp):
    """``value`` converted to type ``tp`` (int→float allowed, list items checked) or a clear error."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise PyroVAEError(f"{what} must be a list of {type_name(item_type)}, got {value!r}")
        return [check_type(what, item, item_type) for item in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1023 else math.inf
    if tp is bool and not isinstance(value, bool) or not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise PyroVAEError(f"{what} must be {type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float and not math.isfinite(value):
        raise PyroVAEError(f"{what} must be a finite number, got {value!r}")
    if tp is int and not -(2**63) <= value < 2**64:
        raise PyroVAEError(f"{what} must fit in 64 bits, got {value}")
    return value
