"""Components from outside the package: modules that register datasets, networks, priors, likelihoods,
objectives or conditions with the project's registries. A config names them in ``[plugins] modules``
(importable names, or paths of ``.py`` files), so that every command reading a run made with them
(evaluate, sample, resume, compare) imports them again; installed packages may also announce theirs
under the ``pyro_vae.plugins`` entry-point group, which every config loads."""

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from ..errors import PyroVAEError

ENTRY_POINT_GROUP = "pyro_vae.plugins"
LOADED = set()  # what this process has imported: a plugin registers its components once


def load_plugins(modules=()):
    """Import the plugins of the installed packages' entry points, then ``modules`` (names or .py paths)."""
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.value not in LOADED:
            LOADED.add(entry_point.value)
            guarded(entry_point.value, entry_point.load)
    for module in modules:
        key = str(Path(module).resolve()) if module.endswith(".py") else module
        if key not in LOADED:
            guarded(
                module,
                lambda module=module: (
                    import_file(module) if module.endswith(".py") else importlib.import_module(module)
                ),
            )
            LOADED.add(key)


def import_file(path):
    """The module of the Python file at ``path``, imported under a name of its own."""
    path = Path(path)
    if not path.is_file():
        raise PyroVAEError(f"plugin file {path} does not exist")
    name = f"pyro_vae_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def guarded(what, load):
    """``load()``, with any failure of the plugin's own code as one line naming it."""
    try:
        return load()
    except PyroVAEError:
        raise
    except ModuleNotFoundError as e:
        raise PyroVAEError(f"plugin {what} cannot be imported ({e}); install it or name a .py file") from None
    except Exception as e:  # the plugin's own code fails in any way
        raise PyroVAEError(
            f"plugin {what} failed while importing ({type(e).__name__}: {str(e).partition(chr(10))[0]})"
        ) from None
