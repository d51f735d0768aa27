"""A run's weights in the form users share: ``model.safetensors`` (tensors without pickle, the ecosystem's
format for weights) beside the run's ``config.toml`` and ``metrics.jsonl``. Such a folder is a run that
cannot resume: ``load_run``, ``evaluate``, ``sample``, ``compare`` and ``gap`` read it as they read a run."""

import json
from pathlib import Path

from safetensors.torch import save

from ..errors import PyroVAEError
from ..version import __version__
from .files import atomic_write, os_error
from .folders import WEIGHTS, WEIGHTS_FORMAT, load_checkpoint, open_run_dir, reading, run_config


def export_run(run_dir, out=None, overwrite=False):
    """Write the weights of the run in ``run_dir`` to ``out``/model.safetensors (default: ``<run_dir>-export``),
    with its config.toml and metrics.jsonl, and return ``out``. ``out`` is a run folder of its own: one that
    holds a run is replaced only with ``overwrite``."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir.with_name(f"{run_dir.name}-export")
    with reading(run_dir):
        config = run_config(run_dir)
        state = load_checkpoint(run_dir, config)
        if out.resolve() == run_dir.resolve():
            raise PyroVAEError(f"--out {out} is the run folder itself; name another folder")
        metadata = {
            "format": WEIGHTS_FORMAT,
            "config": json.dumps(state["config"]),
            "image_shape": json.dumps(list(state["image_shape"])),
            "num_classes": str(state["num_classes"]),
            "label_counts": json.dumps(state["label_counts"].tolist()),
            "epoch": str(state["epoch"]),
            "step": str(state["step"]),
            "pyro_vae": __version__,
        }
        weights = {key: value.detach().cpu().contiguous().clone() for key, value in state["model"].items()}
        files = {WEIGHTS: save(weights, metadata)}
        for name in ("config.toml", "metrics.jsonl"):
            if (run_dir / name).is_file():
                try:
                    files[name] = (run_dir / name).read_bytes()
                except OSError as e:
                    raise os_error("read", run_dir / name, e) from None
    lock = open_run_dir(out, overwrite)
    try:
        for name, data in files.items():
            atomic_write(out / name, data)
    finally:
        lock.release()
    return out
