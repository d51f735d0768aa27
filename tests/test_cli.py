"""The command line end to end on tiny runs: train, resume, evaluate, sample, CVAE, every component."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cli_args

from pyro_vae.cli import main
from pyro_vae.model.likelihoods import LIKELIHOODS
from pyro_vae.model.priors import PRIORS

RUN_FILES = {
    "config.toml",
    "checkpoint.pt",
    "metrics.jsonl",
    "loss.png",
    "reconstructions.png",
    "samples.png",
    "interpolations.png",
    "latent.png",
    "manifold.png",
}


def run_dir(tiny, name):
    return Path(tiny["runs_root"]) / name


def test_train_writes_a_complete_run_and_resume_continues(tiny):
    main(cli_args("train", tiny, "--name", "a", "--set", "train.epochs=2"))
    folder = run_dir(tiny, "a")
    assert RUN_FILES <= {p.name for p in folder.iterdir()}
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) == {"epoch", "step", "train_loss", "lr", "test_elbo", "test_examples", "seconds"}
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 4
    main(["train", "--resume", str(folder), "--epochs", "3", "--quiet"])
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if "train_loss" in m] == [1, 2, 3] and metrics[-1]["step"] == 6
    assert metrics[2] == {"event": "resume", "epoch": 2, "step": 4, "changed": {"train.epochs": [2, 3]}}
    assert "epochs = 3" in (folder / "config.toml").read_text()


def test_evaluate_compiles_only_what_reproduces_the_eager_estimates_and_no_jit_turns_it_off(tiny, capsys):
    main(cli_args("train", tiny, "--name", "j"))
    folder = run_dir(tiny, "j")
    tables, compiled = [], []
    for flags in ([], ["--no-jit"], ["--compile"]):  # 30 examples × 10 chunks: JIT by default, eager with --no-jit
        main(["evaluate", str(folder), "-k", "50", "--limit", "30", "--chunk-size", "5", "--quiet", *flags])
        tables.append(read_examples(folder / "eval_examples.csv"))
        compiled.append(json.loads((folder / "eval.json").read_text())["compiled"])
    assert torch.equal(tables[0], tables[1]) and compiled == [False, False, True]
    # inductor's graph draws the same samples; its fused sums round differently, in float32's last digits
    assert not torch.equal(tables[2], tables[1])
    eager, inductor = tables[1], tables[2]  # columns: index, label, log p(x), ELBO, ESS, stderr, k̂
    assert torch.allclose(inductor[:, :4], eager[:, :4], rtol=1e-6)
    assert torch.allclose(inductor[:, 4:6], eager[:, 4:6], rtol=1e-4)
    assert torch.allclose(inductor[:, 6], eager[:, 6], atol=1e-2)  # the Pareto fit moves most
    assert "compile" not in capsys.readouterr().err  # no fall-back warning
    for flags, clash in (
        (["--no-jit"], "--no-jit"),
        (["--refine", "2"], "--refine"),
        (["--method", "ais"], "--method ais"),
    ):
        with pytest.raises(SystemExit) as exit:
            main(["evaluate", str(folder), "-k", "5", "--limit", "3", "--quiet", "--compile", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit.value.code == 2 and len(err) == 1 and "--compile compiles" in err[0] and clash in err[0]


def test_evaluate_compiles_by_itself_from_enough_importance_weights(tiny, capsys, monkeypatch):
    """30 examples at K = 50 draw 1,500 weights; with the threshold there, the default compiles as --compile does,
    and tells; one example fewer, --no-compile or --no-jit do not."""
    monkeypatch.setattr("pyro_vae.report.evaluation.COMPILE_FROM_WEIGHTS", 1500)
    main(cli_args("train", tiny, "--name", "auto"))
    folder = run_dir(tiny, "auto")
    capsys.readouterr()
    tables, compiled, said = [], [], []
    for flags in (["--compile"], [], ["--limit", "29"], ["--no-compile"], ["--no-jit"]):
        main(["evaluate", str(folder), "-k", "50", "--limit", "30", "--chunk-size", "5", *flags])
        tables.append(read_examples(folder / "eval_examples.csv"))
        compiled.append(json.loads((folder / "eval.json").read_text())["compiled"])
        out = capsys.readouterr().out
        said.append("compile = auto: 1,500 importance weights, so the log-weights are compiled by inductor" in out)
    assert compiled == [True, True, False, False, False] and said == [False, True, False, False, False]
    assert torch.equal(tables[1], tables[0])  # the same graphs, the same estimates
    assert torch.equal(tables[3][:29], tables[2]) and not torch.equal(tables[3], tables[0])  # the JIT's, bit for bit


def read_examples(path):
    """eval_examples.csv's numeric columns as a float64 tensor [examples, columns]."""
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return torch.tensor([[float(value) for value in row] for row in rows], dtype=torch.float64)


def test_evaluate_and_sample(tiny, capsys):
    main(cli_args("train", tiny, "--name", "e"))
    folder = run_dir(tiny, "e")
    main(["evaluate", str(folder), "-k", "50", "--limit", "30", "--batch-size", "16", "--quiet"])
    summary = json.loads((folder / "eval.json").read_text())
    assert {
        "num_examples",
        "num_samples",
        "elbo",
        "log_likelihood",
        "log_likelihood_stderr",
        "bits_per_dim",
        "seconds",
    } <= set(summary)
    assert summary["num_examples"] == 30 and summary["num_samples"] == 50
    assert summary["log_likelihood"] >= summary["elbo"] - 3 * summary["log_likelihood_stderr"]
    rows = (folder / "eval_examples.csv").read_text().splitlines()
    assert rows[0] == "index,label,log_likelihood,elbo,ess,stderr,pareto_k" and len(rows) == 31
    assert (folder / "eval_vs_k.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "mean log p(x)" in out and "bits per dim" in out
    estimates = {}
    for seed in (0, 1, 0):  # --seed chooses the draws; the same seed repeats them
        main(["evaluate", str(folder), "-k", "50", "--limit", "5", "--seed", str(seed), "--quiet"])
        estimates.setdefault(seed, []).append((folder / "eval_examples.csv").read_text())
    assert estimates[0][0] == estimates[0][1] != estimates[1][0]
    # each evaluation with other settings was kept under a name that says them; the latest is eval.json
    assert json.loads((folder / "eval-k50-n30-seed0.json").read_text())["num_examples"] == 30
    assert (folder / "eval-k50-n5-seed1_examples.csv").read_text() == estimates[1][0]
    assert sorted(p.name for p in folder.glob("eval*.json")) == [
        "eval-k50-n30-seed0.json",
        "eval-k50-n5-seed0.json",
        "eval-k50-n5-seed1.json",
        "eval.json",
    ]
    assert json.loads((folder / "eval.json").read_text())["seed"] == 0
    assert (
        "kept the earlier evaluation, made with other settings, as eval-k50-n5-seed1.json, "
        "eval-k50-n5-seed1_examples.csv, eval-k50-n5-seed1_vs_k.png"
    ) in capsys.readouterr().out
    main(["sample", str(folder), "-n", "9", "--out", str(folder / "nine.png")])
    assert (folder / "nine.png").stat().st_size > 0


def test_conditional_run_class_grid_log_p_x_given_y_and_classifier(tiny, capsys):
    main(cli_args("train", tiny, "--name", "c", "--config", "mnist-cvae", "--set", "data.name=synthetic"))
    folder = run_dir(tiny, "c")
    assert {"class_grid.png", "class_samples.png"} <= {p.name for p in folder.iterdir()}
    main(["evaluate", str(folder), "-k", "20", "--limit", "20", "--classify", "--classify-samples", "10", "--quiet"])
    assert json.loads((folder / "eval.json").read_text())["conditional"] is True
    classified = json.loads((folder / "classify.json").read_text())
    assert classified["num_examples"] == 20 and 0 <= classified["accuracy"] <= 1
    assert (folder / "confusion.png").stat().st_size > 0
    assert "log p(x|y)" in capsys.readouterr().out
    main(
        [
            "evaluate",
            str(folder),
            "-k",
            "20",
            "--limit",
            "10",
            "--split",
            "train",
            "--classify",
            "--classify-samples",
            "10",
            "--quiet",
        ]
    )  # the train split: eval-synthetic-train.json beside eval.json; the test split's classification kept
    assert json.loads((folder / "classify.json").read_text())["split"] == "train"
    assert json.loads((folder / "classify-test-k10-n20.json").read_text()) == classified
    assert (folder / "confusion-test-k10-n20.png").is_file() and (folder / "eval.json").is_file()
    assert "as classify-test-k10-n20.json, confusion-test-k10-n20.png" in capsys.readouterr().out
    main(["sample", str(folder), "-n", "8", "--label", "2"])
    assert (folder / "samples-8-label2.png").exists()


@pytest.mark.parametrize("prior", [p for p in PRIORS.names() if not PRIORS.get(p).conditional])
def test_every_prior_trains_and_evaluates(tiny, prior):
    main(cli_args("train", tiny, "--name", prior, "--prior", prior, "--set", "prior.name=" + prior))
    main(["evaluate", str(run_dir(tiny, prior)), "-k", "10", "--limit", "10", "--quiet"])
    assert json.loads((run_dir(tiny, prior) / "eval.json").read_text())["prior"] == prior


@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
def test_every_likelihood_trains_and_evaluates(tiny, likelihood):
    main(cli_args("train", tiny, "--name", likelihood, "--likelihood", likelihood))
    main(["evaluate", str(run_dir(tiny, likelihood)), "-k", "10", "--limit", "10", "--quiet"])
    summary = json.loads((run_dir(tiny, likelihood) / "eval.json").read_text())
    assert (summary["bits_per_dim"] is None) == (not LIKELIHOODS.get(likelihood).discrete)


@pytest.mark.parametrize(
    "config, network", [("mnist-conv", ["network.hidden=16", "network.channels=4"]), ("mnist-iwae", [])]
)
def test_conv_network_and_iwae_objective(tiny, config, network):
    extra = [
        arg
        for override in ["data.name=synthetic", "data.size=28", "data.train_per_class=20", *network]
        for arg in ("--set", override)
    ]
    main(cli_args("train", tiny, "--name", config, "--config", config, *extra))
    main(["evaluate", str(run_dir(tiny, config)), "-k", "5", "--limit", "5", "--quiet"])
    summary = json.loads((run_dir(tiny, config) / "eval.json").read_text())
    metrics = [json.loads(line) for line in (run_dir(tiny, config) / "metrics.jsonl").read_text().splitlines()]
    assert summary["num_examples"] == 5 and summary["num_samples"] == 5
    assert math.isfinite(summary["log_likelihood"]) and summary["log_likelihood"] >= summary["elbo"] - 1e-6
    assert math.isfinite(metrics[-1]["test_elbo"]) and (run_dir(tiny, config) / "samples.png").is_file()


def test_offline_default_dataset_trains(tiny):
    main(
        [
            "train",
            "--runs-root",
            tiny["runs_root"],
            "--name",
            "d",
            "--quiet",
            "--set",
            "network.hidden=[8]",
            "--set",
            "train.batch_size=2000",
            "--epochs",
            "1",
        ]
    )
    assert run_dir(tiny, "d").joinpath("checkpoint.pt").exists()


def test_configs_lists_bundled_configs(capsys):
    main(["configs"])
    out = capsys.readouterr().out
    assert "mnist-vae" in out and "mnist-vamp" in out and "mnist-cvae" in out


@pytest.mark.parametrize("conditional", [False, True])
def test_two_stochastic_layers_train_resume_evaluate_sample_and_draw(tiny, capsys, conditional):
    tiny["set"] += ["model.layers=[4]", "model.layer_hidden=[8]"]
    extra = ["--conditional"] if conditional else []
    main(cli_args("train", tiny, "--name", "deep", *extra))
    folder = Path(tiny["runs_root"]) / "deep"
    main(["train", "--resume", str(folder), "--epochs", "2", "--quiet"])
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and any(key.startswith("up.0.") for key in state["model"])
    for picture in ("loss", "reconstructions", "interpolations", "latent", "class_grid" if conditional else "samples"):
        assert (folder / f"{picture}.png").is_file(), picture
    main(["evaluate", str(folder), "-k", "20", "--limit", "10", "--quiet"])
    summary = json.loads((folder / "eval.json").read_text())
    assert summary["log_likelihood"] >= summary["elbo"]  # log mean w ≥ mean log w, example by example
    main(["sample", str(folder), "-n", "4"])
    assert (folder / "samples-4.png").is_file()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("objective.name=mean_field", "objective mean_field takes each layer's KL in closed form"),
        ("prior.name=vamp", "it needs one stochastic layer"),
        ("model.layers=[0]", "model.layers must be positive, got 0"),
    ],
)
def test_hierarchies_refuse_what_they_cannot_do_in_one_line(tiny, capsys, setting, message):
    tiny["set"] += ["model.layers=[4]", setting]
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("train", tiny, "--name", "refused"))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (Path(tiny["runs_root"]) / "refused").exists()


def test_compare_names_exactly_what_differs_and_draws_the_runs_side_by_side(tiny, capsys, tmp_path):
    main(cli_args("train", tiny, "--name", "plain"))
    main(cli_args("train", tiny, "--name", "mog", "--set", "prior.name=mog", "--set", "train.lr=0.002"))
    root = Path(tiny["runs_root"])
    main(["evaluate", str(root / "mog"), "-k", "20", "--limit", "10", "--quiet"])
    main(["compare", str(root / "plain"), str(root / "mog"), "--out", str(tmp_path / "cmp")])
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    settings = [line.split("|")[1].strip() for line in markdown.splitlines()[2:] if "." in line.split("|")[1]]
    assert settings == ["prior.name", "prior.num_components", "train.lr"]
    assert "| test codes in p(z)'s 95% region |" in markdown
    assert "| prior.name | standard_normal | mog |" in markdown and "| K, examples | — | 20, 10 |" in markdown
    for picture in ("loss.png", "samples.png", "latent.png"):
        assert (tmp_path / "cmp" / picture).stat().st_size > 0
    assert "final test ELBO" in capsys.readouterr().out


def test_compare_says_above_the_table_where_the_figures_do_not_compare(tiny, capsys, tmp_path):
    from pyro_vae.report.compare import caveats

    assert (
        caveats(
            [
                ("prior.name", ["standard_normal", "mog"]),
                ("data.root", ["data", "../shared/data"]),
                ("K, examples", ["20, 10", "20, 10"]),
            ]
        )
        == []
    )
    notes = caveats([("data.name", ["mnist-5k", "ring"]), ("K, examples", ["20, 10", None, "5000, 10"])])
    assert notes[0].startswith("the runs are tested on different data (data.name differ)")
    assert notes[1].startswith(
        "log p(x) was estimated with other K or on other test examples (K, examples: 20, 10; 5000, 10)"
    )
    main(cli_args("train", tiny, "--name", "bernoulli"))
    main(cli_args("train", tiny, "--name", "gaussian", "--likelihood", "gaussian"))
    root = Path(tiny["runs_root"])
    main(["compare", str(root / "bernoulli"), str(root / "gaussian"), "--out", str(tmp_path / "cmp")])
    note = (
        "Note: the runs' likelihoods differ (bernoulli, gaussian): each scores its own kind of x, so their ELBOs "
        "and log p(x) do not compare.\n"
    )
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith(note + "\n|  | bernoulli | gaussian |")
    assert (tmp_path / "cmp" / "compare.txt").read_text().startswith(note) and note in capsys.readouterr().out


def test_compare_refuses_a_single_run_or_a_folder_that_is_no_run(tiny, capsys, tmp_path):
    main(cli_args("train", tiny, "--name", "one"))
    one = str(Path(tiny["runs_root"]) / "one")
    for runs, message in (
        ([one], "compare needs two runs or more"),
        ([one, str(tmp_path)], "is not a run folder"),
        ([one, one + "/../one"], "is given twice"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", *runs, "--out", str(tmp_path / "cmp")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_compare_replaces_only_an_earlier_comparison(tiny, capsys, tmp_path):
    main(cli_args("train", tiny, "--name", "one"))
    main(cli_args("train", tiny, "--name", "two", "--seed", "1"))
    runs = [str(Path(tiny["runs_root"]) / name) for name in ("one", "two")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "loss.png").write_text("the user's picture")
    pictures = {p: p.read_bytes() for p in Path(runs[0]).glob("*.png")}
    for out, message in (
        (runs[0], "is a run folder, whose own pictures compare would replace"),
        (mine, "holds loss.png that compare would replace and is not an earlier comparison"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", *runs, "--out", str(out)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert (mine / "loss.png").read_text() == "the user's picture" and not (mine / "compare.md").exists()
    assert {p: p.read_bytes() for p in Path(runs[0]).glob("*.png")} == pictures
    earlier = tmp_path / "cmp"  # an earlier comparison of image-completion runs: its picture does not outlive it
    earlier.mkdir()
    (earlier / "compare.md").write_text("earlier")
    (earlier / "completions.png").write_text("earlier")
    main(["compare", *runs, "--out", str(earlier)])
    assert sorted(p.name for p in earlier.iterdir()) == [
        "compare.md",
        "compare.txt",
        "latent.png",
        "loss.png",
        "samples.png",
    ]
    assert capsys.readouterr().out.endswith("loss.png, samples.png, latent.png\n")


def test_tensorboard_logs_the_scalars_pictures_and_config(tiny):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    main(
        cli_args(
            "train",
            tiny,
            "--name",
            "board",
            "--set",
            "train.tensorboard=true",
            "--set",
            "train.epochs=3",
            "--set",
            "train.tensorboard_images_every=2",
        )
    )
    folder = Path(tiny["runs_root"]) / "board"
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"images": 0}).Reload()
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([m["train_loss"] for m in metrics])
    assert [e.value for e in events.Scalars("test/elbo")] == pytest.approx([m["test_elbo"] for m in metrics])
    parts = zip(events.Scalars("test/reconstruction"), events.Scalars("test/kl"), events.Scalars("test/elbo"))
    assert all(r.value - k.value == pytest.approx(e.value, abs=1e-3) and k.value > 0 for r, k, e in parts)
    assert {"train/lr", "train/beta"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Images("samples")] == [2, 3]  # every 2 epochs and after the last
    assert "[train]" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def test_tensorboard_without_the_extra_is_one_line_naming_the_install(tiny, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("train", tiny, "--name", "noboard", "--set", "train.tensorboard=true"))
    assert exit_info.value.code == 2
    assert 'train.tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"' in capsys.readouterr().err
    assert not (Path(tiny["runs_root"]) / "noboard").exists()


def test_a_score_function_run_trains_and_refuses_objectives_that_need_reparameterization(tiny, capsys):
    main(cli_args("train", tiny, "--name", "sf", "--set", "model.reparameterize=false"))
    metrics = json.loads((Path(tiny["runs_root"]) / "sf" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["test_elbo"] < 0
    with pytest.raises(SystemExit) as exit_info:
        main(
            cli_args(
                "train",
                tiny,
                "--name",
                "sf2",
                "--set",
                "model.reparameterize=false",
                "--set",
                "objective.name=mean_field",
            )
        )
    assert exit_info.value.code == 2 and "objective mean_field needs a reparameterized guide" in capsys.readouterr().err


RING = [
    "--config",
    "ring",
    "--set",
    "data.train_size=1000",
    "--set",
    "data.test_size=200",
    "--set",
    "train.epochs=40",
    "--set",
    "network.hidden=[32, 32]",
]


def test_doersch_ring_trains_evaluates_compares_and_its_decoder_maps_the_prior_onto_the_ring(tmp_path, capsys):
    """Points in ℝ² through the same registries: the decoder's means g(z), z ~ N(0, I), land on the ring
    (radius 1 to about 1.3), where the untrained decoder's lie near the origin."""
    from pyro_vae import load_run

    root = tmp_path / "runs"
    main(["train", "--runs-root", str(root), "--name", "ring", "--quiet", *RING])
    folder = root / "ring"
    assert {"loss.png", "samples.png", "latent.png", "manifold.png"} <= {p.name for p in folder.iterdir()}
    _, vae = load_run(folder)
    torch.manual_seed(0)
    radius = vae.sample(2000).norm(dim=-1)
    assert 0.9 < radius.median() < 1.3, radius.median()
    main(["evaluate", str(folder), "-k", "50", "--quiet"])
    summary = json.loads((folder / "eval.json").read_text())
    assert summary["bits_per_dim"] is None and summary["log_likelihood"] > summary["elbo"]
    main(["sample", str(folder), "-n", "5", "--out", str(folder / "five.npy")])
    assert tuple(__import__("numpy").load(folder / "five.npy").shape) == (5, 2)
    main(
        [
            "train",
            "--runs-root",
            str(root),
            "--name",
            "ring-laplace",
            "--quiet",
            *RING,
            "--set",
            "train.epochs=1",
            "--likelihood",
            "laplace",
        ]
    )
    main(["compare", str(folder), str(root / "ring-laplace"), "--out", str(tmp_path / "cmp")])
    assert "| likelihood.name | gaussian | laplace |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_likelihood_of_grey_levels_is_refused_for_points(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--runs-root",
                str(tmp_path),
                "--name",
                "r",
                "--quiet",
                "--config",
                "ring",
                "--likelihood",
                "bernoulli",
            ]
        )
    error = capsys.readouterr().err
    assert (
        exit_info.value.code == 2 and "ring holds points in ℝ^2, which the bernoulli likelihood cannot score" in error
    )
    assert "use gaussian or laplace" in error and not (tmp_path / "r").exists()


def test_the_ring_density_is_normalized():
    """∫ p(x) dx = 1 on a grid fine enough for the ring's width (about 0.1); p is 0 inside the unit circle."""
    from pyro_vae.runs.datasets import Ring

    grid = torch.linspace(-1.7, 1.7, 1701, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    total = Ring.log_density(x).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(total.item() - 1) < 1e-3
    assert Ring.log_density(torch.tensor([[0.5, 0.0]])).item() == float("-inf")
