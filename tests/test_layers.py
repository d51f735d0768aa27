"""The folders are the layers: every import of the package, read from its source, goes to its own layer
or one below; the benchmarks sit above the trainer they measure, and only the command line imports them."""

import ast
from pathlib import Path

import pyro_vae

PACKAGE = Path(pyro_vae.__file__).parent
BASE = {"errors", "registry", "devices", "serial", "distributed", "workers", "progress", "version"}
LAYERS = {"base": 0, "model": 1, "infer": 2, "runs": 3, "report": 4, "training": 5, "benchmarks": 6, "cli": 7}


def layer(module):
    """The layer of a dotted module name inside pyro_vae ("model.vae", "errors", "cli")."""
    head = module.split(".")[0]
    if head in BASE:
        return "base"
    return {"trainer": "training", "cli": "cli"}.get(head, head)


def imports(path):
    """The pyro_vae modules (dotted, without the package) that the file at ``path`` imports, anywhere in it."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[: len(here) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            if node.module:
                found.append(".".join(target))
            else:
                found += [".".join(target + [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_vae."):
            found.append(node.module.removeprefix("pyro_vae."))
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("pyro_vae.") for a in node.names if a.name.startswith("pyro_vae.")]
    return found


def modules():
    return [p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]


def test_no_import_reaches_up_a_layer():
    upward = []
    for path in modules():
        mine = layer(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for target in imports(path):
            if LAYERS[layer(target)] > LAYERS[mine]:
                upward.append(f"{path.relative_to(PACKAGE)} ({mine}) imports {target} ({layer(target)})")
    assert not upward, upward


def test_the_walk_sees_every_import():
    """The walk itself: the trainer imports from four layers, the estimator from the base and its own layer
    (the compiled graphs), the compiled graphs from none of the project's."""
    trainer = {layer(t) for t in imports(PACKAGE / "trainer.py")}
    assert {"base", "infer", "runs", "report"} <= trainer
    assert {layer(t) for t in imports(PACKAGE / "infer" / "importance.py")} == {"base", "infer"}
    assert {layer(t) for t in imports(PACKAGE / "infer" / "compiled.py")} == set()
    assert layer("model.vae") == "model" and layer("cli") == "cli" and layer("benchmarks.bench") == "benchmarks"
