"""Run folders: where a run's files live, written atomically, and how a run is read back.

runs/<name>/config.toml     the resolved config
runs/<name>/checkpoint.pt   weights, optimizer, epoch/step, data order, RNG states, metrics
runs/<name>/metrics.jsonl   one line per epoch (and one per resume that changed a setting)
runs/<name>/*.png           pictures (``PICTURES``: loss.png, samples.png, …)
runs/<name>/eval.json       written by ``pyro-vae evaluate`` (eval-<dataset>-<split>.json for other data;
                            an earlier one with other K, examples or seed kept as eval-k<K>-n<N>-seed<s>.json)
runs/<name>/.lock           locked by every command that uses the run: exclusively by the one that trains it,
                            shared by those that read it
"""

import fnmatch
import hashlib
import io
import json
import re
from datetime import datetime
from pathlib import Path

import torch

from ..devices import resolve_device
from ..errors import PyroVAEError
from ..model.vae import build_vae
from .config import config_differences, load_config
from .files import RunLock, atomic_write, make_folder, os_error, read_json

CHECKPOINT_FORMAT = "pyro_vae.checkpoint/1"
WEIGHTS = "model.safetensors"  # an exported run: its weights alone, beside config.toml (``runs/export.py``)
WEIGHTS_FORMAT = "pyro_vae.weights/1"
# settings a resumed run may change (the learning rate and clipping are what a non-finite loss calls for; the data
# root where the data moved)
RESUMABLE_KEYS = {
    "data.root",
    "train.epochs",
    "train.device",
    "train.lr",
    "train.clip_norm",
    "train.checkpoint_every",
    "train.eval_batch_size",
    "train.test_examples",
    "train.test_every",
    "train.tensorboard",
    "train.tensorboard_images_every",
}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 255  # bytes in one file name on common file systems
PICTURES = (
    "loss.png",
    "samples.png",
    "latent.png",
    "reconstructions.png",
    "interpolations.png",
    "manifold.png",
    "completions.png",
    "class_grid.png",
    "class_samples.png",
    "samples-*.png",
    "eval*_vs_k.png",
    "confusion*.png",
    "gap*.png",
)
RUN_FILES = (
    "config.toml",
    "checkpoint.pt",
    WEIGHTS,
    "metrics.jsonl",
    "eval*.json",
    "eval*_examples.csv",
    "gap*.json",
    "gap*_examples.csv",
    "classify*.json",
    "gradvar*.json",
    "samples-*.npy",
    *PICTURES,
    "tensorboard/events.out.tfevents.*",
)  # what the project writes into a run folder


def new_run_dir(runs_root, name=None, overwrite=False):
    """``runs_root/name`` (a timestamp when no name), refusing names that leave the root, are too long,
    or hold a run already. Nothing is created yet: the trainer makes the folder once data and model are built."""
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    if not NAME_PATTERN.fullmatch(name):
        raise PyroVAEError(
            f"run name {name!r} must be letters, digits, '.', '_' or '-' (no path separators), so it stays inside {runs_root}"
        )
    if len(name.encode()) > NAME_MAX:
        raise PyroVAEError(f"run name is {len(name.encode())} bytes long; file names stop at {NAME_MAX}")
    root = Path(runs_root)
    if root.exists() and not root.is_dir():
        raise PyroVAEError(f"runs root {root} is not a folder")
    run_dir = root / name
    if run_dir.exists() and not run_dir.is_dir():
        raise PyroVAEError(f"{run_dir} exists and is not a folder")
    if holds_run(run_dir) and not overwrite:
        raise PyroVAEError(f"run {run_dir} exists; pass --resume {run_dir} to continue it or --overwrite to replace it")
    return run_dir


def holds_run(run_dir):
    """Whether ``run_dir`` holds what a run writes beyond its config (a checkpoint, metrics, evaluations,
    pictures). A folder with config.toml alone is a run stopped before its first checkpoint: nothing to lose."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and any(any(run_dir.glob(pattern)) for pattern in RUN_FILES if pattern != "config.toml")


def open_run_dir(run_dir, overwrite=False):
    """Create ``run_dir`` (or take one that holds no run), lock it for this process, and, with
    ``overwrite``, remove the files of the run it replaces (only a run's own files). Returns the held
    ``RunLock``; a run held by another process, or an existing run without ``overwrite``, is refused."""
    run_dir = Path(run_dir)
    make_folder(run_dir)
    lock = RunLock(run_dir).acquire()
    try:
        if holds_run(run_dir) and not overwrite:
            raise PyroVAEError(f"run {run_dir} exists; pass overwrite=True (--overwrite) to replace it or resume it")
        refuse_linked_folders(run_dir)
        for pattern in RUN_FILES:
            for stale in run_dir.glob(pattern):
                try:
                    stale.unlink()  # a link is removed itself, never what it points to
                except OSError as e:
                    raise os_error("remove", stale, e) from None
        remove_torn(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def refuse_linked_folders(run_dir):
    """Refuse a run whose tensorboard folder is a link: the event files would be written, and a replaced run's
    removed, outside the run folder. (Files are replaced by ``atomic_file``'s rename, which replaces a link
    itself, never what it points to; RUN/.lock is opened without following one.)"""
    if (Path(run_dir) / "tensorboard").is_symlink():
        raise PyroVAEError(
            f"{Path(run_dir) / 'tensorboard'} is a symbolic link; pyro-vae never writes or removes files "
            "through a link in a run folder: remove it"
        )


TEMPORARY = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp")  # atomic_file's temporary of RUN/<name>


def remove_torn(run_dir):
    """Remove the temporaries of the run's own files (``RUN_FILES``) that a killed write left behind. Only
    the holder of the run's exclusive lock calls it: no other command of the project is writing then."""
    for torn in Path(run_dir).glob(".*.tmp"):
        match = TEMPORARY.fullmatch(torn.name)
        if match and any(fnmatch.fnmatch(match["name"], pattern) for pattern in RUN_FILES):
            try:
                torn.unlink()
            except OSError as e:
                raise os_error("remove", torn, e) from None


def reading(run_dir):
    """The run folder's shared lock (a ``RunLock`` to use in ``with``), held by a command that reads the run and
    writes its results there: no run is trained, resumed or replaced under it."""
    return RunLock(check_run_dir(run_dir), shared=True)


def sample_file_name(n, label=None, suffix=".png"):
    """The default name of ``pyro-vae sample``'s output in a run: ``samples-<n>[-label<L>].png`` (or .npy)."""
    return f"samples-{n}{'' if label is None else f'-label{label}'}{suffix}"


def owned_by_run(path):
    """Whether ``path`` names a file that the project writes into the run folder it lies in (other than
    a sample's own file, which ``sample`` may replace)."""
    path = Path(path)
    if not (path.parent / "config.toml").is_file():
        return False
    return any(
        fnmatch.fnmatch(path.name, pattern) for pattern in RUN_FILES + (".lock",) if not pattern.startswith("samples-")
    )


def resumed_checkpoint(run_dir, config):
    """The checkpoint a resume of the run in ``run_dir`` continues from (None where the run stopped before its
    first), once the run's folders are checked for links and the torn temporaries of its files are removed.
    The caller holds the run's exclusive lock."""
    refuse_linked_folders(run_dir)
    remove_torn(run_dir)  # left by a write that was killed midway
    if not (Path(run_dir) / "checkpoint.pt").is_file() and (Path(run_dir) / WEIGHTS).is_file():
        raise PyroVAEError(
            f"{run_dir} is an exported run (its weights alone, {WEIGHTS}): it has no optimizer state to resume "
            "from; train a new run, or resume the run it was exported from"
        )
    return load_checkpoint(run_dir, config, "cpu") if (Path(run_dir) / "checkpoint.pt").is_file() else None


def save_checkpoint(run_dir, state):
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write(Path(run_dir) / "checkpoint.pt", buffer.getvalue())


def write_metrics(run_dir, metrics):
    atomic_write(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))


EPOCH_FIELDS = {"epoch": int, "train_loss": (int, float), "seconds": (int, float)}  # every epoch's record has them


def read_metrics(run_dir):
    """The records of RUN/metrics.jsonl (one per epoch, and events such as a resume), or a one-line error that
    names the line that is torn, edited or missing a field: the checkpoint holds them whole, and a resume
    (``pyro-vae train --resume RUN``) writes the file again from it."""
    path = Path(run_dir) / "metrics.jsonl"
    fix = f"resume the run (pyro-vae train --resume {run_dir}) to write it again from the checkpoint"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PyroVAEError(f"{run_dir} has no metrics.jsonl; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PyroVAEError(f"cannot read {path} ({getattr(e, 'strerror', None) or type(e).__name__}); {fix}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            raise PyroVAEError(f"{path} line {number} is not JSON (torn or edited); {fix}") from None
        if not isinstance(record, dict):
            raise PyroVAEError(f"{path} line {number} is not a record of key: value; {fix}")
        if "event" not in record:
            for key, types in EPOCH_FIELDS.items():
                if not isinstance(record.get(key), types) or isinstance(record.get(key), bool):
                    raise PyroVAEError(f"{path} line {number} has no number {key!r}; {fix}")
            if "test_elbo" in record and not isinstance(record["test_elbo"], (int, float)):
                raise PyroVAEError(f"{path} line {number} has a test_elbo that is not a number; {fix}")
        records.append(record)
    return records


def read_result(path, fields):
    """The JSON object a command wrote into a run (eval.json, classify.json) with its number ``fields``, None
    where there is none; a file that is not such an object (torn, edited, emptied) is a one-line error."""
    data = read_json(path)
    if data is None:
        return None
    missing = (
        [key for key in fields if not isinstance(data.get(key), (int, float)) or isinstance(data.get(key), bool)]
        if isinstance(data, dict)
        else None
    )
    if missing is None or missing:
        what = "not a JSON object" if missing is None else f"missing {', '.join(missing)}"
        raise PyroVAEError(
            f"{path} is {what}; run the command that writes it again (pyro-vae evaluate {Path(path).parent})"
        )
    return data


def run_config(run_dir, overrides=()):
    """The resolved config saved in a run folder, with ``overrides`` applied."""
    return load_config(check_run_dir(run_dir) / "config.toml", overrides)


def check_run_dir(run_dir):
    """``run_dir`` as a Path, after refusing a path that is not a run folder (missing, a file, no config.toml)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise PyroVAEError(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        raise PyroVAEError(f"run folder {run_dir} does not exist")
    if not (run_dir / "config.toml").is_file():
        raise PyroVAEError(f"{run_dir} is not a run folder: it has no config.toml")
    return run_dir


CHECKPOINT_FIELDS = {
    "config": dict,
    "image_shape": list,
    "num_classes": int,
    "label_counts": torch.Tensor,
    "model": dict,
    "optimizer": (dict, type(None)),
    "epoch": int,
    "step": int,
    "position": int,
    "loss_sum": float,
    "permutation": (torch.Tensor, type(None)),
    "metrics": list,
    "rng": dict,
}


def load_checkpoint(run_dir, config, device="cpu"):
    """The checkpoint of a run, loaded with ``weights_only=True``, checked field by field and against ``config``;
    for an exported run (``model.safetensors``, no checkpoint.pt), its weights as a checkpoint that cannot resume."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file() and (Path(run_dir) / WEIGHTS).is_file():
        path = Path(run_dir) / WEIGHTS
    elif not path.is_file():
        raise PyroVAEError(f"{run_dir} has no checkpoint.pt yet; train it first")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise os_error("read", path, e) from None
    try:
        state = (
            exported_state(data, device)
            if path.name == WEIGHTS
            else torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        )
    except Exception as e:  # truncated, corrupt or foreign files fail in many ways
        raise PyroVAEError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); retrain or restore it"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PyroVAEError(f"{path} is not a pyro_vae checkpoint")
    check_fields(state, path)
    state["sha256"] = hashlib.sha256(data).hexdigest()
    for key, (saved, current) in config_differences(state["config"], config.to_dict()).items():
        if key not in RESUMABLE_KEYS:
            raise PyroVAEError(f"checkpoint {path} was trained with {key} = {saved!r} but config.toml says {current!r}")
    return state


def exported_state(data, device):
    """The checkpoint of an exported run's ``model.safetensors`` bytes: its weights and what rebuilds the model
    (from the file's metadata), with no optimizer, position or random streams (``exported`` True)."""
    from safetensors.torch import load

    weights = load(data)
    size = int.from_bytes(data[:8], "little")  # the header: its length in 8 bytes, then JSON with the metadata
    metadata = json.loads(data[8 : 8 + size]).get("__metadata__", {})
    if metadata.get("format") != WEIGHTS_FORMAT:
        return None
    return {
        "format": CHECKPOINT_FORMAT,
        "exported": True,
        "config": json.loads(metadata["config"]),
        "image_shape": json.loads(metadata["image_shape"]),
        "num_classes": int(metadata["num_classes"]),
        "label_counts": torch.tensor(json.loads(metadata["label_counts"]), dtype=torch.int64),
        "model": {key: value.to(device) for key, value in weights.items()},
        "optimizer": None,
        "epoch": int(metadata["epoch"]),
        "step": int(metadata["step"]),
        "position": 0,
        "loss_sum": 0.0,
        "permutation": None,
        "metrics": [],
        "rng": {},
    }


def check_fields(state, path):
    """Refuse a checkpoint whose fields are missing or of the wrong type, naming the first one."""

    def damaged(what):
        return PyroVAEError(f"checkpoint {path} is damaged: {what}; retrain or restore it")

    for key, types in CHECKPOINT_FIELDS.items():
        if key not in state:
            raise damaged(f"it has no {key!r}")
        if not isinstance(state[key], types) or isinstance(state[key], bool):
            raise damaged(f"{key!r} is a {type(state[key]).__name__}")
    if not all(isinstance(v, int) and v > 0 for v in state["image_shape"]) or not state["image_shape"]:
        raise damaged(f"'image_shape' is {state['image_shape']!r}")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise damaged("'model' holds values that are not tensors")
    broken = [key for key, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise damaged(
            f"its weights {broken[0]!r}{f' and {len(broken) - 1} more' if len(broken) > 1 else ''} hold NaN "
            "or infinite values (training never saves those)"
        )
    for key in () if state.get("exported") else ("torch", "data"):  # an exported run keeps no random streams
        if not isinstance(state["rng"].get(key), torch.Tensor) or state["rng"][key].dtype != torch.uint8:
            raise damaged(f"its random state {key!r} is missing or not a byte tensor")
    if min(state["epoch"], state["step"], state["position"]) < 0:
        raise damaged("a negative epoch, step or position")


def load_run(run_dir, device="auto"):
    """(config, VAE with the checkpoint's weights in eval mode) rebuilt from the run folder alone."""
    config = run_config(run_dir)
    device = resolve_device(device)
    with reading(run_dir):
        state = load_checkpoint(run_dir, config, device)
    vae = build_vae(config, state["image_shape"], state["num_classes"], device)
    load_weights(vae, state, run_dir)
    return config, vae.eval()


def checkpoint_id(state):
    """What names the checkpoint a result was computed from: its epoch, step and the SHA-256 of its bytes."""
    return {"epoch": state["epoch"], "step": state["step"], "sha256": state.get("sha256")}


def load_weights(vae, state, run_dir):
    """The checkpoint's weights into ``vae`` (``vae.checkpoint`` is then its ``checkpoint_id``), or one line that
    names the keys or shapes that differ."""
    vae.checkpoint = checkpoint_id(state)
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as e:
        reason = " ".join(line.strip() for line in str(e).splitlines()[1:])
        raise PyroVAEError(f"checkpoint of {run_dir} does not fit its config: {reason}") from None
