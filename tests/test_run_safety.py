"""Commands that share a run folder: locks, links, temporaries, what each result names, data that moved,
and the parts of a split that every command takes."""

import hashlib
import json
import os
import struct
import threading
from pathlib import Path

import pytest
import torch
from conftest import cli_args

from pyro_vae import PyroVAEError, load_config, train
from pyro_vae.cli import main
from pyro_vae.runs.config import Component
from pyro_vae.runs.datasets import balanced_order, load_data
from pyro_vae.runs.files import RunLock


def trained(tiny, name, *extra):
    main(cli_args("train", tiny, "--name", name, *extra))
    return Path(tiny["runs_root"]) / name


def test_every_result_names_the_checkpoint_it_was_computed_from(tiny):
    run = trained(tiny, "named", "--config", "mnist-cvae", "--set", "data.name=synthetic")
    main(["evaluate", str(run), "-k", "3", "--limit", "4", "--classify", "--classify-samples", "2", "--quiet"])
    main(["gradvar", str(run), "--draws", "2", "--examples", "2", "--quiet"])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    expected = {
        "epoch": state["epoch"],
        "step": state["step"],
        "sha256": hashlib.sha256((run / "checkpoint.pt").read_bytes()).hexdigest(),
    }
    for name in ("eval.json", "classify.json", "gradvar.json"):
        assert json.loads((run / name).read_text())["checkpoint"] == expected, name


def test_a_resume_removes_only_the_temporaries_of_the_runs_own_files(tiny):
    run = trained(tiny, "torn")
    torn, foreign = run / ".checkpoint.pt.abcd1234.tmp", run / ".notes.txt.abcd1234.tmp"
    torn.write_bytes(b"half a checkpoint")
    foreign.write_text("the user's")
    main(["train", "--resume", str(run), "--epochs", "2", "--quiet"])
    assert not torn.exists() and foreign.read_text() == "the user's"


def test_a_reader_keeps_its_run_and_its_temporaries_from_a_resume(tiny, capsys):
    """A sample still writing (its shared lock held, its temporary on disk): train --resume is refused and
    leaves the temporary alone."""
    run = trained(tiny, "read")
    writing = run / ".samples-64.png.abcd1234.tmp"
    writing.write_bytes(b"being written")
    reader = RunLock(run, shared=True).acquire()
    try:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["train", "--resume", str(run), "--epochs", "2", "--quiet"])
        assert "is in use by a command that reads it" in capsys.readouterr().err
        assert writing.read_bytes() == b"being written"
        RunLock(run, shared=True).acquire().release()  # readers share the run
    finally:
        reader.release()


def test_a_samples_file_says_its_label(tiny, capsys):
    run = trained(tiny, "labels", "--config", "mnist-cvae", "--set", "data.name=synthetic")
    main(["sample", str(run), "-n", "8", "--label", "2"])
    main(["sample", str(run), "-n", "8"])
    assert (run / "samples-8-label2.png").is_file() and (run / "samples-8.png").is_file()


def write_idx(path, array):
    """``array`` (uint8) as an idx file, the format torchvision's MNIST reads."""
    path.write_bytes(
        b"\0\0\x08" + bytes([array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape) + array.numpy().tobytes()
    )


def tiny_mnist(root):
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(
            raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        )
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (torch.arange(n) % 10).to(torch.uint8))


def test_a_run_stores_its_data_root_absolute_and_follows_moved_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_mnist(tmp_path / "data")
    base = [
        "--dataset",
        "mnist",
        "--data-root",
        "data",
        "--set",
        "data.download=false",
        "--set",
        "network.hidden=[8]",
        "--z-dim",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--quiet",
        "--runs-root",
        "runs",
        "--name",
        "moved",
    ]
    main(["train", *base])
    run = tmp_path / "runs" / "moved"
    assert f'root = "{tmp_path / "data"}"' in (run / "config.toml").read_text()
    (tmp_path / "data").rename(tmp_path / "elsewhere")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "-k", "2", "--quiet"])
    assert "point --data-root at a folder" in capsys.readouterr().err
    main(["evaluate", str(run), "-k", "2", "--quiet", "--data-root", str(tmp_path / "elsewhere")])
    main(["train", "--resume", str(run), "--epochs", "2", "--quiet", "--data-root", str(tmp_path / "elsewhere")])
    assert f'root = "{tmp_path / "elsewhere"}"' in (run / "config.toml").read_text()
    os.chdir("/")  # another working folder: the stored root still finds the data
    main(["evaluate", str(run), "-k", "2", "--quiet"])


def test_the_python_api_checks_what_it_is_given(tmp_path):
    with pytest.raises(PyroVAEError, match="train takes a Config"):
        train("mnist-vae", tmp_path / "run")
    config = load_config(None, ["data.name=synthetic", "network.hidden=[8]", "model.z_dim=2"])
    config.train.epochs = -3
    with pytest.raises(PyroVAEError, match="train.epochs must be zero or more, got -3"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_training_from_another_thread_works(tmp_path):
    """Signals reach the main thread only: a trainer in another thread leaves them alone."""
    config = load_config(None, ["data.name=synthetic", "network.hidden=[8]", "model.z_dim=2", "train.epochs=1"])
    errors = []

    def run():
        try:
            train(config, tmp_path / "run", progress=False)
        except Exception as e:  # reported below, in the test's own thread
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors and (tmp_path / "run" / "checkpoint.pt").is_file()


def test_every_prefix_of_a_split_is_class_balanced_and_fixed():
    data = load_data(Component("mnist-5k", {"test_size": 1000}))
    for n in (10, 100, 200):
        assert torch.bincount(data.test.labels[:n], minlength=10).tolist() == [n // 10] * 10
    again = load_data(Component("mnist-5k", {"test_size": 1000}))
    assert torch.equal(again.test.images, data.test.images)
    labels = torch.tensor([2, 2, 2, 2, 0, 1, 1])
    order = balanced_order(labels, 3)
    assert sorted(order.tolist()) == list(range(7)) and labels[order[:3]].sort().values.tolist() == [0, 1, 2]


def test_evaluate_limit_takes_a_balanced_part(tiny):
    run = trained(tiny, "balanced")
    main(["evaluate", str(run), "-k", "2", "--limit", "8", "--quiet"])
    rows = (run / "eval_examples.csv").read_text().splitlines()[1:]
    assert sorted(int(row.split(",")[1]) for row in rows) == [0, 0, 1, 1, 2, 2, 3, 3]
