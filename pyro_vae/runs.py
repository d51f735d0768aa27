"""Run folders: where a run's files live, written atomically, and how a run is read back.

    runs/<name>/config.toml     the resolved config
    runs/<name>/checkpoint.pt   weights, optimizer, epoch/step, data order, RNG states, metrics
    runs/<name>/metrics.jsonl   one line per epoch
    runs/<name>/*.png           pictures
    runs/<name>/eval.json       written by ``pyro-vae evaluate``
"""
import io
import json
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

import torch

from .config import config_differences, load_config
from .devices import resolve_device
from .errors import PyroVAEError
from .files import atomic_write
from .model import VAE

CHECKPOINT_FORMAT = "pyro_vae.checkpoint/1"
RESUMABLE_KEYS = {"train.epochs", "train.device"}  # settings a resumed run may change
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def new_run_dir(runs_root, name=None, overwrite=False):
    """``runs_root/name`` (a timestamp when no name), refusing names that leave the root or exist
    already. Nothing is created yet: the trainer makes the folder once data and model are built."""
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    if not NAME_PATTERN.fullmatch(name):
        raise PyroVAEError(
            f"run name {name!r} must be letters, digits, '.', '_' or '-' (no path separators), so it stays inside {runs_root}"
        )
    run_dir = Path(runs_root) / name
    if run_dir.exists() and not overwrite:
        raise PyroVAEError(f"run {run_dir} exists; pass --resume {run_dir} to continue it or --overwrite to replace it")
    return run_dir


RUN_FILES = ("config.toml", "checkpoint.pt", "metrics.jsonl", "eval.json", "eval_examples.csv", "classify.json", "*.png")


def start_run_dir(run_dir):
    """Create ``run_dir``, or remove the files of the run it replaces (only a run's own files)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for pattern in RUN_FILES:
        for stale in run_dir.glob(pattern):
            stale.unlink()


def save_checkpoint(run_dir, state):
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write(Path(run_dir) / "checkpoint.pt", buffer.getvalue())


def write_metrics(run_dir, metrics):
    atomic_write(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))


def run_config(run_dir, overrides=()):
    """The resolved config saved in a run folder, with ``overrides`` applied."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PyroVAEError(f"run folder {run_dir} does not exist")
    if not (run_dir / "config.toml").is_file():
        raise PyroVAEError(f"{run_dir} is not a run folder: it has no config.toml")
    return load_config(run_dir / "config.toml", overrides)


def load_checkpoint(run_dir, config, device="cpu"):
    """The checkpoint of a run, loaded with ``weights_only=True`` and checked against ``config``."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise PyroVAEError(f"{run_dir} has no checkpoint.pt yet; train it first")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, corrupt or foreign files fail in many ways
        raise PyroVAEError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); retrain or restore it") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PyroVAEError(f"{path} is not a pyro_vae checkpoint")
    for key, (saved, current) in config_differences(state["config"], config.to_dict()).items():
        if key not in RESUMABLE_KEYS:
            raise PyroVAEError(f"checkpoint {path} was trained with {key} = {saved!r} but config.toml says {current!r}")
    return state


def load_run(run_dir, device="auto"):
    """(config, VAE with the checkpoint's weights in eval mode) rebuilt from the run folder alone."""
    config = run_config(run_dir)
    device = resolve_device(device)
    state = load_checkpoint(run_dir, config, device)
    vae = VAE.from_config(config, state["image_shape"], state["num_classes"]).to(device)
    load_weights(vae, state, run_dir)
    return config, vae.eval()


def load_weights(vae, state, run_dir):
    """The checkpoint's weights into ``vae``, or one line that names the keys or shapes that differ."""
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as e:
        reason = " ".join(line.strip() for line in str(e).splitlines()[1:])
        raise PyroVAEError(f"checkpoint of {run_dir} does not fit its config: {reason}") from None
