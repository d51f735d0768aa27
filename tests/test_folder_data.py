"""A user's own folder of images as a dataset: the layouts it reads, its options, its cache, a colour run
through train, evaluate and sample, and each bad folder refused in one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae.cli import main
from pyro_vae.errors import PyroVAEError
from pyro_vae.runs.config import Component
from pyro_vae.runs.datasets import cache_folder, load_data

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write_images(folder, count, size=(6, 5), mode="RGB", suffix=".png"):
    """``count`` random images of ``size`` (H, W) in ``mode`` written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1}[mode]
    for i in range(count):
        pixels = RNG.integers(0, 256, (*size, channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(folder / f"{i:03d}{suffix}")


def load(root, **options):
    return load_data(Component("folder", {"root": str(root), **options}))


def test_train_and_test_class_folders_give_labelled_splits(tmp_path):
    for split, count in (("train", 6), ("test", 2)):
        for name in ("cat", "dog", "emu"):
            write_images(tmp_path / split / name, count)
    data = load(tmp_path)
    assert data.image_shape == (3, 6, 5) and data.num_classes == 3
    assert (len(data.train.images), len(data.test.images)) == (18, 6)
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    png = np.array(Image.open(tmp_path / "test" / "dog" / "000.png"))  # the pixels as stored, in [0, 1]
    assert any(torch.equal(image, torch.from_numpy(png).permute(2, 0, 1).float() / 255) for image in data.test.images)


def test_one_folder_of_grey_images_holds_out_a_fixed_fraction_unlabelled(tmp_path):
    write_images(tmp_path / "faces", 20, size=(7, 4), mode="L", suffix=".jpg")
    data = load(tmp_path / "faces", test_fraction=0.25)
    assert data.image_shape == (1, 7, 4) and data.num_classes == 1
    assert (len(data.train.images), len(data.test.images)) == (15, 5)
    assert torch.equal(load(tmp_path / "faces", test_fraction=0.25).test.images, data.test.images)


def test_size_channels_and_crop_options(tmp_path):
    write_images(tmp_path / "mixed", 3, size=(8, 6))
    Image.fromarray(RNG.integers(0, 256, (10, 12), dtype=np.uint8), "L").save(tmp_path / "mixed" / "wide.png")
    data = load(tmp_path / "mixed", size=[4, 4], channels="grey", fit="crop", test_fraction=0.25)
    assert data.image_shape == (1, 4, 4)
    assert load(tmp_path / "mixed", size=[5, 3], test_fraction=0.25).image_shape == (3, 5, 3)  # auto: one is RGB


def test_a_folder_is_decoded_once_and_read_from_the_cache(tmp_path):
    write_images(tmp_path / "imgs", 10)
    first = load(tmp_path / "imgs")
    cached = list(cache_folder().glob("folder-*.npz"))
    assert len(cached) == 1
    (tmp_path / "imgs" / "000.png").touch()  # a changed file is another key: decoded again
    again = load(tmp_path / "imgs")
    assert torch.equal(again.train.images, first.train.images) and len(list(cache_folder().glob("*.npz"))) == 2
    assert len(load(tmp_path / "imgs", cache=False).train.images) == 9


def test_a_colour_folder_trains_evaluates_and_samples(tmp_path):
    for name in ("a", "b"):
        write_images(tmp_path / "data" / name, 12, size=(9, 7))
    runs = str(tmp_path / "runs")
    common = ["--z-dim", "2", "--set", "network.hidden=[8]", "--epochs", "1", "--quiet", "--runs-root", runs]
    main(
        [
            "train",
            "--dataset",
            "folder",
            "--data-root",
            str(tmp_path / "data"),
            "--likelihood",
            "discretized_logistic",
            "--name",
            "colour",
            *common,
        ]
    )
    run = tmp_path / "runs" / "colour"
    main(["evaluate", str(run), "-k", "3", "--quiet"])
    main(["sample", str(run), "-n", "4"])
    summary = (run / "eval.json").read_text()
    assert '"bits_per_dim"' in summary and (run / "samples-4.png").is_file() and (run / "reconstructions.png").is_file()


BAD = {
    # name: (setup(tmp) → root, extra flags, the message)
    "missing folder": (lambda tmp: tmp / "absent", [], "is missing"),
    "empty folder": (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", [], "holds no image files"),
    "mixed sizes without data.size": (
        lambda tmp: (
            (write_images(tmp / "m", 2, size=(5, 5)), Image.new("RGB", (7, 3)).save(tmp / "m" / "z.png"))[0]
            or tmp / "m"
        ),
        [],
        "holds images of 2 sizes",
    ),
    "a damaged image": (
        lambda tmp: (write_images(tmp / "d", 3), (tmp / "d" / "bad.png").write_bytes(b"no png"))[0] or tmp / "d",
        [],
        "bad.png is not an image Pillow can read",
    ),
    "train and test of other classes": (
        lambda tmp: (
            (write_images(tmp / "s" / "train" / "a", 2), write_images(tmp / "s" / "test" / "b", 2))[0] or tmp / "s"
        ),
        [],
        "train/ has classes ['a'] but test/ has ['b']",
    ),
    "no test split and no fraction": (
        lambda tmp: write_images(tmp / "f", 4) or tmp / "f",
        ["--set", "data.test_fraction=0"],
        "leaves no test or no training image",
    ),
    "binarized colour": (
        lambda tmp: write_images(tmp / "c", 10) or tmp / "c",
        ["--likelihood", "bernoulli"],
        "holds images of 3 channels, which the bernoulli likelihood cannot score",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_folder_is_one_line_and_makes_no_run(case, tmp_path, capsys):
    setup, extra, message = BAD[case]
    root = setup(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--dataset",
                "folder",
                "--data-root",
                str(root),
                *extra,
                "--quiet",
                "--runs-root",
                str(tmp_path / "runs"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_parity_trains_a_colour_conv_vae_beside_its_plain_pytorch_loop(tmp_path):
    """The plain loop scores any likelihood from its torch distribution: a colour folder through the
    residual conv network and the discretized logistic mixture, the same test ELBO within noise."""
    import json

    for split, count in (("train", 20), ("test", 5)):
        for name in ("a", "b"):
            write_images(tmp_path / "imgs" / split / name, count, size=(8, 8))
    out = tmp_path / "parity.json"
    main(
        [
            "bench",
            "--parity",
            "2",
            "--config",
            "cifar10-vae",
            "--set",
            f"data.root={tmp_path / 'imgs'}",
            "--set",
            "network.channels=4",
            "--set",
            "network.blocks=1",
            "--set",
            "network.hidden=16",
            "--set",
            "model.z_dim=4",
            "--set",
            "likelihood.num_components=2",
            "--set",
            "train.batch_size=10",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert abs(result["elbo_difference"]) < 0.02 * abs(result["plain_test_elbo"]), result


def fake_celeba(root, n=6):
    """A CelebA of ``n`` faces in torchvision's layout: faces 0–3 train (partition 0), 4 validation, 5 test."""
    from PIL import Image

    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        Image.fromarray(np.full((218, 178, 3), 40 * i, dtype=np.uint8)).save(folder / "img_align_celeba" / name)
    parts = ["0", "0", "0", "0", "1", "2"]
    (folder / "list_eval_partition.txt").write_text("".join(f"{a} {b}\n" for a, b in zip(names, parts)))
    attributes = [f"A{k}" for k in range(39)] + ["Smiling"]
    rows = [f"{name} " + " ".join(["-1"] * 39 + ["1" if i % 2 else "-1"]) for i, name in enumerate(names)]
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(attributes) + "\n" + "\n".join(rows) + "\n")


def test_celeba_by_name_reads_torchvisions_layout_cropped_and_labelled(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake_celeba(tmp_path)
    data = load_data(Component("celeba", {"root": str(tmp_path), "size": [16, 16], "attribute": "Smiling"}))
    assert data.image_shape == (3, 16, 16) and (len(data.train.images), len(data.test.images)) == (4, 1)
    assert data.num_classes == 2 and sorted(data.train.labels.tolist()) == [0, 0, 1, 1]
    unlabelled = load_data(Component("celeba", {"root": str(tmp_path), "size": [16, 16]}))
    assert unlabelled.num_classes == 1
    with pytest.raises(PyroVAEError, match="'Frowning' is not a CelebA attribute"):
        load_data(Component("celeba", {"root": str(tmp_path), "attribute": "Frowning"}))
    with pytest.raises(PyroVAEError, match="list_eval_partition.txt is missing"):
        load_data(Component("celeba", {"root": str(tmp_path / "nowhere")}))
