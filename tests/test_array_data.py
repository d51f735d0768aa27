"""A user's own arrays as a dataset: every form the ``array`` dataset reads, through train, evaluate and
sample, and each bad file refused in one line that names it."""

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.runs.config import Component
from pyro_vae.runs.datasets import load_data

RNG = np.random.default_rng(0)


def saved(tmp_path, name, **arrays):
    """``arrays`` saved as tmp_path/name (.npy: the one array; .npz: by name)."""
    path = tmp_path / name
    if path.suffix == ".npy":
        np.save(path, next(iter(arrays.values())))
    else:
        np.savez(path, **arrays)
    return path


FORMS = {
    # name: (arrays, image shape, classes)
    "grey uint8 [N, H, W] of an odd size": ({"x": RNG.integers(0, 256, (30, 7, 5), dtype=np.uint8)}, (1, 7, 5), 1),
    "colour floats [N, H, W, C]": ({"x": RNG.random((30, 6, 6, 3), dtype=np.float32)}, (3, 6, 6), 1),
    "colour floats [N, C, H, W]": ({"x": RNG.random((30, 3, 6, 8))}, (3, 6, 8), 1),
    "points [N, D] with labels": ({"x": RNG.normal(size=(30, 4)), "labels": np.arange(30) % 3}, (4,), 3),
    "train and test arrays": (
        {
            "train": RNG.random((20, 5, 5)),
            "test": RNG.random((6, 5, 5)),
            "train_labels": np.arange(20) % 2,
            "test_labels": np.arange(6) % 2,
        },
        (1, 5, 5),
        2,
    ),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_form_loads_as_images_or_points(form, tmp_path):
    arrays, shape, classes = FORMS[form]
    path = saved(tmp_path, "data.npz", **arrays)
    data = load_data(Component("array", {"path": str(path)}))
    assert data.image_shape == shape and data.num_classes == classes
    if "train" in arrays:
        assert (len(data.train.images), len(data.test.images)) == (20, 6)
    else:  # a fixed tenth held out
        assert (len(data.train.images), len(data.test.images)) == (27, 3)
        again = load_data(Component("array", {"path": str(path)}))
        assert torch.equal(again.test.images, data.test.images)
    if len(shape) == 3:
        assert 0 <= data.train.images.min() and data.train.images.max() <= 1


def test_an_array_of_odd_images_trains_evaluates_and_samples(tmp_path):
    path = saved(tmp_path, "faces.npy", x=RNG.integers(0, 256, (40, 7, 5), dtype=np.uint8))
    runs = str(tmp_path / "runs")
    main(
        [
            "train",
            "--dataset",
            "array",
            "--set",
            f"data.path={path}",
            "--likelihood",
            "gaussian",
            "--z-dim",
            "2",
            "--set",
            "network.hidden=[8]",
            "--epochs",
            "1",
            "--quiet",
            "--runs-root",
            runs,
            "--name",
            "faces",
        ]
    )
    run = tmp_path / "runs" / "faces"
    main(["evaluate", str(run), "-k", "3", "--quiet"])
    main(["sample", str(run), "-n", "4"])
    assert (run / "eval.json").is_file() and (run / "samples-4.png").is_file()
    assert f'path = "{path}"' in (run / "config.toml").read_text()


BAD = {
    # name: (file name, arrays or raw bytes, the message)
    "no path": (None, None, "the array dataset reads the file that data.path names"),
    "missing file": ("absent.npy", None, "does not exist"),
    "not a NumPy file": ("junk.npy", b"not an array", "is not a NumPy .npy or .npz file"),
    "wrong rank": ("x.npy", {"x": np.zeros((2, 3, 4, 5, 6), np.float32)}, "has shape (2, 3, 4, 5, 6); give images"),
    "integers other than uint8": ("x.npy", {"x": np.zeros((4, 5, 5), np.int16)}, "holds int16 values"),
    "floats outside [0, 1]": ("x.npy", {"x": np.full((4, 5, 5), 255.0)}, "holds values in [255, 255]"),
    "NaN": ("x.npy", {"x": np.full((4, 5, 5), np.nan)}, "holds NaN or infinite values"),
    "labels of the wrong length": (
        "x.npz",
        {"x": np.zeros((4, 5, 5)), "labels": np.zeros(3, int)},
        "labels must be integers [4]",
    ),
    "labels that are floats": ("x.npz", {"x": np.zeros((4, 5, 5)), "labels": np.zeros(4)}, "got float64"),
    "channels second or last": ("x.npy", {"x": np.zeros((4, 3, 5, 3))}, "say which with data.layout=nchw"),
    "arrays of other names": ("x.npz", {"a": np.zeros((4, 5, 5)), "b": np.zeros(4)}, "name the data 'x'"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_array_is_one_line_and_makes_no_run(case, tmp_path, capsys):
    name, content, message = BAD[case]
    path = tmp_path / (name or "unused.npy")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        saved(tmp_path, name, **content)
    options = [] if name is None else ["--set", f"data.path={path}"]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "array", *options, "--quiet", "--runs-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("network", ["conv", "resconv"])
@pytest.mark.parametrize("shape", [(1, 28, 20), (3, 32, 32), (1, 7, 5), (3, 9, 64)])
def test_the_conv_networks_fit_any_image_shape(shape, network):
    """Its decoder gives one output per pixel and channel of any H × W, and one ELBO step runs."""
    import pyro
    from pyro.infer import Trace_ELBO

    from pyro_vae import load_config
    from pyro_vae.model.vae import build_vae

    config = load_config(
        None,
        [
            f"network.name={network}",
            "network.channels=4",
            "network.hidden=8",
            "model.z_dim=2",
            "likelihood.name=discretized_logistic",
        ],
    )
    vae = build_vae(config, shape, 1, "cpu")
    x = torch.rand(5, *shape).mul(255).round().div(255)
    assert vae.decoder(torch.zeros(5, 2)).shape == (5, 2, *shape)
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in vae.parameters() if p.requires_grad)
    pyro.clear_param_store()


@pytest.mark.parametrize("dataset, holds", [("cifar10", "cifar-10-batches-py"), ("svhn", "train_32x32.mat")])
def test_torchvision_colour_sets_not_on_disk_are_one_line(dataset, holds, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--dataset",
                dataset,
                "--data-root",
                str(tmp_path / "none"),
                "--set",
                "data.download=false",
                "--quiet",
                "--runs-root",
                str(tmp_path / "runs"),
            ]
        )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{dataset} was not found" in err and holds in err, err
    assert not (tmp_path / "none").exists() and not (tmp_path / "runs").exists()


def frey_like(tmp_path):
    return ["--set", f"data.path={saved(tmp_path, 'faces.npy', x=RNG.integers(0, 256, (50, 28, 20), dtype=np.uint8))}"]


def olivetti_like(tmp_path):
    faces = saved(tmp_path, "faces.npy", x=RNG.integers(0, 256, (30, 64, 64), dtype=np.uint8))
    labels = saved(tmp_path, "labels.npy", x=np.arange(30, dtype=np.uint8) % 3)
    return ["--set", f"data.path={faces}", "--set", f"data.label_file={labels}", "--set", "network.channels=2"]


def cifar_like(tmp_path):
    from PIL import Image

    for split, count in (("train", 8), ("test", 2)):
        for name in ("cat", "ship"):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "imgs" / split / name / f"{i}.jpg")
    return [
        "--data-root",
        str(tmp_path / "imgs"),
        "--set",
        "network.channels=2",
        "--set",
        "likelihood.num_components=2",
    ]


@pytest.mark.parametrize(
    "config, data", [("frey-vae", frey_like), ("olivetti-vae", olivetti_like), ("cifar10-vae", cifar_like)]
)
def test_the_face_and_colour_configs_train_and_evaluate_as_shipped(config, data, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    main(
        [
            "train",
            "--config",
            config,
            *data(tmp_path),
            "--epochs",
            "1",
            "--set",
            "train.batch_size=10",
            "--set",
            "network.hidden=" + ("[8]" if config == "frey-vae" else "8"),
            "--quiet",
            "--runs-root",
            str(tmp_path / "runs"),
            "--name",
            config,
        ]
    )
    run = tmp_path / "runs" / config
    main(["evaluate", str(run), "-k", "2", "--limit", "2", "--quiet"])
    assert (run / "eval.json").is_file() and (run / "samples.png").is_file()


def test_a_run_saved_with_the_earlier_labels_file_option_still_loads():
    """``data.labels = "FILE"`` (before ``data.labels`` counted the labels kept) reads as ``data.label_file``."""
    from pyro_vae.runs.config import config_from_dict

    config = config_from_dict({"data": {"name": "array", "path": "/x.npz", "labels": "/y.npy"}})
    assert config.data.options["label_file"] == "/y.npy" and config.data.options["labels"] == 0
