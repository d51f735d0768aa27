"""Bad input gets one clear line and exit status 2; faults lose nothing; resume is bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_args, sigterm_caught, wait_for

from pyro_vae.cli import main
from pyro_vae.errors import PyroVAEError
from pyro_vae.runs.datasets import DATASETS, ImageData, Split
from pyro_vae.runs.folders import RUN_FILES


def same_train_and_test(images, labels, num_classes):
    return ImageData(Split(images, labels), Split(images, labels), num_classes)


@DATASETS.register("test-nan-pixels")
class NaNPixels:
    def load(self):
        images = torch.rand(8, 1, 4, 4)
        images[3, 0, 1, 1] = float("nan")
        return same_train_and_test(images, torch.zeros(8, dtype=torch.long), 2)


@DATASETS.register("test-out-of-range")
class OutOfRange:
    def load(self):
        return same_train_and_test(torch.rand(8, 1, 4, 4) * 255, torch.zeros(8, dtype=torch.long), 2)


@DATASETS.register("test-bad-labels")
class BadLabels:
    def load(self):
        return same_train_and_test(torch.rand(8, 1, 4, 4), torch.arange(8), 3)


def trained(tiny, name, *extra):
    main(cli_args("train", tiny, "--name", name, *extra))
    return Path(tiny["runs_root"]) / name


def corrupt_checkpoint(folder):
    data = (folder / "checkpoint.pt").read_bytes()
    (folder / "checkpoint.pt").write_bytes(data[: len(data) // 2])


def foreign_config(folder):
    text = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(text.replace("z_dim = 2", "z_dim = 3"))


BAD_INPUTS = {
    # name: (arguments after the tiny overrides, or a setup, and the message)
    "unknown config key": (
        ["--set", "train.nosuch=1"],
        "unknown key 'nosuch' in [train]; valid keys: epochs, batch_size",
    ),
    "unknown prior": (["--prior", "vampire"], "unknown prior 'vampire'; valid choices: conditional_gaussian, flow"),
    "unknown likelihood": (["--likelihood", "mse"], "unknown likelihood 'mse'; valid choices: bernoulli"),
    "wrong value type": (["--set", "train.epochs=ten"], "train.epochs must be int, got 'ten'"),
    "non-positive learning rate": (["--lr", "-0.1"], "train.lr must be positive, got -0.1"),
    "non-positive batch size": (["--batch-size", "0"], "train.batch_size must be positive, got 0"),
    "negative latent size": (["--z-dim", "-1"], "model.z_dim must be zero or more, got -1"),
    "no latent without a condition on part of the image": (
        ["--z-dim", "0"],
        "model.z_dim = 0 (no latent, no prior) is the deterministic baseline of image completion",
    ),
    "unknown condition": (
        ["--condition", "half"],
        "unknown condition 'half'; valid choices: column, label, none, quadrants",
    ),
    "quadrants beyond three": (
        ["--condition", "quadrants", "--set", "condition.given=4"],
        "condition.given must be 1, 2 or 3 quadrants, got 4",
    ),
    "part of an image of points": (
        ["--dataset", "ring", "--likelihood", "gaussian", "--condition", "column"],
        "the column condition takes part of an image [C, H, W]; this data has shape (2,)",
    ),
    "completion by the conv network": (
        ["--condition", "quadrants", "--network", "conv"],
        "the conv network generates whole images [C, H, W], not (48,)",
    ),
    "prior network without a condition": (
        ["--prior", "network"],
        "the network prior maps a condition to p(z|c); it needs",
    ),
    "legacy label flag against another condition": (
        ["--set", "model.conditional=true", "--condition", "column"],
        "model.conditional = true asks for the label condition",
    ),
    "missing data offline": (
        ["--dataset", "mnist", "--data-root", "/nonexistent", "--set", "data.download=false"],
        "mnist was not found under '/nonexistent'",
    ),
    "images too small to convolve": (
        ["--network", "conv", "--set", "data.size=3"],
        "the conv network needs images of 4 × 4 pixels or more, got (1, 3, 3)",
    ),
    "NaN pixels": (["--dataset", "test-nan-pixels"], "images contain NaN or infinite pixel values"),
    "pixels outside [0, 1]": (["--dataset", "test-out-of-range"], "pixel values must lie in [0, 1]"),
    "labels outside the classes": (["--dataset", "test-bad-labels"], "labels must lie in 0..2"),
    "conditional prior without labels": (
        ["--prior", "conditional_gaussian"],
        "the conditional_gaussian prior needs labels",
    ),
    "run name outside the runs root": (["--name", "../escape"], "must be letters, digits"),
    "empty run to resume": (["--resume", ""], "--resume is empty"),  # it started a new run
    "label flag against another condition": (
        ["--conditional", "--condition", "column"],
        "--conditional asks for --condition label; it cannot be combined with",
    ),
    "existing run without --resume": (None, "exists; pass --resume"),
    "run folder that does not exist": ("evaluate /nonexistent/run", "run folder /nonexistent/run does not exist"),
    "folder that is not a run": ("evaluate {runs_root}", "is not a run folder: it has no config.toml"),
    "a run's file given as the run": (
        "train --resume {run}/checkpoint.pt",
        "checkpoint.pt is a file, not a run folder",
    ),
    "non-positive K": ("evaluate {run} -k 0", "--num-samples must be positive, got 0"),
    "chunks of no samples": ("evaluate {run} --chunk-size 0", "--chunk-size must be positive, got 0"),
    "classifying a model without labels": ("evaluate {run} --classify", "is a model without labels; --classify needs"),
    "classifying with no samples": (
        "evaluate {cvae} --classify --classify-samples 0",
        "--classify-samples must be positive",
    ),
    "bench output where no folder can be made": (
        "bench --quick --out /proc/no/bench.json",
        "cannot create /proc/no: No such file",
    ),
    "truncated checkpoint": ("evaluate {run}", "is corrupt or truncated"),
    "checkpoint of another config": ("evaluate {run}", "was trained with model.z_dim = 2 but config.toml says 3"),
    "label for an unconditional model": ("sample {run} --label 1", "--label was given for an unconditional run"),
    "label outside the classes": ("sample {cvae} --label 9", "--label must lie in 0..3, got 9"),
    "labelled samples beyond the disk": (
        "sample {cvae} -n 100000000000 --out {runs_root}/big.npy",
        "100000000000 samples need",
    ),  # their labels alone filled the memory
    "resume that changes the model": (
        "train --resume {run} --prior mog",
        "can change only data.root, train.checkpoint_every, train.clip_norm, train.device, train.epochs",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_with_status_2(case, tiny, capsys):
    args, message = BAD_INPUTS[case]
    run = cvae = None
    if args is None or isinstance(args, str):
        run = trained(tiny, "existing")
        if case == "truncated checkpoint":
            corrupt_checkpoint(run)
        if case == "checkpoint of another config":
            foreign_config(run)
        if "{cvae}" in (args or ""):
            cvae = trained(tiny, "cvae", "--config", "mnist-cvae", "--set", "data.name=synthetic")
        capsys.readouterr()
    if args is None:
        argv = cli_args("train", tiny, "--name", "existing")
    elif isinstance(args, str):
        argv = args.format(run=run, cvae=cvae, runs_root=tiny["runs_root"]).split()
    else:
        argv = cli_args("train", tiny, *args)
    before = snapshot(run) if run else {}
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyro-vae: error: ") and "Traceback" not in err
    assert message in err, err
    assert (snapshot(run) if run else {}) == before, "a refused command changed the run"


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", "--runs-root", ""], "--runs-root"),
        (["evaluate", ""], "RUN"),
        (["sample", "{run}", "--out", ""], "--out"),
        (["compare", "{run}", ""], "a RUN"),
        (["bench", "--out", ""], "--out"),
    ],
)
def test_an_empty_value_is_refused(argv, flag, tiny, capsys, monkeypatch, tmp_path):
    """An empty value, as an unset shell variable gives, is refused, not read as the flag's absence
    (``--out ""`` wrote where no --out writes, ``--runs-root ""`` into the working folder)."""
    monkeypatch.chdir(tmp_path)
    run = trained(tiny, "existing").resolve()
    before = snapshot(run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(run=run) for a in argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"pyro-vae: error: {flag} is empty\n"
    assert snapshot(run) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present, so --device cuda is rightly accepted")
@pytest.mark.parametrize("command", ["evaluate", "sample", "gradvar"])
def test_a_gpu_where_there_is_none_is_refused_by_the_flag_it_came_from(command, tiny, capsys):
    run = trained(tiny, "existing")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([command, str(run), "--device", "cuda"])
    assert capsys.readouterr().err.startswith(
        "pyro-vae: error: device cuda was asked for (--device or train.device), but no"
    )


@pytest.mark.parametrize(
    "command", ["sample {run}", "compare {run} {run}", "gradvar {run}", "configs", "bench --quick"]
)
def test_a_one_process_command_refuses_several_torchrun_processes(command, tiny, capsys, monkeypatch, tmp_path):
    """Each process would do the whole job and write the same files (sample wrote its picture twice)."""
    monkeypatch.chdir(tmp_path)  # bench writes runs/bench.json here
    run = trained(tiny, "existing").resolve()
    before = snapshot(run)
    capsys.readouterr()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exit_info:
        main(command.format(run=run).split())
    assert exit_info.value.code == 2
    name = command.split()[0]
    assert capsys.readouterr().err == (
        f"pyro-vae: error: pyro-vae {name} runs in one process; run it without torchrun "
        "(train and evaluate share their work among 2 processes)\n"
    )
    assert snapshot(run) == before


def test_a_warning_prints_as_one_line_under_the_command_line(monkeypatch):
    import warnings

    from pyro_vae import cli

    seen = []
    monkeypatch.setattr(
        cli,
        "run_configs",
        lambda args: seen.append(
            warnings.formatwarning(
                "objective.jit: the traced loss differs;\n  training without JIT", UserWarning, "trainer.py", 227
            )
        ),
    )
    main(["configs"])
    assert seen == ["pyro-vae: warning: objective.jit: the traced loss differs; training without JIT\n"]
    assert warnings.formatwarning is not cli.one_line_warning  # the caller's format is back


@pytest.mark.slow
def test_installed_entry_point_prints_no_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--prior", "nope"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pyro-vae: error: unknown prior 'nope'; valid choices: conditional_gaussian, flow, gaussian, mog, network, "
        "standard_normal, vamp"
    ]
    debug = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "--debug", "train", "--prior", "nope"], capture_output=True, text=True
    )
    assert "Traceback" in debug.stderr


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tiny, capsys, monkeypatch):
    from pyro_vae.trainer import Trainer

    folder = trained(tiny, "nan", "--set", "train.epochs=1")
    before = (folder / "checkpoint.pt").read_bytes()
    original = Trainer.train_step
    calls = []

    def failing_step(self, index):
        calls.append(1)
        return torch.tensor(float("nan")) if len(calls) == 2 else original(self, index)

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(folder), "--epochs", "2", "--quiet"])
    assert exit_info.value.code == 2
    assert "loss became nan at epoch 2 step 4; the last good checkpoint is kept" in capsys.readouterr().err
    assert (folder / "checkpoint.pt").read_bytes() == before


TRAIN = [
    "-m",
    "pyro_vae",
    "train",
    "--quiet",
    "--set",
    "data.name=synthetic",
    "--set",
    "data.train_per_class=400",
    "--set",
    "network.hidden=[64]",
    "--set",
    "model.z_dim=4",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.epochs=3",
    "--device",
    "cpu",
]


def final_parameters(folder):
    return torch.load(Path(folder) / "checkpoint.pt", weights_only=True)["model"]


def assert_same_parameters(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


STARTED = []


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """A test that fails midway must not leave its training processes running into the next test."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


def start(runs_root, name, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")  # two runs side by side: one thread each
    STARTED.append(
        subprocess.Popen(
            [sys.executable, *TRAIN, "--runs-root", str(runs_root), "--name", name, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    )
    return STARTED[-1]


@pytest.mark.slow
def test_sigint_mid_epoch_checkpoints_and_resumes_bit_identically(tmp_path):
    long_epochs = ("--set", "data.train_per_class=4000", "--set", "train.epochs=2")  # 1000 steps an epoch, about 1 s
    reference = start(tmp_path, "reference", *long_epochs)
    interrupted = start(tmp_path, "interrupted", *long_epochs)
    wait_for(tmp_path / "interrupted" / "metrics.jsonl")  # epoch 1 done: now inside epoch 2
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 128 + signal.SIGINT
    assert "SIGINT: stopped at epoch 2 step" in err and "resume with: pyro-vae train --resume" in err
    assert "Traceback" not in err
    state = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["position"] < 16000
    resumed = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--resume", str(tmp_path / "interrupted"), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert reference.communicate(timeout=300) and reference.returncode == 0
    assert_same_parameters(final_parameters(tmp_path / "interrupted"), final_parameters(tmp_path / "reference"))


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    reference = start(tmp_path, "reference")
    victim_dir = tmp_path / "victim"
    resume = [sys.executable, "-m", "pyro_vae", "train", "--resume", str(victim_dir), "--quiet"]
    for attempt, delay in enumerate((0.5, 0.9, 1.3)):
        if attempt == 0:
            victim = start(tmp_path, "victim", "--set", "train.checkpoint_every=1")  # a checkpoint every step
            wait_for(victim_dir / "checkpoint.pt")
        else:
            victim = subprocess.Popen(resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        victim.kill()
        victim.communicate()
        assert torch.load(victim_dir / "checkpoint.pt", weights_only=True)["step"] >= 1
    finished = subprocess.run(resume, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert not list(victim_dir.glob(".*.tmp"))  # torn temporaries of killed writes are removed on resume
    assert reference.communicate(timeout=300) and reference.returncode == 0
    assert_same_parameters(final_parameters(victim_dir), final_parameters(tmp_path / "reference"))


def test_a_run_that_cannot_start_creates_nothing_and_overwrite_keeps_the_old_run_until_then(tiny, capsys):
    folder = trained(tiny, "keep")
    before = (folder / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit):
        main(cli_args("train", tiny, "--name", "keep", "--overwrite", "--dataset", "test-nan-pixels"))
    assert (folder / "checkpoint.pt").read_bytes() == before
    with pytest.raises(SystemExit):
        main(cli_args("train", tiny, "--name", "never", "--dataset", "test-nan-pixels"))
    assert not (Path(tiny["runs_root"]) / "never").exists()
    (folder / "notes.txt").write_text("mine")
    (folder / "sketch.png").write_text("mine")
    old_outputs = [
        "gradvar.json",
        "gradvar-d20-n10.json",
        "classify-test-k10-n20.json",
        "eval-k10-n5-seed0_examples.csv",
        "samples-2000.npy",
        "tensorboard/events.out.tfevents.1.host.2.0",
    ]  # names the project gives what it writes
    (folder / "tensorboard").mkdir()
    for name in old_outputs:
        (folder / name).write_text("the old run's")
    main(cli_args("train", tiny, "--name", "keep", "--overwrite"))
    assert (folder / "notes.txt").read_text() == (folder / "sketch.png").read_text() == "mine"
    assert not [name for name in old_outputs if (folder / name).exists()], "the old run's outputs outlived it"


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("vae", ["--set", "train.tensorboard=true"]),
        ("cvae", ["--config", "mnist-cvae", "--set", "data.name=synthetic"]),
        ("completion", ["--condition", "quadrants"]),
        ("ring", ["--dataset", "ring", "--likelihood", "gaussian"]),
    ],
)
def test_every_file_the_commands_write_into_a_run_is_one_the_run_owns(kind, extra, tiny, capsys):
    """RUN_FILES names all that training, evaluate (twice: the first kept), classify, gradvar (twice) and
    sample write into a run folder, so that --overwrite removes every one of them and nothing else."""
    if kind == "vae":
        pytest.importorskip("tensorboard")
    folder = trained(tiny, kind, *extra)
    commands = [["evaluate", "-k", "4", "--limit", "3"], ["evaluate", "-k", "5", "--limit", "3"]]
    if kind == "cvae":
        commands += [
            ["evaluate", "-k", "4", "--limit", "3", "--classify", "--classify-samples", "2"],
            ["evaluate", "-k", "5", "--limit", "3", "--classify", "--classify-samples", "3"],
        ]
    if kind != "completion":
        commands += [["sample", "-n", "4"], ["sample", "-n", "1025"]]
    if kind == "vae":
        commands += [["gradvar", "--draws", "2", "--examples", "2"], ["gradvar", "--draws", "3", "--examples", "2"]]
    for command in commands:
        main([command[0], str(folder), *command[1:]] + (["--quiet"] if command[0] != "sample" else []))
    owned = {p for pattern in RUN_FILES for p in folder.glob(pattern)}
    written = {p for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    assert written - owned == set(), "files the run does not own"


# --- second round: the file system, malformed files, non-finite settings, sizes, locks ---------------------


def snapshot(root):
    """{path: bytes} of every file under ``root``."""
    root = Path(root)
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def not_utf8(path):
    path.write_bytes(b"[train]\nepochs = 1 # caf\xe9\n")
    return path


def damage_checkpoint(run, key, value=None):
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    if value is None:
        del state[key]
    else:
        state[key] = value
    torch.save(state, run / "checkpoint.pt")


def failing_download(monkeypatch):
    """Make torchvision's FashionMNIST fail as its download does without a network."""
    import torchvision.datasets

    class Offline(torchvision.datasets.FashionMNIST):
        def __init__(self, root, **kwargs):
            (Path(root) / "FashionMNIST" / "raw").mkdir(parents=True, exist_ok=True)  # as its download does first
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried http://example.org/, got:\n"
                "<urlopen error [Errno -2] Name or service not known>\n"
            )

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    from pyro_vae.runs.datasets import DATASETS

    failing_download(monkeypatch)
    (tmp_path / "mine").mkdir()
    for root in (tmp_path / "mine", tmp_path / "mine" / "data"):
        with pytest.raises(PyroVAEError, match="could not be downloaded"):
            DATASETS.build("fashion-mnist", {"root": str(root)}).load()
        assert [p.name for p in tmp_path.rglob("*")] == ["mine"]  # the user's folder kept, those made removed


def disk_with_free(monkeypatch, free):
    """Make the project's free-space check see ``free`` bytes."""
    import types

    from pyro_vae.runs import files

    monkeypatch.setattr(
        files.shutil, "disk_usage", lambda path: types.SimpleNamespace(total=2**40, used=2**40 - free, free=free)
    )


def full_after(monkeypatch, size):
    """Make the files that plots.py opens fail with 'No space left on device' once ``size`` bytes are written,
    as a disk that fills while samples are written."""
    import errno
    import os as real_os

    from pyro_vae.report import plots

    class Filling:
        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += len(data)
            if self.written > size:
                raise OSError(errno.ENOSPC, real_os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(plots, "open", lambda *args, **kwargs: Filling(open(*args, **kwargs)), raising=False)


def mnist_files(tmp_path, damage):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(2 * 784))
    (raw / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 0, 1]))
    damage(raw)
    return str(tmp_path / "data")


def failing_at(monkeypatch, name, errno_code, match):
    """Make files.<name> (os.fsync or tempfile.mkstemp) fail with ``errno_code`` on paths containing ``match``."""
    import errno
    import os as real_os

    from pyro_vae.runs import files

    if name == "fsync":
        original = real_os.fsync

        def fsync(fd):
            if match in real_os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno_code, real_os.strerror(errno_code))
            return original(fd)

        monkeypatch.setattr(files.os, "fsync", fsync)
    else:
        original = files.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if match in str(dir):
                raise OSError(errno_code, real_os.strerror(errno_code), str(dir))
            return original(*args, dir=dir, **kwargs)

        monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    assert errno


FAULTS = {
    # name: (setup(ctx) → argv, message); ctx has tiny, run (a trained run), tmp, monkeypatch
    "learning rate nan": (lambda c: train_argv(c, "--lr", "nan"), "train.lr must be a finite number, got nan"),
    "learning rate inf": (lambda c: train_argv(c, "--lr", "inf"), "train.lr must be a finite number, got inf"),
    "beta inf": (lambda c: train_argv(c, "--set", "train.beta=inf"), "train.beta must be a finite number"),
    "clip norm nan": (
        lambda c: train_argv(c, "--set", "train.clip_norm=nan"),
        "train.clip_norm must be a finite number",
    ),
    "seed beyond 64 bits": (
        lambda c: train_argv(c, "--seed", "99999999999999999999999"),
        "train.seed must fit in 64 bits",
    ),
    "negative seed": (
        lambda c: train_argv(c, "--seed", "-1"),
        "train.seed must lie in 0 … 2^32 − 1 (PyTorch's CPU generator keeps 32 bits of a seed), got -1",
    ),
    "seed beyond 32 bits": (lambda c: train_argv(c, "--seed", str(2**32)), "keeps 32 bits of a seed), got 4294967296"),
    "unknown device": (lambda c: train_argv(c, "--device", "tpu"), "train.device must be one of auto, cpu, cuda"),
    "config not UTF-8": (
        lambda c: train_argv(c, "--config", str(not_utf8(c["tmp"] / "bad.toml"))),
        "is not UTF-8 text",
    ),
    "config that is a folder": (
        lambda c: train_argv(c, "--config", str(c["tmp"])),
        "is neither a file nor a bundled config",
    ),
    "section that is not a table": (
        lambda c: train_argv(c, "--config", str(write(c["tmp"] / "flat.toml", "train = 5\n"))),
        "config section [train] must be a table",
    ),
    "run config not UTF-8": (
        lambda c: ["evaluate", str(not_utf8(c["run"] / "config.toml").parent)],
        "is not UTF-8 text",
    ),
    "idx file of garbage": (
        lambda c: train_argv(
            c,
            "--dataset",
            "mnist",
            "--set",
            "data.download=false",
            "--data-root",
            mnist_files(c["tmp"], lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(b"\x12\x34garbage")),
        ),
        "train-labels-idx1-ubyte is not an idx file of 1 dimension(s)",
    ),
    "truncated idx file": (
        lambda c: train_argv(
            c,
            "--dataset",
            "mnist",
            "--set",
            "data.download=false",
            "--data-root",
            mnist_files(
                c["tmp"],
                lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(
                    (raw / "train-images-idx3-ubyte").read_bytes()[:500]
                ),
            ),
        ),
        "needs 1584; it is truncated or damaged",
    ),
    "checkpoint without a field": (
        lambda c: (damage_checkpoint(c["run"], "model"), ["evaluate", str(c["run"])])[1],
        "is damaged: it has no 'model'",
    ),
    "checkpoint field of a wrong type": (
        lambda c: (damage_checkpoint(c["run"], "epoch", "one"), ["evaluate", str(c["run"])])[1],
        "is damaged: 'epoch' is a str",
    ),
    "checkpoint with a broken random state": (
        lambda c: (damage_checkpoint(c["run"], "rng", {"torch": torch.zeros(3)}), ["train", "--resume", str(c["run"])])[
            1
        ],
        "its random state 'torch' is missing or not a byte tensor",
    ),
    "runs root that is a file": (
        lambda c: ["train", "--runs-root", str(write(c["tmp"] / "afile", "x")), "--name", "r"],
        "is not a folder",
    ),
    "run name too long": (
        lambda c: train_argv(c, "--name", "n" * 300),
        "run name is 300 bytes long; file names stop at 255",
    ),
    "resume of a folder that is not a run": (lambda c: ["train", "--resume", str(c["tmp"])], "is not a run folder"),
    "resume to fewer epochs than trained": (
        lambda c: ["train", "--resume", str(c["run"]), "--epochs", "0"],
        "has trained 1 epoch; --epochs is the total to reach, so pass 1 or more (got 0)",
    ),
    "resume that would drop an epoch begun": (
        lambda c: (damage_checkpoint(c["run"], "position", 100), ["train", "--resume", str(c["run"]), "--epochs", "1"])[
            1
        ],
        "has trained 1 epoch and part of the next; --epochs is the total to reach, so pass 2 or more (got 1)",
    ),
    "sample into a missing folder": (
        lambda c: ["sample", str(c["run"]), "--out", str(c["tmp"] / "no" / "x.png")],
        "/no: no such folder",
    ),
    "sample to another format": (
        lambda c: ["sample", str(c["run"]), "--out", str(c["tmp"] / "x.jpg")],
        "--out must end in .png",
    ),
    "too many samples for a picture": (
        lambda c: ["sample", str(c["run"]), "-n", "5000", "--out", str(c["tmp"] / "x.png")],
        "a picture holds at most 1024 samples",
    ),
    "no samples": (lambda c: ["sample", str(c["run"]), "-n", "0"], "-n must be positive, got 0"),
    "sample seed beyond 64 bits": (
        lambda c: ["sample", str(c["run"]), "--seed", str(10**23)],
        "--seed must lie in 0 … 2^32 − 1",
    ),
    "negative sample seed": (
        lambda c: ["sample", str(c["run"]), "--seed", "-1"],
        "--seed must lie in 0 … 2^32 − 1, got -1",
    ),
    "evaluate no examples": (lambda c: ["evaluate", str(c["run"]), "--limit", "0"], "--limit must be positive, got 0"),
    "evaluate batches of zero": (
        lambda c: ["evaluate", str(c["run"]), "--batch-size", "0"],
        "--batch-size must be positive",
    ),
    "evaluate an unknown dataset": (
        lambda c: ["evaluate", str(c["run"]), "--dataset", "nope"],
        "unknown dataset 'nope'",
    ),
    "evaluate on images of another shape": (
        lambda c: ["evaluate", str(c["run"]), "--dataset", "mnist-5k"],
        "mnist-5k has images of shape (1, 28, 28) but",
    ),
    "evaluate into a read-only folder": (
        lambda c: (failing_at(c["monkeypatch"], "mkstemp", 30, "existing"), ["evaluate", str(c["run"]), "-k", "2"])[1],
        "existing: Read-only file system",
    ),
    "disk full while writing a checkpoint": (
        lambda c: (failing_at(c["monkeypatch"], "fsync", 28, "checkpoint.pt"), train_argv(c, "--name", "full"))[1],
        "full/checkpoint.pt: No space left on device",
    ),
    "samples larger than the free space": (
        lambda c: (disk_with_free(c["monkeypatch"], 1000), ["sample", str(c["run"]), "-n", "2500"])[1],
        "2500 samples need 625.1 KiB in",
    ),
    "disk full while writing samples": (
        lambda c: (full_after(c["monkeypatch"], 100_000), ["sample", str(c["run"]), "-n", "2500"])[1],
        "samples-2500.npy: No space left on device",
    ),
    "download that fails": (
        lambda c: (
            failing_download(c["monkeypatch"]),
            train_argv(c, "--dataset", "fashion-mnist", "--data-root", str(c["tmp"])),
        )[1],
        "(Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -2] Name or service not known>); point --data-root",
    ),
    "chunks beyond the free memory": (  # the process was killed, not told
        lambda c: (
            c["monkeypatch"].setattr("pyro_vae.infer.importance.free_memory", lambda device: 2**20),
            ["evaluate", str(c["run"]), "-k", "100000", "--chunk-size", "100000"],
        )[1],
        "a chunk of 100000 samples needs",
    ),
    "run in use by another process": (
        lambda c: (hold_lock(c), ["train", "--resume", str(c["run"])])[1],
        "is in use by process",
    ),
    "latent too large for memory": (
        lambda c: train_argv(c, "--set", "network.hidden=[65536, 65536]"),
        "GiB for its weights, gradients and optimizer state",
    ),
    "latent beyond any sane size": (
        lambda c: train_argv(c, "--z-dim", "100000000"),
        "model.z_dim must be at most 65536, got 100000000",
    ),
    "network beyond any sane size": (
        lambda c: train_argv(c, "--set", "network.hidden=[2000000000]"),
        "network 'mlp' option 'hidden' must be at most 65536, got 2000000000",
    ),
    # every size bounded before the work starts (issue 29): a sane range, then what the machine holds
    "a size of 2^64 − 1": (
        lambda c: train_argv(c, "--set", "prior.name=mog", "--set", f"prior.num_components={2**64 - 1}"),
        "prior 'mog' option 'num_components' must be at most 65536",
    ),
    "classes beyond any sane count": (
        lambda c: train_argv(c, "--set", "data.num_classes=100000000000"),
        "option 'num_classes' must be at most 1000, got 100000000000",
    ),
    "particles beyond any sane count": (
        lambda c: train_argv(c, "--set", "objective.num_particles=100000"),
        "option 'num_particles' must be at most 10000, got 100000",
    ),
    "schedule of a thousand stages": (
        lambda c: train_argv(c, "--set", "schedule.name=burda", "--set", "schedule.stages=1000"),
        "option 'stages' must be at most 20, got 1000",
    ),
    "flows beyond any sane count": (
        lambda c: train_argv(c, "--prior", "flow", "--set", "prior.num_flows=100000"),
        "option 'num_flows' must be at most 256, got 100000",
    ),
    "warm-up of 1e308 epochs": (
        lambda c: train_argv(c, "--set", "train.warmup_epochs=1e308"),
        "train.warmup_epochs must be at most 1e+08, got 1e+308",
    ),
    "beta of 1e308": (
        lambda c: train_argv(c, "--set", "train.beta=1e308"),
        "train.beta must be at most 10000, got 1e+308",
    ),
    "likelihood scale of 1e-300": (
        lambda c: train_argv(
            c, "--likelihood", "gaussian", "--set", "likelihood.scale=1e-300", "--set", "likelihood.min_scale=0"
        ),
        "option 'scale' must be at least 1e-06, got 1e-300",
    ),
    "training step beyond the memory": (
        lambda c: train_argv(
            c,
            "--set",
            "objective.num_particles=10000",
            "--set",
            "train.batch_size=1000000",
            "--set",
            "network.hidden=[4096]",
        ),
        "a training step needs about",
    ),
    "K of 1e20": (
        lambda c: ["evaluate", str(c["run"]), "-k", str(10**20)],
        "--num-samples must be at most 1e+06, got 100000000000000000000",
    ),
    "classifier K of 1e14": (
        lambda c: ["evaluate", str(c["run"]), "--classify", "--classify-samples", str(10**14)],
        "--classify-samples must be at most 100000, got 100000000000000",
    ),
    "limit beyond any sane count": (
        lambda c: ["evaluate", str(c["run"]), "--limit", str(10**12)],
        "--limit must be at most 1e+08",
    ),
    "gradient draws beyond any sane count": (
        lambda c: ["gradvar", str(c["run"]), "--draws", str(10**9)],
        "--draws must be at most 100000",
    ),
    # every message one line
    "unknown flag": (lambda c: train_argv(c, "--epochz", "3"), "unrecognized arguments: --epochz 3"),
    "flag without its value": (
        lambda c: ["evaluate", str(c["run"]), "-k"],
        "argument --num-samples/-k: expected one argument",
    ),
    "data root of bytes that are not UTF-8": (
        lambda c: train_argv(c, "--dataset", "mnist", "--data-root", "/tmp/caf\udce9"),
        "dataset 'mnist' option 'root' holds bytes that are not UTF-8",
    ),
    "empty idx file": (
        lambda c: train_argv(c, "--dataset", "mnist", "--data-root", str(empty_idx(c["tmp"]))),
        "is empty; restore it",
    ),
    "train and test images of other shapes": (
        lambda c: train_argv(c, "--dataset", "test-other-shapes"),
        "the train split holds images of shape (1, 4, 4) but the test split (1, 5, 5)",
    ),
    "NaN weights in the checkpoint": (
        lambda c: ["evaluate", str(nan_weights(c["run"]))],
        "hold NaN or infinite values",
    ),
    "NaN weights to sample": (
        lambda c: ["sample", str(nan_weights(c["run"])), "--out", str(c["tmp"] / "s.png")],
        "hold NaN or infinite values",
    ),
    "NaN weights to resume": (
        lambda c: ["train", "--resume", str(nan_weights(c["run"])), "--epochs", "2"],
        "hold NaN or infinite values",
    ),
    "torn metrics line": (
        lambda c: compare_argv(c, lambda run: edit(run / "metrics.jsonl", lambda t: t[: len(t) // 2])),
        "metrics.jsonl line 1 is not JSON (torn or edited)",
    ),
    "metrics line without a field": (
        lambda c: compare_argv(c, lambda run: edit(run / "metrics.jsonl", lambda t: t.replace('"seconds"', '"s"'))),
        "metrics.jsonl line 1 has no number 'seconds'",
    ),
    "eval.json that is {}": (
        lambda c: compare_argv(c, lambda run: (run / "eval.json").write_text("{}")),
        "eval.json is missing log_likelihood",
    ),
    "eval.json that is a list": (
        lambda c: compare_argv(c, lambda run: (run / "eval.json").write_text("[1, 2]")),
        "eval.json is not a JSON object",
    ),
    "bench's plain estimate of a Gaussian run": (
        lambda c: ["bench", "--compare-run", str(gaussian_run(c)), "-k", "5"],
        "--compare-run's plain estimate is the one-layer MLP VAE with a Bernoulli",
    ),
    "sample written over the run's loss curve": (
        lambda c: ["sample", str(c["run"]), "--out", str(c["run"] / "loss.png")],
        "names a file that its run folder owns",
    ),
    "lock file that is a link": (
        lambda c: link(c["run"] / ".lock", c["tmp"] / "important.txt", ["train", "--resume", str(c["run"])]),
        ".lock is a symbolic link; pyro-vae never writes through a link",
    ),
    "tensorboard folder that is a link": (
        lambda c: link(
            c["run"] / "tensorboard", folder_with_events(c["tmp"]), train_argv(c, "--name", "existing", "--overwrite")
        ),
        "tensorboard is a symbolic link",
    ),
    "run read by another command": (
        lambda c: (hold_lock(c, shared=True), train_argv(c, "--name", "existing", "--overwrite"))[1],
        "is in use by a command that reads it",
    ),
    "run trained by another process, to evaluate": (
        lambda c: (hold_lock(c), ["evaluate", str(c["run"])])[1],
        "is being trained or replaced by process",
    ),
}


@DATASETS.register("test-other-shapes")
class OtherShapes:
    def load(self):
        return ImageData(
            Split(torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)),
            Split(torch.rand(8, 1, 5, 5), torch.zeros(8, dtype=torch.long)),
            2,
        )


def empty_idx(tmp):
    raw = tmp / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / name).write_bytes(b"")
    return tmp / "data"


def nan_weights(run):
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    torch.save(state, run / "checkpoint.pt")
    return run


def edit(path, change):
    path.write_text(change(path.read_text()))


def compare_argv(c, damage):
    other = Path(c["tiny"]["runs_root"]) / "other"
    main(cli_args("train", c["tiny"], "--name", "other"))
    main(["evaluate", str(c["run"]), "-k", "2", "--quiet"])
    damage(c["run"])
    return ["compare", str(c["run"]), str(other), "--out", str(c["tmp"] / "cmp")]


def gaussian_run(c):
    main(cli_args("train", c["tiny"], "--name", "gaussian", "--likelihood", "gaussian"))
    return Path(c["tiny"]["runs_root"]) / "gaussian"


def folder_with_events(tmp):
    """A folder outside the run holding a file of a name the run's replacement would remove through a link."""
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "events.out.tfevents.1").write_text("the user's")
    return tmp / "elsewhere"


def link(path, target, argv):
    if not target.exists():
        target.write_text("the user's file")
    path.unlink(missing_ok=True)
    path.symlink_to(target)
    return argv


HELD = []


def hold_lock(c, shared=False):
    from pyro_vae.runs.files import RunLock

    HELD.append(RunLock(c["run"], shared=shared).acquire())


def write(path, text):
    path.write_text(text)
    return path


def train_argv(c, *extra):
    return cli_args("train", c["tiny"], *extra)


@pytest.mark.parametrize("case", FAULTS)
def test_fault_is_one_line_and_loses_nothing(case, tiny, tmp_path, monkeypatch, capsys):
    run = trained(tiny, "existing")
    capsys.readouterr()
    setup, message = FAULTS[case]
    argv = setup({"tiny": tiny, "run": run, "tmp": tmp_path, "monkeypatch": monkeypatch})
    before = snapshot(tmp_path)  # the runs, and what a link in a run points to
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        while HELD:
            HELD.pop().release()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyro-vae: error: ") and "Traceback" not in err, err
    assert message in err, err
    after = snapshot(tmp_path)
    assert all(after.get(path) == data for path, data in before.items()), "an earlier file changed or vanished"
    assert not [p for p in after if p.name.endswith(".tmp")], "a torn temporary file was left"


def test_the_bad_input_tables_hold_forty_cases():
    assert len(BAD_INPUTS) + len(FAULTS) >= 40


def test_api_refuses_to_replace_a_run_without_overwrite(tiny):
    from pyro_vae import PyroVAEError, load_config, train

    run = trained(tiny, "kept")
    before = snapshot(run)
    config = load_config(None, tiny["set"])
    with pytest.raises(PyroVAEError, match="exists; pass overwrite=True"):
        train(config, run, progress=False)
    assert snapshot(run) == before
    train(config, run, overwrite=True, progress=False)
    assert (run / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_two_runs_of_one_name_started_together_never_lose_one(tmp_path):
    runs = [start(tmp_path, "same") for _ in range(2)]
    results = [(p.communicate(timeout=300)[1], p.returncode)[::-1] for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(err for code, err in results if code == 2)
    assert err.count("\n") == 1 and ("is in use by" in err or "exists" in err), err
    state = torch.load(tmp_path / "same" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3


def test_a_run_stopped_before_its_first_checkpoint_restarts(tiny, capsys):
    run = Path(tiny["runs_root"]) / "early"
    run.mkdir(parents=True)
    main(cli_args("train", tiny, "--name", "early2"))
    (run / "config.toml").write_bytes((Path(tiny["runs_root"]) / "early2" / "config.toml").read_bytes())
    main(cli_args("train", tiny, "--name", "early"))  # a folder with config.toml alone is not a run to protect
    assert (run / "checkpoint.pt").is_file()
    (run / "checkpoint.pt").unlink()
    (run / "metrics.jsonl").unlink()
    for png in run.glob("*.png"):
        png.unlink()
    main(["train", "--resume", str(run), "--quiet"])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("jit", ["true", "false"])
def test_a_diverging_run_stops_in_one_line(tiny, capsys, jit):
    """A learning rate that sends the loss to NaN (a learned Gaussian scale free to reach 0): the trainer's own
    line, without Pyro's warning of the NaN before it (pytest turns that warning into an error, so it would fail
    here too)."""
    with pytest.raises(SystemExit) as exit_info:
        main(
            cli_args(
                "train",
                tiny,
                "--name",
                "diverged",
                "--lr",
                "1e6",
                "--likelihood",
                "gaussian",
                "--set",
                "likelihood.learn_scale=pixel",
                "--set",
                "likelihood.min_scale=0",
                "--set",
                "train.epochs=3",
                "--set",
                "train.batch_size=50",
                "--set",
                f"objective.jit={jit}",
            )
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyro-vae: error: loss became "), err


def test_nan_advice_works_lr_and_clipping_change_on_resume_and_are_recorded(tiny, capsys):
    import json

    run = trained(tiny, "lr")
    main(["train", "--resume", str(run), "--epochs", "2", "--lr", "1e-4", "--set", "train.clip_norm=5", "--quiet"])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "event" in line]
    assert events == [
        {
            "event": "resume",
            "epoch": 1,
            "step": 2,
            "changed": {"train.clip_norm": [0.0, 5.0], "train.epochs": [1, 2], "train.lr": [0.001, 0.0001]},
        }
    ]


def test_run_files_respect_the_umask(tiny):
    import os

    old = os.umask(0o027)
    try:
        from pyro_vae.runs import files

        files.UMASK, saved = 0o027, files.UMASK
        run = trained(tiny, "modes")
    finally:
        os.umask(old)
        files.UMASK = saved
    assert {oct(p.stat().st_mode & 0o777) for p in run.iterdir() if p.name != ".lock"} == {oct(0o640)}


def test_sampling_a_cvae_checks_labels_like_the_model(tiny):
    from pyro_vae import PyroVAEError, load_run

    run = trained(tiny, "cvae", "--config", "mnist-cvae", "--set", "data.name=synthetic")
    _, vae = load_run(run, "cpu")
    with pytest.raises(PyroVAEError, match="needs the label y"):
        vae.sample(3)
    with pytest.raises(PyroVAEError, match="labels must lie in 0..3"):
        vae.sample(2, torch.tensor([0, 7]))
    with pytest.raises(PyroVAEError, match="2 labels for 3 images"):
        vae.sample(3, torch.tensor([0, 1]))
    assert vae.sample(2, torch.tensor([0, 3])).shape == (2, 1, 8, 8)


def test_many_samples_go_to_an_array_in_batches(tiny, capsys):
    import numpy as np

    run = trained(tiny, "many")
    main(["sample", str(run), "-n", "2500"])
    array = np.load(run / "samples-2500.npy")
    assert array.shape == (2500, 1, 8, 8) and array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_one_line(tiny, signum):
    run = trained(tiny, "sig")
    process = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "evaluate", str(run), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    while not sigterm_caught(process.pid):  # main() has set up its handling; torch and Pyro are still loading
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.005)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert err.count("\n") == 1 and f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err, err


def test_a_signal_while_an_error_is_on_its_way_out_reports_the_error(monkeypatch, capsys):
    """Once one rank has failed, torchrun stops the others with SIGTERM: where it reaches a rank that is
    leaving with its own error (a lost peer), that error is the one line, not "stopped by SIGTERM"."""
    import pyro_vae.cli as cli

    lost = "process 0: another process of this run stopped or timed out (Connection closed by peer)"

    def failing_train(args):
        try:
            raise PyroVAEError(lost)
        finally:  # the launcher's SIGTERM arrives during the clean-up on the way out
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(cli, "run_train", failing_train)
    with pytest.raises(SystemExit) as exit:
        main(["train", "--quiet"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == f"pyro-vae: error: {lost}\n"


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tiny, capsys):
    run = trained(tiny, "finished")
    checkpoint = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    main(["train", "--resume", str(run)])
    assert (
        "has trained all 1 of its epochs: nothing to train (--epochs 11 would train 10 more)" in capsys.readouterr().out
    )
    assert (run / "checkpoint.pt").read_bytes() == checkpoint


def test_a_run_of_zero_epochs_is_its_initial_weights_to_evaluate_compare_and_resume(tiny, capsys):
    zero = trained(
        tiny, "zero", "--epochs", "0"
    )  # it said "done" and left no checkpoint: evaluate and resume refused it
    one = trained(tiny, "one")
    main(["evaluate", str(zero), "-k", "5", "--limit", "5", "--quiet"])
    main(["compare", str(zero), str(one), "--out", str(Path(tiny["runs_root"]) / "cmp")])
    main(["train", "--resume", str(zero), "--epochs", "1", "--quiet"])
    losses = [
        [
            m["train_loss"]
            for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "train_loss" in m
        ]
        for run in (zero, one)
    ]
    assert (
        losses[0] == losses[1] and len(losses[0]) == 1
    )  # resumed from its initial weights: the same epoch, to the bit


def test_a_refused_resume_releases_the_run(tiny):
    from pyro_vae import PyroVAEError, load_config, train
    from pyro_vae.runs.files import RunLock

    run = trained(tiny, "refused")
    damage_checkpoint(run, "model")
    with pytest.raises(PyroVAEError, match="it has no 'model'"):
        train(load_config(run / "config.toml"), run, resume=True, progress=False)
    RunLock(run).acquire().release()  # not held by the failed attempt
