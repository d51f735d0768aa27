"""The README's example: a new prior is one class plus one registration, then usable by name."""

import json
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
from conftest import cli_args

from pyro_vae.cli import main
from pyro_vae.model.priors import PRIORS, Prior


@pytest.fixture
def student_t():
    if "student_t" not in PRIORS:

        @PRIORS.register("student_t")
        class StudentT(Prior):
            """p(z) = Πᵢ StudentT(ν, 0, 1)."""

            def __init__(self, spec, encoder, *, df: float = 3.0):
                super().__init__(spec, encoder)
                self.register_buffer("df", torch.tensor(df))

            def forward(self, c=None):
                zeros = torch.zeros(self.z_dim, device=self.df.device)
                return dist.StudentT(self.df, zeros, 1.0).to_event(1)

    return "student_t"


def test_a_registered_prior_trains_and_evaluates_by_name(student_t, tiny):
    main(cli_args("train", tiny, "--name", "t", "--prior", student_t, "--set", "prior.df=5"))
    folder = Path(tiny["runs_root"]) / "t"
    assert "df = 5.0" in (folder / "config.toml").read_text()
    main(["evaluate", str(folder), "-k", "10", "--limit", "10", "--quiet"])
    assert json.loads((folder / "eval.json").read_text())["prior"] == "student_t"
