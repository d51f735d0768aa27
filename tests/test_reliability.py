"""Bad input gets one clear line and exit status 2; faults lose nothing; resume is bit-identical."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_args

from pyro_vae.cli import main
from pyro_vae.datasets import DATASETS, ImageData, Split


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
    "unknown config key": (["--set", "train.nosuch=1"], "unknown key 'nosuch' in [train]; valid keys: epochs, batch_size"),
    "unknown prior": (["--prior", "vampire"], "unknown prior 'vampire'; valid choices: conditional_gaussian, flow"),
    "unknown likelihood": (["--likelihood", "mse"], "unknown likelihood 'mse'; valid choices: bernoulli"),
    "wrong value type": (["--set", "train.epochs=ten"], "train.epochs must be int, got 'ten'"),
    "non-positive learning rate": (["--lr", "-0.1"], "train.lr must be positive, got -0.1"),
    "non-positive batch size": (["--batch-size", "0"], "train.batch_size must be positive, got 0"),
    "non-positive latent size": (["--z-dim", "0"], "model.z_dim must be positive, got 0"),
    "missing data offline": (["--dataset", "mnist", "--data-root", "/nonexistent", "--set", "data.download=false"],
                             "mnist was not found under '/nonexistent'"),
    "images of the wrong size": (["--network", "conv"], "the conv network takes 28×28 images, got (1, 8, 8)"),
    "NaN pixels": (["--dataset", "test-nan-pixels"], "images contain NaN or infinite pixel values"),
    "pixels outside [0, 1]": (["--dataset", "test-out-of-range"], "pixel values must lie in [0, 1]"),
    "labels outside the classes": (["--dataset", "test-bad-labels"], "labels must lie in 0..2"),
    "conditional prior without labels": (["--prior", "conditional_gaussian"], "needs a conditional model"),
    "run name outside the runs root": (["--name", "../escape"], "must be letters, digits"),
    "existing run without --resume": (None, "exists; pass --resume"),
    "run folder that does not exist": ("evaluate /nonexistent/run", "run folder /nonexistent/run does not exist"),
    "folder that is not a run": ("evaluate {runs_root}", "is not a run folder: it has no config.toml"),
    "non-positive K": ("evaluate {run} -k 0", "--num-samples must be positive, got 0"),
    "truncated checkpoint": ("evaluate {run}", "is corrupt or truncated"),
    "checkpoint of another config": ("evaluate {run}", "was trained with model.z_dim = 2 but config.toml says 3"),
    "label for an unconditional model": ("sample {run} --label 1", "--label was given for an unconditional run"),
    "label outside the classes": ("sample {cvae} --label 9", "--label must lie in 0..3, got 9"),
    "resume that changes the model": ("train --resume {run} --prior mog", "can change only train.checkpoint_every, train.clip_norm, train.device, train.epochs"),
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
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyro-vae: error: ") and "Traceback" not in err
    assert message in err, err


def test_installed_entry_point_prints_no_traceback():
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--prior", "nope"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pyro-vae: error: unknown prior 'nope'; valid choices: conditional_gaussian, flow, gaussian, mog, "
        "standard_normal, vamp"
    ]
    debug = subprocess.run([sys.executable, "-m", "pyro_vae", "--debug", "train", "--prior", "nope"],
                           capture_output=True, text=True)
    assert "Traceback" in debug.stderr


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tiny, capsys, monkeypatch):
    from pyro_vae.trainer import Trainer

    folder = trained(tiny, "nan", "--set", "train.epochs=1")
    before = (folder / "checkpoint.pt").read_bytes()
    original = Trainer.train_step
    calls = []

    def failing_step(self, index):
        calls.append(1)
        return float("nan") if len(calls) == 2 else original(self, index)

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(folder), "--epochs", "2", "--quiet"])
    assert exit_info.value.code == 2
    assert "loss became nan at epoch 2 step 4; the last good checkpoint is kept" in capsys.readouterr().err
    assert (folder / "checkpoint.pt").read_bytes() == before


TRAIN = ["-m", "pyro_vae", "train", "--quiet", "--set", "data.name=synthetic", "--set", "data.train_per_class=400",
         "--set", "network.hidden=[64]", "--set", "model.z_dim=4", "--set", "train.batch_size=16",
         "--set", "train.epochs=3", "--device", "cpu"]


def final_parameters(folder):
    return torch.load(Path(folder) / "checkpoint.pt", weights_only=True)["model"]


def assert_same_parameters(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def start(runs_root, name, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, *TRAIN, "--runs-root", str(runs_root), "--name", name, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigint_mid_epoch_checkpoints_and_resumes_bit_identically(tmp_path):
    reference = start(tmp_path, "reference")
    interrupted = start(tmp_path, "interrupted")
    wait_for(tmp_path / "interrupted" / "metrics.jsonl")  # epoch 1 done: now inside epoch 2
    time.sleep(0.3)
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 128 + signal.SIGINT
    assert "SIGINT: stopped at epoch 2 step" in err and "resume with: pyro-vae train --resume" in err
    assert "Traceback" not in err
    state = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["position"] < 1600
    resumed = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--resume", str(tmp_path / "interrupted"),
                              "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.communicate(timeout=300) and reference.returncode == 0
    assert_same_parameters(final_parameters(tmp_path / "interrupted"), final_parameters(tmp_path / "reference"))


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
    main(cli_args("train", tiny, "--name", "keep", "--overwrite"))
    assert (folder / "notes.txt").read_text() == "mine"
