"""Data-parallel training and evaluation on torch.distributed: 2 processes, gloo, the CPU, tiny data."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import sigterm_caught, wait_for

from pyro_vae import load_config
from pyro_vae.cli import main

pytestmark = pytest.mark.slow  # every test here starts processes

TINY = [
    "data.name=synthetic",
    "data.train_per_class=50",
    "network.hidden=[16]",
    "model.z_dim=2",
    "train.batch_size=20",
    "train.device=cpu",
    "train.clip_norm=5",
]
STEPS = 5
SGD_LR = (
    0.05  # Adam's first steps are ±lr whatever the size of a gradient: float noise would flip the signs of tiny ones
)


def flat(vae):
    return torch.cat([p.detach().flatten() for p in vae.parameters()])


def two_process_steps(rank, store, run_dir, out):
    """Rank ``rank`` of 2: the trainer's steps on global batches of 20, STEPS with SGD (rank 0 saves the
    parameters) then STEPS with its own Adam; after every step both ranks hold the same parameters."""
    from pyro_vae.trainer import Trainer

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        trainer = Trainer(load_config(None, TINY), run_dir, progress=False)
        trainer.permutation = torch.randperm(len(trainer.train_x), generator=trainer.generator)
        adam, trainer.optimizer = trainer.optimizer, torch.optim.SGD(trainer.vae.parameters(), lr=SGD_LR)
        for step in range(2 * STEPS):
            if step == STEPS:
                if rank == 0:
                    torch.save(flat(trainer.vae), out)
                trainer.optimizer = adam
            trainer.train_step(trainer.permutation[20 * step : 20 * (step + 1)])
            mine = flat(trainer.vae)
            gathered = [torch.zeros_like(mine), torch.zeros_like(mine)]
            dist.all_gather(gathered, mine)
            assert torch.equal(gathered[0], gathered[1]), f"ranks differ after step {step + 1}"
    finally:
        dist.destroy_process_group()


def one_process_as_two(run_dir):
    """One process at batch 20 that draws the latent noise of each half from rank 0's and rank 1's
    streams, as the two processes do: −ELBO(first 10) + −ELBO(last 10), backward, clip, SGD."""
    from pyro_vae.trainer import Trainer, rank_seed

    trainer = Trainer(load_config(None, TINY), run_dir, progress=False)
    streams = [torch.Generator().manual_seed(rank_seed(0, rank)).get_state() for rank in range(2)]
    trainer.permutation = torch.randperm(len(trainer.train_x), generator=trainer.generator)
    trainer.loss.elbo = trainer.jit_elbo
    optimizer = torch.optim.SGD(trainer.vae.parameters(), lr=SGD_LR)
    for step in range(STEPS):
        (x,) = trainer.batch(trainer.permutation[20 * step : 20 * (step + 1)], trainer.generator)
        total = 0
        for half in range(2):
            torch.set_rng_state(streams[half])
            total = total + trainer.loss(x[10 * half : 10 * (half + 1)], beta=1.0)
            streams[half] = torch.get_rng_state()
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainer.vae.parameters(), 5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    trainer.release()
    return flat(trainer.vae)


def test_two_processes_at_half_the_batch_follow_one_process_and_stay_identical(tmp_path):
    mp.spawn(
        two_process_steps, args=(str(tmp_path / "store"), str(tmp_path / "two"), str(tmp_path / "two.pt")), nprocs=2
    )
    two = torch.load(tmp_path / "two.pt")
    one = one_process_as_two(tmp_path / "one")
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-5)
    assert not torch.equal(two, flat(load_config_vae()))  # the steps moved the parameters


def load_config_vae():
    from pyro_vae.runs.experiment import build

    torch.manual_seed(0)
    return build(load_config(None, TINY), "cpu").vae


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
TRAIN = [
    "-m",
    "pyro_vae",
    "train",
    "--quiet",
    "--device",
    "cpu",
    "--epochs",
    "6",
    "--set",
    "data.name=synthetic",
    "--set",
    "data.train_per_class=400",
    "--set",
    "network.hidden=[32]",
    "--set",
    "model.z_dim=2",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.checkpoint_every=20",
]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def torchrun(*args, restarts=0):
    return subprocess.Popen(
        [*TORCHRUN, f"--max-restarts={restarts}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )


def worker_pids(launcher):
    """The worker processes torchrun started (its children)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def parameters(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)["model"]


def assert_same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-process run."""
    root = tmp_path_factory.mktemp("reference")
    run = torchrun(*TRAIN, "--runs-root", str(root), "--name", "ref")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    return parameters(root / "ref")


def test_a_killed_rank_stops_the_other_in_one_line_and_the_run_resumes_bit_identically(tmp_path, reference):
    run = torchrun(*TRAIN, "--runs-root", str(tmp_path), "--name", "victim")
    wait_for(tmp_path / "victim" / "checkpoint.pt")
    os.kill(max(worker_pids(run)), signal.SIGKILL)
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("pyro-vae")]
    assert len(lines) == 1 and "process 1 of this run ended first" in lines[0] and "resume with" in lines[0], err
    from pyro_vae.runs.folders import load_checkpoint, run_config

    folder = tmp_path / "victim"
    assert load_checkpoint(folder, run_config(folder))["step"] > 0
    resumed = torchrun("-m", "pyro_vae", "train", "--quiet", "--resume", str(folder))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_same(parameters(folder), reference)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_a_rank_that_ends_is_named_by_the_others_and_a_sigint_is_a_sigint(tmp_path, signum):
    """A killed (or interrupted) evaluating rank: the other, which torchrun then stops with SIGTERM, names it
    instead of reporting a SIGTERM of its own; the interrupted rank says SIGINT."""
    from pyro_vae.cli import main

    main(["train", "--runs-root", str(tmp_path), "--name", "run", "--quiet", *[f for o in TINY for f in ("--set", o)]])
    run = torchrun("-m", "pyro_vae", "evaluate", str(tmp_path / "run"), "-k", "1000000", "--quiet")
    victim, rank = started_worker(run)
    os.kill(victim, signum)
    _, err = run.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("pyro-vae")]
    assert run.returncode != 0 and f"process {rank.decode()} of this run ended first" in err, err
    assert "stopped by SIGTERM" not in err and all(line.count("pyro-vae") == 1 for line in lines), err
    if signum == signal.SIGINT:
        assert f"pyro-vae[rank {rank.decode()}]: stopped by SIGINT" in err or rank == b"0", err


def started_worker(launcher, timeout=120):
    """(pid, RANK as bytes) of the last worker torchrun started, once both workers run the command line."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = worker_pids(launcher)
        try:
            if len(pids) == 2 and all(sigterm_caught(pid) for pid in pids):
                variables = dict(
                    v.split(b"=", 1) for v in Path(f"/proc/{max(pids)}/environ").read_bytes().split(b"\0") if b"=" in v
                )
                return max(pids), variables[b"RANK"]
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("torchrun never started two workers")


def test_torchrun_max_restarts_resumes_by_itself(tmp_path, reference):
    run = torchrun(*TRAIN, "--runs-root", str(tmp_path), "--name", "restarted", restarts=1)
    wait_for(tmp_path / "restarted" / "checkpoint.pt")
    os.kill(max(worker_pids(run)), signal.SIGKILL)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "torchrun restart 1, resuming" in out
    assert_same(parameters(tmp_path / "restarted"), reference)


def test_sigterm_stops_every_rank_with_a_checkpoint_and_resume_is_bit_identical(tmp_path, reference):
    run = torchrun(*TRAIN, "--runs-root", str(tmp_path), "--name", "stopped")
    wait_for(tmp_path / "stopped" / "metrics.jsonl")
    for pid in worker_pids(run):  # as the launcher passes on a preemption
        os.kill(pid, signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0
    assert "SIGTERM: stopped at epoch" in err and "]: Traceback" not in err  # no worker's traceback ([rank1]: …)
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] < 6 and state["processes"] == 2 and len(state["rng"]["ranks"]) == 2
    resumed = torchrun("-m", "pyro_vae", "train", "--quiet", "--resume", str(tmp_path / "stopped"))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_same(parameters(tmp_path / "stopped"), reference)


@pytest.mark.parametrize("flags", [[], ["--compile"]])  # inductor's graph too: the same bits in every process
def test_sharded_evaluation_equals_one_process_example_by_example(tmp_path, flags):
    from pyro_vae.cli import main

    main(["train", "--quiet", "--runs-root", str(tmp_path), "--name", "r", *[f for o in TINY for f in ("--set", o)]])
    folder = tmp_path / "r"
    evaluate = ["-m", "pyro_vae", "evaluate", str(folder), "-k", "60", "--limit", "7", "--quiet", "--device", "cpu"]
    evaluate += flags
    one = subprocess.run([sys.executable, *evaluate], capture_output=True, text=True, env=ENV)
    assert one.returncode == 0, one.stderr
    single = (folder / "eval_examples.csv").read_text()
    two = subprocess.run([*TORCHRUN, *evaluate], capture_output=True, text=True, env=ENV)
    assert two.returncode == 0, two.stderr
    assert (folder / "eval_examples.csv").read_text() == single
    assert len(single.splitlines()) == 8


def test_m2_trains_under_torchrun_and_evaluates(tmp_path):
    """Kingma's M2 through the same trainer on two processes: each rank its shard of the batch and of the
    labelled draw; the run evaluates from its folder."""
    m2 = ["--config", "mnist-m2", "--set", "data.labels=8", "--set", "condition.hidden=[8]"]
    m2 += ["--set", "condition.labelled_batch=4", "--epochs", "2"]
    run = torchrun(*TRAIN[:6], *TRAIN[8:], *m2, "--runs-root", str(tmp_path), "--name", "m2")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    metrics = [json.loads(line) for line in (tmp_path / "m2" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(m["test_elbo"]) for m in metrics)
    main(["evaluate", str(tmp_path / "m2"), "-k", "3", "--limit", "20", "--quiet"])
    assert "accuracy_classifier" in json.loads((tmp_path / "m2" / "eval.json").read_text())


def test_a_compiled_objective_trains_under_torchrun_as_the_jit_one_does(tmp_path, reference):
    """Each rank compiles the graph of its shard's shape; DDP averages the compiled backward's gradients as
    it does the JIT's, so the run ends where the JIT's reference run ends, up to the two graphs' rounding."""
    run = torchrun(*TRAIN, "--runs-root", str(tmp_path), "--name", "compiled", "--set", "objective.compile=true")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "objective.compile" not in err  # no fall-back warning: the compiled graph passed its check
    compiled = parameters(tmp_path / "compiled")
    assert compiled.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-3, atol=1e-4)
