"""The benchmark runs end to end on a tiny setting (its timings are reported, never asserted)."""

import json

import pytest
import torch

from pyro_vae.benchmarks.bench import CarefulTrainer, PlainTrainer, interleaved_rates, plain_log_likelihood
from pyro_vae.cli import main
from pyro_vae.devices import bfloat16_in_hardware
from pyro_vae.infer.importance import importance_sample


def test_bench_quick_writes_its_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["bench", "--quick", "--out", str(out), "--device", "cpu"])
    report = json.loads(out.read_text())
    variants = ("pyro", "pyro_bf16", "compiled", "compiled_bf16", "plain", "careful", "careful_bf16")
    ratios = ("careful", "careful_bf16", "plain", "careful_compiled", "careful_bf16_compiled")
    assert set(report["training"]["32"]) == {
        *(f"{v}_images_per_s" for v in variants),
        *(f"{v}_share_of_limit" for v in variants),
        *(f"ratio_{r}" for r in ratios),
        *(f"ratio_{r}_quartiles" for r in ratios),
        "pyro_uses_jit",
        "compiled_in_use",
    }
    assert report["training"]["32"]["pyro_uses_jit"] is True and report["training"]["32"]["compiled_in_use"] is True
    assert report["matmul_flops_per_s"]["float32"] > 0 and 0 < report["evaluation"]["share_of_limit"]
    assert set(report["matmul_flops_per_s_after"]) == {"float32", "bfloat16"}
    loops = ("pyro", "pyro_bf16", "compiled", "compiled_bf16", "careful", "careful_bf16")
    assert set(report["fixed_cost"]) == {f"{loop}_seconds_per_step" for loop in loops}
    assert all(0 < seconds < 1 for seconds in report["fixed_cost"].values())
    evaluation = report["evaluation"]
    assert {"pyro_seconds", "pyro_batched_seconds", "plain_seconds", "pyro_peak_extra_mb", "chunk_size"} <= set(
        evaluation
    )
    assert evaluation["compiled_in_use"] is True and evaluation["compiled_build_seconds"] > 0
    assert evaluation["pyro_compiled_seconds"] > 0 and evaluation["compiled_speed_ratio"] > 0
    printed = capsys.readouterr().out
    assert "ratio" in printed and "fixed cost per step" in printed
    assert (
        "batch 32, pyro / careful, float32: " in printed
        and "batch 32, compiled / careful, bfloat16: " in printed
        and "fixed cost, compiled / careful: float32 " in printed
        and ", bfloat16 " in printed
        and "evaluator (one stream per example) / plain estimate: " in printed
        and "evaluator --compile (one stream per example) / plain estimate: " in printed
    )
    emulated = not bfloat16_in_hardware("cpu")  # the bfloat16 verdicts say so where this machine emulates it
    bfloat16_lines = [line for line in printed.splitlines() if line.startswith("batch ") and "bfloat16: " in line]
    assert report["bfloat16_in_hardware"] is not emulated and len(bfloat16_lines) == 2
    assert all(
        line.endswith("(bfloat16 emulated: says nothing of bfloat16 hardware)") == emulated for line in bfloat16_lines
    )
    assert ("bfloat16 emulated (no bfloat16 hardware)" in printed) == emulated
    assert report["kind"] == "throughput" and report["machine"] and report["history"] == []
    main(["bench", "--quick", "--out", str(out), "--device", "cpu"])  # a second run keeps the first beside it
    again = json.loads(out.read_text())
    assert [run["date"] for run in again["history"]] == [report["date"]]
    assert again["history"][0]["matmul_flops_per_s"] == report["matmul_flops_per_s"]
    (tmp_path / "notes.json").write_text("my notes")
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--quick", "--out", str(tmp_path / "notes.json"), "--device", "cpu"])
    assert exit.value.code == 2 and (tmp_path / "notes.json").read_text() == "my notes"


@pytest.mark.parametrize("turn", [1, 2])
def test_interleaved_rates_take_turns_on_the_same_batches(turn):
    """After 5 warm-up steps each, every repeat gives each variant `steps` steps in rounds of `turn`, the variants in
    turn and in reverse order every other round, each round's batches the same for all of them."""
    calls = []
    variants = {name: lambda index, name=name: calls.append((name, index)) for name in ("a", "b", "c")}
    trainer = type("Trainer", (), {"train_x": torch.zeros(50, 3), "device": torch.device("cpu")})()
    rates = interleaved_rates(variants, trainer, repeats=2, steps=4, batch_size=6, turn=turn)
    assert {name: len(r) for name, r in rates.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(rate > 0 for r in rates.values() for rate in r)
    timed = calls[15:]  # 5 warm-up rounds of one step
    assert len(timed) == 2 * 4 * 3
    rounds = [timed[i : i + 3 * turn] for i in range(0, len(timed), 3 * turn)]
    for number, round_ in enumerate(rounds):
        names = [name for name, _ in round_][::turn]
        assert names == (["a", "b", "c"] if number % 2 == 0 else ["c", "b", "a"])
        batches = [[index for _, index in round_[i : i + turn]] for i in range(0, 3 * turn, turn)]
        assert all(len(index) == 6 for batch in batches for index in batch)
        assert all(all(torch.equal(p, q) for p, q in zip(batch, batches[0])) for batch in batches)


def test_plain_reference_estimates_the_same_log_likelihood(tmp_path):
    """The reference IWAE and the project's evaluator agree on the same networks within standard error."""
    from pyro_vae import load_config
    from pyro_vae.trainer import Trainer

    trainer = Trainer(
        load_config(None, ["data.name=synthetic", "network.hidden=[16]", "model.z_dim=2"]), tmp_path, progress=False
    )
    vae, x = trainer.vae.eval(), trainer.experiment.test_x[:10]
    ours = importance_sample(vae.model, vae.guide, x, num_samples=2000)
    plain = plain_log_likelihood(vae, x, 2000, 100)
    # independent draws of two estimators with the same proposal: their difference has sd √2·stderr
    assert ((ours.log_likelihood - plain).abs() < 4 * 2**0.5 * ours.stderr + 1e-4).all()
    assert PlainTrainer(trainer).train_step(torch.arange(8)) > 0


def test_careful_reference_computes_the_trainers_loss(tmp_path):
    """The careful loop's flat module is the trainer's MLP: from the same draws its first loss is the
    trainer's −ELBO (float32), and under bfloat16 autocast it stays within a nat of it."""
    from pyro_vae import load_config
    from pyro_vae.trainer import Trainer

    trainer = Trainer(
        load_config(None, ["data.name=synthetic", "network.hidden=[16]", "model.z_dim=2", "objective.jit=false"]),
        tmp_path,
        progress=False,
    )
    index = torch.arange(8)
    losses = []
    for step in (
        CarefulTrainer(trainer).train_step,
        CarefulTrainer(trainer, torch.bfloat16).train_step,
        lambda i: trainer.train_step(i).item(),
    ):
        trainer.generator.manual_seed(0)
        torch.manual_seed(0)
        losses.append(step(index))
    assert abs(losses[0] - losses[2]) < 1e-3 * abs(losses[2]) and abs(losses[1] - losses[2]) < 1.0 * 8


TINY = ["--set", "data.name=synthetic", "--set", "network.hidden=[16]", "--set", "model.z_dim=2", "--device", "cpu"]


def test_parity_keeps_both_models_as_runs_that_evaluate_reads(tmp_path):
    out = tmp_path / "parity.json"
    main(
        [
            "bench",
            "--parity",
            "2",
            *TINY,
            "--set",
            "schedule.name=step",
            "--set",
            "schedule.every=1",
            "--keep",
            str(tmp_path / "kept"),
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["schedule"] == "step" and abs(result["elbo_difference"]) < 5
    main(["evaluate", str(tmp_path / "kept" / "plain"), "-k", "10", "--limit", "5", "--quiet"])
    plain = json.loads((tmp_path / "kept" / "plain" / "eval.json").read_text())
    assert plain["num_examples"] == 5 and (tmp_path / "kept" / "pyro" / "checkpoint.pt").is_file()
    main(["bench", "--compare-run", str(tmp_path / "kept" / "pyro"), "-k", "20", "--device", "cpu", "--out", str(out)])
    compared = json.loads(out.read_text())
    assert abs(compared["difference"]) < 4 * compared["difference_stderr"] and 0 < compared["share_of_limit"]
    main(["compare", str(tmp_path / "kept" / "pyro"), str(tmp_path / "kept" / "plain"), "--out", str(tmp_path / "cmp")])
    assert "final test ELBO" in (tmp_path / "cmp" / "compare.md").read_text()


def test_parity_replaces_kept_runs_only_with_overwrite(tmp_path, capsys):
    keep = ["bench", "--parity", "1", *TINY, "--keep", str(tmp_path / "kept"), "--out", str(tmp_path / "parity.json")]
    main(keep)
    main(["evaluate", str(tmp_path / "kept" / "pyro"), "-k", "2", "--limit", "3", "--quiet"])
    before = {p: p.read_bytes() for p in (tmp_path / "kept").rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(keep)
    assert exit_info.value.code == 2 and "kept/pyro holds a run; pass --overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "kept").rglob("*") if p.is_file()} == before
    main(keep + ["--overwrite"])
    assert not (tmp_path / "kept" / "pyro" / "eval.json").exists()


def test_discriminative_baseline_learns_separated_classes(tmp_path):
    out = tmp_path / "mlp.json"
    main(["bench", "--discriminative", "--config", "mnist-cvae", *TINY, "--set", "train.epochs=20", "--out", str(out)])
    assert json.loads(out.read_text())["test_accuracy"] > 0.9  # the synthetic classes are far apart


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc", "1"], "--nproc compares 1 process with N ≥ 2, got 1"),
        (["--nproc", "0"], "--nproc compares 1 process with N ≥ 2, got 0"),  # it ran the whole default benchmark
        (["--parity", "0"], "--parity must be a positive number of epochs, got 0"),
        (["--parity", "2", "--nproc", "2"], "--parity and --nproc are separate benchmarks"),
        (["--compare-run", "runs/x", "-k", "0"], "--num-samples must be positive, got 0"),
        (["--keep", "kept"], "--keep keeps the two models that --parity trains"),
        (
            ["--nproc", "2", "--config", "mnist-cvae"],
            "--nproc and --compare-run use the default config with --set overrides",
        ),
    ],
)
def test_bench_refuses_arguments_that_do_not_fit_before_measuring(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args, "--device", "cpu", "--out", str(tmp_path / "new" / "bench.json")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_nproc_bench_times_one_and_two_processes(tmp_path):
    out = tmp_path / "nproc.json"
    main(["bench", "--nproc", "2", "--quick", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["images_per_s_1"] > 0 and result["images_per_s_2"] > 0
    assert result["efficiency"] == result["images_per_s_2"] / (2 * result["images_per_s_1"])


def test_a_config_alone_times_its_training_step_beside_the_careful_loops(tmp_path):
    """``bench --config``: any network and likelihood (here a small conv network with a Gaussian
    of learned scale) against the careful plain loop, float32 and bfloat16."""
    out = tmp_path / "conv.json"
    colour = ["data.name=synthetic", "network.channels=2", "network.hidden=16", "model.z_dim=2"]
    colour += ["likelihood.name=gaussian", "likelihood.learn_scale=shared"]
    main(
        ["bench", "--config", "mnist-conv", "--quick", "--device", "cpu", "--out", str(out)]
        + sum((["--set", o] for o in colour), [])
    )
    r = json.loads(out.read_text())["training"]
    (rates,) = r.values()
    assert all(rates[f"{name}_images_per_s"] > 0 for name in ("pyro", "pyro_bf16", "plain", "careful", "careful_bf16"))
