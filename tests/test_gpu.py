"""The same jobs on a CUDA GPU. Skipped where there is none (CI has none); on a GPU machine run
``pytest tests/test_gpu.py`` and ``pyro-vae bench --device cuda``."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cli_args

from pyro_vae import load_config
from pyro_vae.cli import main
from pyro_vae.infer.importance import importance_sample
from pyro_vae.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = ["data.name=synthetic", "network.hidden=[16]", "model.z_dim=2", "train.batch_size=64"]


def test_train_resume_evaluate_and_sample_on_the_gpu(tiny):
    main(cli_args("train", tiny, "--name", "g", "--set", "train.device=cuda"))
    folder = Path(tiny["runs_root"]) / "g"
    main(["train", "--resume", str(folder), "--epochs", "2", "--quiet"])
    assert torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"] == 2
    estimates = []
    for flags in ([], ["--compile"]):  # Pyro's JIT, then inductor's kernels: the same draws, rounded alike
        main(["evaluate", str(folder), "-k", "50", "--limit", "20", "--quiet", "--device", "cuda", *flags])
        estimates.append(json.loads((folder / "eval.json").read_text())["log_likelihood"])
    assert math.isfinite(estimates[0]) and math.isclose(*estimates, rel_tol=1e-5)
    main(["sample", str(folder), "-n", "4", "--device", "cuda", "--out", str(folder / "four.png")])


@pytest.mark.parametrize("objective", ["trace_elbo", "mean_field", "trace_elbo compiled"])
def test_the_jit_elbo_traces_and_matches_the_eager_one_on_the_gpu(tmp_path, objective):
    objective, _, compiled = objective.partition(" ")
    overrides = ["train.device=cuda", f"objective.name={objective}"] + (["objective.compile=true"] if compiled else [])
    trainer = Trainer(load_config(None, TINY + overrides), tmp_path, progress=False)
    assert trainer.jit_elbo is not None
    assert math.isfinite(trainer.train_step(torch.arange(64, device="cuda")).item())


def test_the_gpu_and_the_cpu_estimate_the_same_log_likelihood(tmp_path):
    trainer = Trainer(load_config(None, TINY + ["train.device=cpu"]), tmp_path, progress=False)
    vae, x = trainer.vae.eval(), trainer.experiment.test_x[:10]
    cpu = importance_sample(vae.model, vae.guide, x, num_samples=2000)
    vae.cuda()
    gpu = importance_sample(vae.model, vae.guide, x.cuda(), num_samples=2000)
    # independent draws of the same estimator: their difference has sd √2·stderr
    assert ((cpu.log_likelihood - gpu.log_likelihood.cpu()).abs() < 4 * 2**0.5 * cpu.stderr + 1e-3).all()


def test_bench_runs_on_the_gpu(tmp_path):
    out = tmp_path / "bench.json"
    main(["bench", "--quick", "--out", str(out), "--device", "cuda"])
    assert json.loads(out.read_text())["device"] == torch.cuda.get_device_name()
