"""Learning-rate schedules: the rate they give at given epochs, and exact resume across their boundaries."""

import json
from pathlib import Path

import pytest
import torch
from conftest import cli_args

from pyro_vae import PyroVAEError, load_config
from pyro_vae.cli import main
from pyro_vae.infer.schedules import SCHEDULES


@pytest.mark.parametrize(
    "name, options, epochs, factors",
    [
        ("constant", {}, [0, 7, 3000], [1, 1, 1]),
        ("step", {"every": 2, "gamma": 0.5}, [0, 1, 2, 5, 6], [1, 1, 0.5, 0.25, 0.125]),
        # Burda et al.: 3^i passes at 10^(-i/7): pass 1 | 2-4 | 5-13 | 14-40 | … | 1094-3280
        (
            "burda",
            {},
            [0, 1, 3, 4, 12, 13, 39, 40, 1092, 1093, 3279, 5000],
            [10 ** (-i / 7) for i in (0, 1, 1, 2, 2, 3, 3, 4, 6, 7, 7, 7)],
        ),
        (
            "burda",
            {"length": 328},
            [0, 1, 2, 120, 327],
            [10 ** (-i / 7) for i in (0, 2, 3, 7, 7)],
        ),  # compressed tenfold
    ],
)
def test_a_schedule_gives_its_stated_rate(name, options, epochs, factors):
    schedule = SCHEDULES.build(name, options)
    assert [schedule.factor(e) for e in epochs] == pytest.approx(factors)


def test_the_burda_stages_last_three_to_the_i_passes():
    schedule = SCHEDULES.build("burda", {})
    factors = [schedule.factor(e) for e in range(3280)]
    lengths = [sum(1 for f in factors if f == pytest.approx(10 ** (-i / 7))) for i in range(8)]
    assert lengths == [3**i for i in range(8)]


def test_bad_schedules_are_refused_in_one_line(tiny, capsys):
    with pytest.raises(PyroVAEError, match="unknown schedule"):
        load_config(None, ["schedule.name=cosine"])
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("train", tiny, "--name", "bad", "--set", "schedule.name=step", "--set", "schedule.every=0"))
    assert exit_info.value.code == 2
    assert "schedule 'step' option 'every' must be positive, got 0" in capsys.readouterr().err
    assert not (Path(tiny["runs_root"]) / "bad").exists()


def test_a_run_resumed_across_a_schedule_boundary_ends_bit_identical(tiny):
    tiny["set"] += ["schedule.name=step", "schedule.every=1", "schedule.gamma=0.3"]
    main(cli_args("train", tiny, "--name", "whole", "--epochs", "3"))
    main(cli_args("train", tiny, "--name", "parts", "--epochs", "1"))
    folder = Path(tiny["runs_root"]) / "parts"
    main(["train", "--resume", str(folder), "--epochs", "3", "--quiet"])
    whole, parts = (
        torch.load(Path(tiny["runs_root"]) / n / "checkpoint.pt", weights_only=True) for n in ("whole", "parts")
    )
    assert all(torch.equal(whole["model"][k], parts["model"][k]) for k in whole["model"])
    lrs = [json.loads(line).get("lr") for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [lr for lr in lrs if lr is not None] == pytest.approx([1e-3, 3e-4, 9e-5])
