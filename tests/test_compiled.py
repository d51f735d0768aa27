"""The ELBO compiled by inductor (``objective.compile``): Pyro's loss and gradient from the same draws, one
graph per batch shape, a clear fall-back where a component cannot be traced, exact resume."""

import re
from pathlib import Path

import pyro
import pytest
import torch
from conftest import cli_args
from test_model import tiny_trainer, untraceable  # noqa: F401 (a fixture)

import pyro_vae.trainer as trainer_module
from pyro_vae.cli import main
from pyro_vae.infer.compiled import CompiledTrace_ELBO
from pyro_vae.infer.objectives import OneGradientJitTrace_ELBO


def loss_and_gradient(trainer, elbo, args, seed):
    """The trainer's loss through ``elbo`` on ``args`` from the draws of ``seed``, and its gradient."""
    params = [p for p in trainer.vae.parameters() if p.requires_grad]
    pyro.set_rng_seed(seed)
    trainer.loss.elbo = elbo
    with pyro.validation_enabled(False), trainer.vae.autocast(trainer.precision):
        loss = trainer.loss(*args, beta=1.0)
    return loss.item(), torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # reparameterized draws: the surrogate is the loss
        ["model.reparameterize=false"],  # score-function terms, under the no-grad draws Pyro makes
        ["objective.num_particles=3"],  # vectorized particles
        ["condition.name=label", "prior.name=conditional_gaussian"],  # a second argument, the label
        pytest.param(  # the graph holds autocast's casts
            ["train.precision=bfloat16"], marks=pytest.mark.filterwarnings("ignore:train.precision = bfloat16")
        ),
    ],
    ids=["reparameterized", "score_function", "particles", "conditional", "bfloat16"],
)
def test_the_compiled_elbo_is_pyro_s_loss_and_gradient_from_the_same_draws(tmp_path, overrides):
    trainer = tiny_trainer(tmp_path, "objective.compile=true", *overrides)
    assert isinstance(trainer.jit_elbo, CompiledTrace_ELBO)  # the trainer's own check passed
    args = trainer.batch(torch.arange(100, 164), torch.Generator().manual_seed(1))  # other examples, same shape
    compiled_loss, compiled_gradient = loss_and_gradient(trainer, trainer.jit_elbo, args, seed=7)
    eager_loss, eager_gradient = loss_and_gradient(trainer, trainer.eager_elbo, args, seed=7)
    assert len(trainer.jit_elbo.graphs) == 1
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    tolerance = 1e-2 if "bfloat16" in str(overrides) else 1e-4
    assert (compiled_gradient - eager_gradient).norm() <= tolerance * eager_gradient.norm()
    _, other_draws = loss_and_gradient(trainer, trainer.jit_elbo, args, seed=8)
    assert not torch.equal(other_draws, compiled_gradient)  # the draws are the graph's inputs, not its constants


def test_full_batches_step_through_the_compiled_graph_and_others_eagerly(tmp_path):
    trainer = tiny_trainer(tmp_path, "objective.compile=true")
    used = []
    for size in (64, 7, 64, 33):  # the last batch of an epoch is smaller: no graph is built for it
        assert torch.isfinite(trainer.train_step(torch.arange(size)))
        used.append("compiled" if trainer.loss.elbo is trainer.jit_elbo else "eager")
    assert used == ["compiled", "eager", "compiled", "eager"]
    assert len(trainer.jit_elbo.graphs) == 1


def test_building_the_compiled_elbo_leaves_the_random_stream_and_the_gradients_alone(tmp_path):
    tiny_trainer(tmp_path / "eager", "objective.jit=false")
    eager_state = torch.get_rng_state()
    trainer = tiny_trainer(tmp_path / "compiled", "objective.compile=true")
    assert trainer.jit_elbo is not None and torch.equal(torch.get_rng_state(), eager_state)
    assert all(p.grad is None for p in trainer.vae.parameters())


def test_a_component_that_reads_a_tensor_into_python_trains_eagerly_with_a_warning(tmp_path, untraceable):  # noqa: F811
    with pytest.warns(UserWarning) as warned:
        trainer = tiny_trainer(tmp_path, "objective.compile=true", "likelihood.name=python_number_bernoulli")
    messages = [str(w.message) for w in warned]
    assert re.fullmatch(r"objective.compile: tracing failed \(.*\); training with Pyro's JIT instead .*", messages[0])
    assert re.fullmatch(r"objective.jit: .*; training without JIT .*", messages[1])  # which fails its check too
    assert trainer.jit_elbo is None
    assert torch.isfinite(trainer.train_step(torch.arange(64)))


def test_where_the_compiled_elbo_fails_its_check_the_jit_steps(tmp_path, monkeypatch):
    def fails(self, *args, **kwargs):
        raise RuntimeError("no C++ compiler\nthe rest of a long message")

    monkeypatch.setattr(CompiledTrace_ELBO, "differentiable_loss", fails)
    with pytest.warns(UserWarning, match=r"^objective.compile: tracing failed \(RuntimeError: no C\+\+ compiler\); "):
        trainer = tiny_trainer(tmp_path, "objective.compile=true")
    assert isinstance(trainer.jit_elbo, OneGradientJitTrace_ELBO)


@pytest.mark.parametrize(
    "epochs, jit, used",
    [(2, "true", CompiledTrace_ELBO), (1, "true", OneGradientJitTrace_ELBO), (2, "false", type(None))],
    ids=["long_run", "short_run", "no_jit"],
)
def test_auto_compiles_runs_long_enough_to_pay_for_the_building(tmp_path, monkeypatch, capsys, epochs, jit, used):
    """400 synthetic examples in batches of 64: 6 full batches an epoch, against a threshold of 12."""
    monkeypatch.setattr(trainer_module, "COMPILE_FROM_STEPS", 12)
    trainer = tiny_trainer(tmp_path / "run", f"train.epochs={epochs}", f"objective.jit={jit}", progress=True)
    assert trainer.config.objective.options["compile"] == "auto"  # the default
    assert type(trainer.jit_elbo) is used
    said = capsys.readouterr()
    compiling = "objective.compile = auto: 12 full batches, so the step is compiled by inductor"
    assert (compiling in said.out + said.err) == (used is CompiledTrace_ELBO)


def test_a_compiled_run_resumed_ends_bit_identical_to_one_trained_at_once(tiny):
    tiny["set"] += ["objective.compile=true", "train.batch_size=64"]
    main(cli_args("train", tiny, "--name", "whole", "--epochs", "2"))
    main(cli_args("train", tiny, "--name", "parts", "--epochs", "1"))
    main(["train", "--resume", str(Path(tiny["runs_root"]) / "parts"), "--epochs", "2", "--quiet"])
    whole, parts = (
        torch.load(Path(tiny["runs_root"]) / n / "checkpoint.pt", weights_only=True) for n in ("whole", "parts")
    )
    assert all(torch.equal(whole["model"][k], parts["model"][k]) for k in whole["model"])


def test_pyro_s_svi_steps_the_same_parameters_through_the_compiled_elbo_as_through_trace_elbo():
    """SVI's step with ``CompiledTrace_ELBO`` (its ``loss_and_grads``) from the same draws as with
    ``Trace_ELBO``: the same losses, and Pyro's optimizer moves every parameter to the same place."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam
    from test_model import make_vae

    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.4), generator=torch.Generator().manual_seed(0))
    runs = []
    for elbo in (CompiledTrace_ELBO(max_plate_nesting=1), Trace_ELBO(max_plate_nesting=1)):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = make_vae()
        svi = SVI(vae.model, vae.guide, Adam({"lr": 0.01}), elbo)
        elbo.loss(vae.model, vae.guide, x)  # builds the graph (drawing noise of its own) before the seeded steps
        pyro.set_rng_seed(1)
        losses = [svi.step(x) for _ in range(3)]
        store = pyro.get_param_store()  # each VAE names its parameters vae0…, vae1…: keyed by what follows
        runs.append((losses, {name.partition(".")[2]: p.detach().clone() for name, p in store.named_parameters()}))
    (compiled_losses, compiled_params), (eager_losses, eager_params) = runs
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    assert compiled_params.keys() == eager_params.keys() and len(compiled_params) == 8
    for name, value in eager_params.items():
        torch.testing.assert_close(compiled_params[name], value, rtol=1e-4, atol=1e-5)
    pyro.clear_param_store()
