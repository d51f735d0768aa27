"""The VAE's model/guide contract, its checks, and training by SVI."""

import json
import warnings
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO

from pyro_vae import VAE, PyroVAEError, load_config
from pyro_vae.infer.objectives import OBJECTIVES, VAELoss
from pyro_vae.infer.optim import adam, ordered_parameters


def make_vae(*overrides, image_shape=(1, 6, 6), num_classes=3):
    config = load_config(None, ["network.hidden=[12]", "model.z_dim=3", *overrides])
    return VAE.from_config(config, image_shape, num_classes)


@pytest.mark.parametrize("conditional", [False, True])
def test_sites_keep_the_contract(conditional):
    vae = make_vae(f"model.conditional={str(conditional).lower()}")
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4))
    args = (x, torch.tensor([0, 1, 2, 1, 0])) if conditional else (x,)
    guide_trace = poutine.trace(vae.guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(*args)
    for trace in (guide_trace, model_trace):
        trace.compute_log_prob()
        assert [f.name for f in trace.nodes["z"]["cond_indep_stack"]] == ["data"]
        assert trace.nodes["z"]["value"].shape == (5, 3)
        assert trace.nodes["z"]["log_prob"].shape == (5,)
    assert model_trace.nodes["x"]["is_observed"] and model_trace.nodes["x"]["log_prob"].shape == (5,)
    assert guide_trace.nodes["z"]["fn"].has_rsample
    # the guide registers the encoder with Pyro and the model the decoder, each under the VAE's own name
    assert f"{vae.pyro_name}.encoder$$$body.0.weight" in guide_trace.nodes
    assert f"{vae.pyro_name}.decoder$$$net.0.weight" in model_trace.nodes
    assert not any("decoder" in name for name in guide_trace.nodes)


def test_vectorized_particles_broadcast_through_the_networks():
    vae = make_vae()
    x = torch.bernoulli(torch.full((4, 1, 6, 6), 0.5))
    elbo = Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    assert torch.isfinite(torch.tensor(elbo.loss(vae.model, vae.guide, x)))


@pytest.mark.parametrize(
    "conditional, images, labels, message",
    [
        (
            False,
            torch.zeros(2, 1, 5, 5),
            None,
            "images of shape \\(1, 5, 5\\) given to a model built for \\(1, 6, 6\\)",
        ),
        (False, torch.zeros(2, 1, 6, 6), torch.tensor([0, 1]), "label y was given to a model without labels"),
        (True, torch.zeros(2, 1, 6, 6), None, "needs the label y of every image"),
        (True, torch.zeros(2, 1, 6, 6), torch.tensor([0, 3]), "labels must lie in 0..2"),
        (True, torch.zeros(2, 1, 6, 6), torch.tensor([0]), "1 labels for 2 images"),
        (
            False,
            torch.zeros(2, 1, 6, 6, dtype=torch.uint8),
            None,
            "images of integer type torch.uint8 given to the model",
        ),
    ],
)
def test_bad_inputs_name_the_problem(conditional, images, labels, message):
    vae = make_vae(f"model.conditional={str(conditional).lower()}")
    with pytest.raises(PyroVAEError, match=message):
        vae.guide(images, labels)


@pytest.mark.parametrize("condition", ["none", "label", "column"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bool])
def test_images_of_another_type_are_scored_as_the_weights_type(condition, dtype):
    """float64 images (as NumPy gives) or booleans score as the float32 images they equal: log p(x, z) − log q(z|x)
    on the same draws."""
    vae = make_vae(f"condition.name={condition}")
    x, y = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4)), torch.tensor([0, 1, 2, 1, 0])
    log_w = []
    for images in (x, x.to(dtype)):
        pyro.set_rng_seed(0)
        guide_trace = poutine.trace(vae.guide).get_trace(images, y if condition == "label" else None)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
            images, y if condition == "label" else None
        )
        log_w.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    assert log_w[1].dtype == torch.float32 and torch.equal(log_w[0], log_w[1])
    if condition == "column":  # completions too: the given part kept, the rest drawn as for float32 images
        completions = []
        for images in (x, x.to(dtype)):
            pyro.set_rng_seed(0)
            completions.append(vae.complete(images, 2))
        assert completions[1].dtype == torch.float32 and torch.equal(*completions)


def test_kl_weight_scales_only_the_latent_sites():
    vae = make_vae()
    x = torch.bernoulli(torch.full((4, 1, 6, 6), 0.5))
    traces = {}
    for beta in (1.0, 0.25):
        pyro.set_rng_seed(3)
        guide = poutine.trace(vae.guide).get_trace(x, beta=beta)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, beta=beta)
        traces[beta] = (guide, model)
    (g1, m1), (g2, m2) = traces[1.0], traces[0.25]
    for t in (g1, m1, g2, m2):
        t.compute_log_prob()
    kl = (g1.nodes["z"]["log_prob_sum"] - m1.nodes["z"]["log_prob_sum"]).item()
    kl_scaled = (g2.nodes["z"]["log_prob_sum"] - m2.nodes["z"]["log_prob_sum"]).item()
    assert kl_scaled == pytest.approx(0.25 * kl, rel=1e-5)
    assert m2.nodes["x"]["log_prob_sum"].item() == pytest.approx(m1.nodes["x"]["log_prob_sum"].item(), rel=1e-6)


@pytest.mark.parametrize("objective", ["trace_elbo", "mean_field", "iwae"])
def test_a_few_steps_of_the_elbo_module_lower_the_loss(objective):
    vae = make_vae(f"objective.name={objective}")
    torch.manual_seed(0)
    prototypes = (torch.rand(3, 1, 6, 6) > 0.5).float()
    x = torch.bernoulli(prototypes[torch.arange(60) % 3] * 0.9 + 0.05)
    loss_module, optimizer = (
        VAELoss(vae, OBJECTIVES.build(objective, {"jit": False} if objective != "iwae" else {})),
        adam(vae, 0.02),
    )
    losses = []
    for _ in range(60):
        loss = loss_module(x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.parametrize("num_particles", [1, 5])
def test_the_iwae_module_has_renyi_elbo_s_loss_and_gradient(num_particles):
    """Pyro's RenyiELBO (α = 0) has no differentiable_loss; ours forms the same gradient from the same draws."""
    vae = make_vae()
    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.5))
    torch.manual_seed(0)
    loss = VAELoss(vae, OBJECTIVES.build("iwae", {"num_particles": num_particles}))(x)
    loss.backward()
    ours = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    torch.manual_seed(0)
    reference = RenyiELBO(
        alpha=0, num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1
    )
    assert loss.item() == pytest.approx(reference.loss_and_grads(vae.model, vae.guide, x), rel=1e-6)
    for a, p in zip(ours, vae.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prior", ["gaussian", "vamp"])
def test_adam_orders_parameters_by_their_param_store_names(prior):
    """Checkpoints store Adam's moments in param-store name order; the optimizer must see the same order."""
    vae = make_vae(f"prior.name={prior}")
    pyro.clear_param_store()
    Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, torch.bernoulli(torch.full((4, 1, 6, 6), 0.5)))
    names = {id(p): name for name, p in pyro.get_param_store().named_parameters()}  # a shared one: its last name
    assert [names[id(p)] for p in ordered_parameters(vae)] == sorted(names.values())
    pyro.clear_param_store()


@pytest.mark.parametrize("objective", ["trace_elbo", "mean_field"])
def test_jit_objectives_compile_once_and_estimate_the_same_loss(objective):
    """Unseeded, the traced and the eager loss agree in distribution: equal means within standard error."""
    from pyro_vae.infer.objectives import OBJECTIVES

    vae = make_vae()
    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.5))
    jit_elbo, plain_elbo = OBJECTIVES.build(objective, {"jit": True}), OBJECTIVES.build(objective, {"jit": False})
    model, guide = vae.model, vae.guide  # Pyro's JIT keys compilations by id(model): bind the methods once
    jit_losses = torch.tensor([jit_elbo.loss_and_grads(model, guide, x) for _ in range(40)])
    compiled = jit_elbo._differentiable_loss if objective == "mean_field" else jit_elbo._loss_and_surrogate_loss
    assert len(compiled.compiled) == 1
    plain_losses = torch.tensor([plain_elbo.loss_and_grads(model, guide, x) for _ in range(40)])
    stderr = (jit_losses.var() / 40 + plain_losses.var() / 40).sqrt()
    assert abs(jit_losses.mean() - plain_losses.mean()) < 4 * stderr


def test_pyro_jit_mean_field_retraces_without_the_workaround():
    """Documents the Pyro 1.9 bug the workaround exists for: a new compiled loss at every step."""
    from pyro.infer import JitTraceMeanField_ELBO

    vae = make_vae()
    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.5))
    elbo = JitTraceMeanField_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    model, guide = vae.model, vae.guide
    elbo.loss_and_grads(model, guide, x)
    first = elbo._differentiable_loss
    elbo.loss_and_grads(model, guide, x)
    assert elbo._differentiable_loss is not first


def tiny_trainer(tmp_path, *overrides, progress=False):
    from pyro_vae.trainer import Trainer

    config = load_config(
        None,
        [
            "data.name=synthetic",
            "network.hidden=[16]",
            "model.z_dim=2",
            "train.batch_size=64",
            "train.device=cpu",
            *overrides,
        ],
    )
    return Trainer(config, tmp_path, progress=progress)


@pytest.mark.parametrize("objective", ["trace_elbo", "mean_field", "trace_elbo@3"])
def test_the_trainer_steps_through_the_jit_elbo_traced_once_and_exact(tmp_path, objective):
    objective, _, particles = objective.partition("@")
    trainer = tiny_trainer(tmp_path, f"objective.name={objective}", f"objective.num_particles={particles or 1}")
    jit_elbo = trainer.jit_elbo
    assert jit_elbo is not None
    for size in (64, 7, 64, 33):  # the last batch of an epoch is smaller
        assert torch.isfinite(trainer.train_step(torch.arange(size)))
    compiled = jit_elbo._differentiable_loss if objective == "mean_field" else jit_elbo._loss_and_surrogate_loss
    assert len(compiled.compiled) == 1
    args, losses, gradients = trainer.batch(torch.arange(5), torch.Generator().manual_seed(0)), [], []
    params = list(trainer.vae.parameters())
    for elbo in (jit_elbo, trainer.eager_elbo):  # the same draws give the same loss and the same gradient
        pyro.set_rng_seed(3)
        trainer.loss.elbo = elbo
        loss = trainer.loss(*args, beta=1.0)
        # the graph interpreted: each operation differentiated by its own backward, none by TorchScript's
        # differentiable graphs (a "CppFunction" node, where softplus's backward would be symbolic)
        backward = autograd_nodes(loss)
        assert "SoftplusBackward0" in backward and "CppFunction" not in backward
        losses.append(loss.item())
        gradients.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-4)


def autograd_nodes(tensor):
    """The type names of the autograd nodes ``tensor``'s backward pass runs."""
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            names.add(type(node).__name__)
            stack.extend(child for child, _ in node.next_functions)
    return names


def test_pyro_s_jit_trace_elbo_module_loss_has_twice_the_gradient_which_the_trainer_refuses(tmp_path):
    """Documents the Pyro 1.9 bug ``OneGradientJitTrace_ELBO`` exists for: JitTrace_ELBO's
    differentiable_loss has the same value as Trace_ELBO's and twice its gradient. The trainer's check
    compares gradients too, so an objective built on it trains eagerly, with a warning."""
    from pyro.infer import JitTrace_ELBO

    from pyro_vae.infer.objectives import build_elbo

    vae = make_vae()
    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.5))
    model, guide, params = vae.model, vae.guide, list(vae.parameters())
    gradients = []
    jit_elbo = JitTrace_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    jit_elbo.differentiable_loss(model, guide, x)  # traced here, drawing noise of its own
    for elbo in (jit_elbo, Trace_ELBO(max_plate_nesting=1)):
        pyro.set_rng_seed(0)
        loss = elbo.differentiable_loss(model, guide, x)
        gradients.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    torch.testing.assert_close(gradients[0], 2 * gradients[1], rtol=1e-4, atol=1e-4)

    if "pyro_jit_trace_elbo" not in OBJECTIVES:
        OBJECTIVES.register("pyro_jit_trace_elbo")(
            lambda *, jit=True: build_elbo(JitTrace_ELBO if jit else Trace_ELBO, 1, jit)
        )
    with pytest.warns(
        UserWarning,
        match=r"objective.jit: the traced gradient differs from the eager one on the "
        r"same draws \(norm 2× the eager one's\); training without JIT",
    ):
        trainer = tiny_trainer(tmp_path, "objective.name=pyro_jit_trace_elbo")
    assert trainer.jit_elbo is None


def test_tracing_the_jit_elbo_leaves_the_random_stream_and_the_gradients_alone(tmp_path):
    tiny_trainer(tmp_path / "eager", "objective.jit=false")
    eager_state = torch.get_rng_state()
    jit = tiny_trainer(tmp_path / "jit")
    assert jit.jit_elbo is not None and torch.equal(torch.get_rng_state(), eager_state)
    assert all(p.grad is None for p in jit.vae.parameters())


def test_beta_warmup_steps_eagerly_then_through_the_jit(tmp_path):
    trainer = tiny_trainer(tmp_path, "train.warmup_epochs=1")
    used, step = [], trainer.train_step

    def recording_step(index):
        loss = step(index)
        used.append("jit" if trainer.loss.elbo is trainer.jit_elbo else "eager")
        return loss

    warmup_steps = trainer.steps_per_epoch
    for _ in range(warmup_steps + 2):
        recording_step(torch.arange(8))
        trainer.step += 1
    assert used == ["eager"] * (warmup_steps - 1) + ["jit"] * 3  # β reaches its value at the last warm-up step


@pytest.fixture
def untraceable():
    """Two likelihoods a trace gets wrong: one reads a Python number off the decoder output (the trace
    bakes in the first one), one refuses to be traced."""
    from pyro_vae.model.likelihoods import LIKELIHOODS, Bernoulli

    if "python_number_bernoulli" not in LIKELIHOODS:

        @LIKELIHOODS.register("python_number_bernoulli")
        class PythonNumberBernoulli(Bernoulli):
            def forward(self, params):
                return super().forward(params + 10 * float(params.detach().flatten()[0]))

        @LIKELIHOODS.register("untraceable_bernoulli")
        class UntraceableBernoulli(Bernoulli):
            def forward(self, params):
                if torch.jit.is_tracing():
                    raise RuntimeError("this likelihood cannot be traced")
                return super().forward(params)


@pytest.mark.parametrize(
    "likelihood, problem",
    [
        ("python_number_bernoulli", "the traced loss .* differs from the eager loss .* on the same draws"),
        ("untraceable_bernoulli", r"tracing failed \(RuntimeError: this likelihood cannot be traced\)"),
    ],
)
def test_a_component_the_jit_gets_wrong_trains_eagerly_with_a_warning(tmp_path, untraceable, likelihood, problem):
    with pytest.warns(UserWarning, match=f"objective.jit: {problem}; training without JIT"):
        trainer = tiny_trainer(tmp_path, f"likelihood.name={likelihood}")
    assert trainer.jit_elbo is None
    assert torch.isfinite(trainer.train_step(torch.arange(8)))


def test_the_autoencoder_objective_is_reconstruction_alone():
    """Its loss is −log p(x|ẑ) at ẑ = the encoder's mean: no KL term, no sampled noise."""
    vae = make_vae("objective.name=autoencoder")
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4))
    loss = VAELoss(vae, OBJECTIVES.build("autoencoder", {}))
    first, second = loss(x, beta=1.0), loss(x, beta=1.0)
    reconstruction = -vae.likelihood(vae.decoder(vae.encoder(x)[0])).log_prob(x).sum()
    assert first.item() == pytest.approx(reconstruction.item(), rel=1e-6) and first.item() == second.item()
    first.backward()
    assert vae.encoder.head.linear.weight.grad.abs().sum() > 0


def test_score_function_and_reparameterized_gradients_agree_in_expectation_and_differ_in_variance():
    from pyro_vae.report.gradvar import gradient_draws

    vae = make_vae("network.hidden=[8]", "model.z_dim=2")
    x = torch.bernoulli(torch.full((10, 1, 6, 6), 0.3), generator=torch.Generator().manual_seed(5))
    draws = {}
    for reparameterize in (True, False):
        vae.reparameterize = reparameterize
        draws[reparameterize] = gradient_draws(vae, (x,), 1000, seed=int(reparameterize))["encoder"]
    mean = {k: d.mean(0) for k, d in draws.items()}
    stderr = (draws[True].var(0) / 1000 + draws[False].var(0) / 1000).sqrt()
    z = (mean[True] - mean[False]).abs() / stderr.clamp(min=1e-12)
    assert (z < 3.5).double().mean() > 0.97  # the same expectation, element by element
    assert draws[False].var(0).mean() > 10 * draws[True].var(0).mean()  # REINFORCE is far noisier


def test_gradvar_reports_each_estimator_per_parameter_group(tiny, capsys):
    from conftest import cli_args

    from pyro_vae.cli import main

    main(cli_args("train", tiny, "--name", "g"))
    main(["gradvar", f"{tiny['runs_root']}/g", "--draws", "20", "--examples", "10", "--quiet", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "encoder" in out and "decoder" in out and "gradvar.json" in out
    main(["gradvar", f"{tiny['runs_root']}/g", "--draws", "10", "--examples", "10", "--quiet", "--device", "cpu"])
    assert (
        "kept the earlier gradient variances, made with other settings, as gradvar-d20-n10.json"
        in capsys.readouterr().out
    )
    folder = Path(tiny["runs_root"]) / "g"
    assert [json.loads((folder / name).read_text())["draws"] for name in ("gradvar-d20-n10.json", "gradvar.json")] == [
        20,
        10,
    ]


def test_bfloat16_runs_the_networks_in_bfloat16_and_every_log_density_in_float32(tmp_path):
    """Under ``VAE.autocast(bfloat16)`` the encoder's and decoder's matrix products run in bfloat16, while the
    distributions' parameters, every site's log-density and the loss stay float32 and close to float32's
    values; outside it (the test ELBO, evaluate) everything is float32."""
    vae = make_vae("network.hidden=[32]")
    x = (torch.rand(16, 1, 6, 6) < 0.5).float()
    linear_dtypes = []
    for linear in [m for m in vae.modules() if isinstance(m, torch.nn.Linear)]:
        linear.register_forward_hook(lambda module, args, out: linear_dtypes.append(out.dtype))
    traces = {}
    for precision in (None, torch.bfloat16):
        linear_dtypes.clear()
        with vae.autocast(precision):
            pyro.set_rng_seed(0)
            guide = poutine.trace(vae.guide).get_trace(x)
            model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
        assert set(linear_dtypes) == {precision or torch.float32}
        model.compute_log_prob(), guide.compute_log_prob()
        for site in ("x", "z"):
            assert model.nodes[site]["log_prob"].dtype == torch.float32
        assert model.nodes["x"]["fn"].base_dist.logits.dtype == torch.float32
        assert guide.nodes["z"]["log_prob"].dtype == torch.float32
        traces[precision] = model.log_prob_sum() - guide.log_prob_sum()
    assert vae.precision is None
    assert traces[None] != traces[torch.bfloat16]  # autocast did act
    assert traces[torch.bfloat16].item() == pytest.approx(traces[None].item(), rel=0.02)


@pytest.mark.filterwarnings("ignore:train.precision = bfloat16")  # emulated on a CPU without AVX-512 BF16 or AMX
def test_a_bfloat16_trainer_steps_in_bfloat16_and_scores_the_test_set_in_float32(tmp_path):
    from pyro_vae.trainer import test_elbo

    assert (
        tiny_trainer(tmp_path / "jit", "train.precision=bfloat16").jit_elbo is not None
    )  # traced, and checked against eager
    trainer = tiny_trainer(tmp_path / "eager", "train.precision=bfloat16", "objective.jit=false")  # Python hooks run
    seen = []
    trainer.vae.decoder.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = [trainer.train_step(torch.arange(64)).item() for _ in range(20)]
    assert set(seen) == {torch.bfloat16} and losses[-1] < losses[0]
    e = trainer.experiment
    seen.clear()
    test_elbo(trainer.vae, e.test_x, e.test_y, 50)
    assert set(seen) == {torch.float32}
    with pytest.raises(PyroVAEError, match="train.precision must be one of float32, bfloat16"):
        load_config(None, ["train.precision=float8"])


@pytest.mark.parametrize(
    "precision, in_hardware, warned", [("bfloat16", False, True), ("bfloat16", True, False), ("float32", False, False)]
)
def test_a_bfloat16_trainer_warns_where_the_hardware_emulates_bfloat16(
    tmp_path, monkeypatch, precision, in_hardware, warned
):
    monkeypatch.setattr("pyro_vae.trainer.bfloat16_in_hardware", lambda device: in_hardware)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_trainer(tmp_path, f"train.precision={precision}", "objective.jit=false")
    emulated = [str(w.message) for w in caught if "in emulation" in str(w.message)]
    assert emulated == (
        [
            "train.precision = bfloat16: this CPU (it has no AVX-512 BF16 or AMX) multiplies bfloat16 matrices in "
            "emulation, several times slower than float32 (train.precision = float32 avoids it)"
        ]
        if warned
        else []
    )


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False), (None, None, True)]
)
def test_bfloat16_in_hardware_reads_the_cpu_s_instructions(monkeypatch, avx512_bf16, amx, expected):
    """A CPU multiplies bfloat16 in hardware with AVX-512 BF16 or AMX; where torch has neither probe, it cannot
    tell and says yes (no warning it cannot back)."""
    from pyro_vae.devices import bfloat16_in_hardware

    for name, value in (("_is_avx512_bf16_supported", avx512_bf16), ("_is_amx_tile_supported", amx)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)
    assert bfloat16_in_hardware("cpu") is expected
