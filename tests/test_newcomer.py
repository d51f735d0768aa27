"""What a newcomer meets first: a version, the public API by name, a run exported as safetensors that every
reading command takes, whole config descriptions, and output that reads well in a log."""

import json
from pathlib import Path

import pytest
import torch
from conftest import cli_args

import pyro_vae
from pyro_vae import load_run
from pyro_vae.cli import main


def test_version_and_public_api(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro-vae {pyro_vae.__version__}"
    assert pyro_vae.__version__.count(".") == 2
    names = dir(pyro_vae)
    assert {"VAE", "train", "load_run", "importance_sample", "annealed_importance_sample", "__version__"} <= set(names)
    assert all(hasattr(pyro_vae, name) for name in names)
    changelog = (Path(__file__).parents[1] / "CHANGELOG.md").read_text()
    assert f"## [{pyro_vae.__version__}]" in changelog


def test_an_exported_run_is_read_as_the_run_and_cannot_resume(tiny, capsys):
    main(cli_args("train", tiny, "--name", "a"))
    run = Path(tiny["runs_root"]) / "a"
    main(["export", str(run)])
    out = run.with_name("a-export")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "config.toml",
        "metrics.jsonl",
        "model.safetensors",
    ]
    _, original = load_run(run)
    _, exported = load_run(out)
    assert original.state_dict().keys() == exported.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), exported.state_dict().values()))
    main(["sample", str(out), "-n", "4"])
    main(["evaluate", str(out), "-k", "10", "--limit", "5", "--quiet"])
    assert json.loads((out / "eval.json").read_text())["checkpoint"]["epoch"] == 1
    capsys.readouterr()
    for argv, message in (
        (["train", "--resume", str(out)], "is an exported run"),
        (["export", str(run)], "exists; pass overwrite=True (--overwrite)"),
        (["export", str(run), "--out", str(run)], "is the run folder itself"),
    ):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    main(["export", str(run), "--overwrite"])  # replaces the export, whose evaluation goes with it
    assert not (out / "eval.json").exists()


def test_configs_show_whole_descriptions(capsys):
    main(["configs"])
    out = capsys.readouterr().out
    assert "(3,280 passes). Dynamically binarized MNIST" in " ".join(out.split())


def test_training_output_in_a_log_has_a_line_per_epoch_and_no_bar(tiny, capsys):
    args = cli_args("train", tiny, "--name", "log", "--set", "train.epochs=2")
    args.remove("--quiet")
    main(args)
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err  # no bar redrawn into the log
    assert [line.split()[:2] for line in captured.out.splitlines() if line.startswith("epoch")] == [
        ["epoch", "1"],
        ["epoch", "2"],
    ]


def test_the_shipped_model_loads_samples_and_evaluates(tmp_path, capsys):
    """models/mnist-vae, copied away from the repository, works with the current code: weights that no longer
    fit the model would fail here."""
    shipped = Path(__file__).parents[1] / "models" / "mnist-vae"
    copy = tmp_path / "mnist-vae"
    copy.mkdir()
    for name in ("config.toml", "model.safetensors", "metrics.jsonl"):
        (copy / name).write_bytes((shipped / name).read_bytes())
    config, vae = load_run(copy)
    assert config.data.name == "mnist-5k" and vae.spec.z_dim == 50
    main(["sample", str(copy), "-n", "4"])
    main(["evaluate", str(copy), "-k", "20", "--limit", "20", "--quiet"])
    summary = json.loads((copy / "eval.json").read_text())
    assert -130 < summary["log_likelihood"] < -80  # a trained model, not random weights (about −550)


def test_every_public_name_and_method_has_a_docstring():
    """What the API reference renders: the public names and their public methods say what they compute."""
    import inspect

    missing = []
    for name in pyro_vae.__all__:
        obj = getattr(pyro_vae, name)
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj) and obj.__module__.startswith("pyro_vae"):
            for method, member in vars(obj).items():
                if callable(member) and not method.startswith("_") and not inspect.getdoc(member):
                    missing.append(f"{name}.{method}")
    assert not missing, f"no docstring: {missing}"
