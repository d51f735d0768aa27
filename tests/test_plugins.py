"""Components from outside the package: a dataset and a prior in a user's own file, named by the config's
[plugins] modules, are found again by every command that reads the run, in a fresh process too."""

import subprocess
import sys
import textwrap

import pytest

from pyro_vae.cli import main

PLUGIN = textwrap.dedent('''
    """A user's components: a dataset of two blobs and a prior of wider Gaussians."""
    import pyro.distributions as dist
    import torch

    from pyro_vae.model.priors import PRIORS, Prior
    from pyro_vae.runs.datasets import DATASETS, ImageData, Split


    @DATASETS.register("{name}-blobs")
    class Blobs:
        def load(self):
            g = torch.Generator().manual_seed(0)
            labels = torch.arange(60) % 2
            images = (labels[:, None, None, None] * 0.6 + 0.2 + 0.05 * torch.randn(60, 1, 4, 4, generator=g)).clamp(0, 1)
            return ImageData(Split(images[:48], labels[:48]), Split(images[48:], labels[48:]), 2)


    @PRIORS.register("{name}-wide")
    class Wide(Prior):
        def __init__(self, spec, encoder):
            super().__init__(spec, encoder)
            self.register_buffer("loc", torch.zeros(spec.z_dim))

        def forward(self, c=None):
            return dist.Normal(self.loc, 2.0).to_event(1)
''')


def plugin(tmp_path, name):
    path = tmp_path / f"{name}_parts.py"
    path.write_text(PLUGIN.replace("{name}", name))
    return path


@pytest.mark.slow
def test_a_run_made_with_a_plugin_is_read_by_every_command_in_a_fresh_process(tmp_path):
    path = plugin(tmp_path, "mine")
    runs = tmp_path / "runs"
    main(
        [
            "train",
            "--set",
            f'plugins.modules=["{path}"]',
            "--dataset",
            "mine-blobs",
            "--prior",
            "mine-wide",
            "--z-dim",
            "2",
            "--set",
            "network.hidden=[8]",
            "--epochs",
            "1",
            "--quiet",
            "--runs-root",
            str(runs),
            "--name",
            "p",
        ]
    )
    run = runs / "p"
    assert str(path) in (run / "config.toml").read_text()
    for command in (
        ["sample", str(run), "-n", "4"],
        ["evaluate", str(run), "-k", "3", "--quiet"],
        ["train", "--resume", str(run), "--epochs", "2", "--quiet"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pyro_vae", *command], capture_output=True, text=True, cwd=tmp_path / "runs"
        )
        assert done.returncode == 0, done.stderr
    assert (run / "samples-4.png").is_file() and (run / "eval.json").is_file()


@pytest.mark.parametrize(
    "modules, message",
    [
        ('["{tmp}/absent.py"]', "absent.py does not exist"),
        ('["no_such_module_of_ours"]', "plugin no_such_module_of_ours cannot be imported"),
        ('["{tmp}/broken.py"]', "broken.py failed while importing (ZeroDivisionError: division by zero)"),
    ],
)
def test_a_plugin_that_cannot_load_is_one_line(modules, message, tmp_path, capsys):
    (tmp_path / "broken.py").write_text("1 / 0\n")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--set",
                f"plugins.modules={modules.format(tmp=tmp_path)}",
                "--quiet",
                "--runs-root",
                str(tmp_path / "runs"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()
