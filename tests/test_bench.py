"""The benchmark runs end to end on a tiny setting (its timings are reported, never asserted)."""
import json

import torch

from pyro_vae.bench import PlainTrainer, plain_log_likelihood
from pyro_vae.cli import main
from pyro_vae.evaluate import importance_sample


def test_bench_quick_writes_its_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["bench", "--quick", "--out", str(out), "--device", "cpu"])
    report = json.loads(out.read_text())
    assert set(report["training"]["32"]) == {
        "pyro_images_per_s", "pyro_eager_images_per_s", "plain_images_per_s", "plain_same_data_images_per_s",
        "pyro_ratio", "pyro_eager_ratio", "pyro_ratio_same_data", "pyro_uses_jit",
    }
    assert report["training"]["32"]["pyro_uses_jit"] is True
    assert {"pyro_seconds", "plain_seconds", "pyro_peak_extra_mb", "chunk_size"} <= set(report["evaluation"])
    assert "ratio" in capsys.readouterr().out


def test_plain_reference_estimates_the_same_log_likelihood(tmp_path):
    """The reference IWAE and the project's evaluator agree on the same networks within standard error."""
    from pyro_vae import load_config
    from pyro_vae.trainer import Trainer

    trainer = Trainer(load_config(None, ["data.name=synthetic", "network.hidden=[16]", "model.z_dim=2"]), tmp_path,
                      progress=False)
    vae, x = trainer.vae.eval(), trainer.experiment.test_x[:10]
    ours = importance_sample(vae.model, vae.guide, x, num_samples=2000)
    plain = plain_log_likelihood(vae, x, 2000, 100)
    # independent draws of two estimators with the same proposal: their difference has sd √2·stderr
    assert ((ours.log_likelihood - plain).abs() < 4 * 2**0.5 * ours.stderr + 1e-4).all()
    assert PlainTrainer(trainer).train_step(torch.arange(8)) > 0
