"""``pyro-vae compare RUN RUN …``: what differs between runs and what each reached, side by side.

Writes into the output folder: ``compare.md`` (Markdown) and ``compare.txt`` (plain text) with the
settings in which the runs' configs differ and each run's figures (epochs, time, final train loss and
test ELBO, the test log p(x) with its standard error, ESS and Pareto k̂ where ``evaluate`` ran, the
classifier's accuracy where it ran); ``loss.png``, every run's curves on one axis; ``samples.png``,
each run's decoded z ~ p(z) from the same random stream; ``latent.png``, each run's test-set means of
q(z|x) on shared axes (for image-completion runs instead ``completions.png``: test digits' given part,
truth and each run's completions). One more row says how much of each run's code space its prior reaches: the share
of test codes inside the region that holds 95% of p(z)'s mass (``codes_where_the_prior_is``). Above the
table, a line for each way the runs' likelihood figures do not compare (``caveats``).
"""

import contextlib
from pathlib import Path

import torch

from ..errors import PyroVAEError
from ..runs.config import config_differences
from ..runs.files import atomic_write, make_folder
from ..runs.folders import read_metrics, read_result, reading
from . import plots
from .evaluation import run_examples

SAMPLES = 16
COMPARE_FILES = (
    "compare.md",
    "compare.txt",
    "loss.png",
    "samples.png",
    "latent.png",
    "completions.png",
)  # what it writes
LATENT_EXAMPLES = 2000


def run_figures(run_dir, metrics):
    """The figures of one run, from its metrics, eval.json and classify.json."""
    epochs = [m for m in metrics if "train_loss" in m]
    tested = [m for m in epochs if "test_elbo" in m]
    evaluation = read_result(run_dir / "eval.json", ("log_likelihood", "num_samples", "num_examples", "mean_ess"))
    classified = read_result(run_dir / "classify.json", ("accuracy",))
    figures = {
        "epochs": len(epochs),
        "train seconds": round(sum(m["seconds"] for m in epochs), 1),
        "final train loss": round(epochs[-1]["train_loss"], 2) if epochs else None,
        "final test ELBO": round(tested[-1]["test_elbo"], 2) if tested else None,
    }
    if evaluation is not None:
        stderr = evaluation.get("log_likelihood_stderr")
        figures[f"test {evaluation.get('what', 'log p(x)')}"] = f"{evaluation['log_likelihood']:.2f}" + (
            f" ± {stderr:.2f}" if isinstance(stderr, float) else ""
        )
        figures["K, examples"] = f"{evaluation['num_samples']}, {evaluation['num_examples']}"
        figures["mean ESS"] = round(evaluation["mean_ess"], 1)
        if evaluation.get("median_pareto_k") is not None:
            figures["median Pareto k̂"] = round(evaluation["median_pareto_k"], 2)
    if classified is not None:
        figures["classifier accuracy"] = round(classified["accuracy"], 4)
    return figures


def table(names, rows):
    """(Markdown, text) of ``rows`` [(label, [value per run])] under a header of run ``names``."""
    cells = [["", *names]] + [[label, *("—" if v is None else str(v) for v in values)] for label, values in rows]
    markdown = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(names + [""])]
    markdown += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(markdown) + "\n", "\n".join(text) + "\n"


@torch.no_grad()
def compare_runs(run_dirs, out, device="auto", seed=0):
    """Compare the runs in ``run_dirs`` (two or more folders); write the files into ``out`` and return
    the rows of the table [(label, [value per run])]."""
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise PyroVAEError("compare needs two runs or more")
    resolved = [r.resolve() for r in run_dirs]
    for i, folder in enumerate(resolved):
        if folder in resolved[:i]:
            raise PyroVAEError(f"{run_dirs[i]} is given twice (as {run_dirs[resolved.index(folder)]} too)")
    names = [r.name for r in run_dirs]
    if len(set(names)) < len(names):
        names = [str(r) for r in run_dirs]
    out = Path(out)
    check_out(out)
    with contextlib.ExitStack() as held:
        for run_dir in run_dirs:
            held.enter_context(reading(run_dir))
        return _compare(run_dirs, names, out, device, seed)


def _compare(run_dirs, names, out, device, seed):
    loaded = [run_examples(r, limit=LATENT_EXAMPLES, device=device) for r in run_dirs]  # (config, vae, x, y)
    metrics = [read_metrics(r) for r in run_dirs]
    configs = [config.to_dict() for config, *_ in loaded]
    partial = [vae.conditioning.partial for _, vae, _, _ in loaded]
    if any(partial) and (not all(partial) or len({str(c["condition"]) for c in configs}) > 1):
        raise PyroVAEError(
            "image-completion runs compare with runs of the same condition (their pictures are completions)"
        )
    make_folder(out)
    differing = sorted({key for other in configs[1:] for key in config_differences(configs[0], other)})
    flat = [{f"{s}.{k}": v for s, values in c.items() for k, v in values.items()} for c in configs]
    rows = [(key, [f.get(key) for f in flat]) for key in differing]
    figures = [run_figures(r, m) for r, m in zip(run_dirs, metrics)]
    labels = list(dict.fromkeys(label for f in figures for label in f))
    rows += [(label, [f.get(label) for f in figures]) for label in labels]
    plots.compare_curves(names, metrics, out / "loss.png")
    if any(partial):
        _, _, x, y = loaded[0]
        plots.completions(
            [(name, vae) for name, (_, vae, _, _) in zip(names, loaded)],
            x[plots.one_per_class(y)],
            out / "completions.png",
            seed=seed,
        )
        return write_table(out, names, rows, ("loss.png", "completions.png"))
    samples = []
    for _, vae, _, _ in loaded:
        torch.manual_seed(seed)
        labels_y = torch.arange(SAMPLES, device=vae.device) % vae.spec.num_classes if vae.spec.conditional else None
        samples.append(vae.sample(SAMPLES, labels_y))
    plots.compare_samples(names, samples, out / "samples.png")
    codes = [vae.encode(x, y if vae.spec.conditional else None)[0] for _, vae, x, y in loaded]
    plots.compare_latents(names, codes, [y for *_, y in loaded], out / "latent.png")
    covered = [f"{codes_where_the_prior_is(vae, code, y, seed):.1%}" for (_, vae, _, y), code in zip(loaded, codes)]
    rows.append(("test codes in p(z)'s 95% region", covered))
    return write_table(out, names, rows, ("loss.png", "samples.png", "latent.png"))


TEST_SET_KEYS = ("data.name", "data.test_size", "data.seed", "data.num_classes", "data.size")  # what makes the test set


def caveats(rows):
    """Where the figures in ``rows`` [(label, [value per run])] do not compare between the runs: a test
    set of another dataset, a likelihood that scores another thing (binarized pixels, 8-bit levels,
    densities), log p(x) estimated on other examples."""
    values = dict(rows)
    notes = []
    data = [key for key in TEST_SET_KEYS if key in values]
    if data:
        notes.append(
            f"the runs are tested on different data ({', '.join(data)} differ): their ELBOs and log p(x) do not compare"
        )
    if "likelihood.name" in values:
        notes.append(
            f"the runs' likelihoods differ ({', '.join(map(str, values['likelihood.name']))}): each scores "
            "its own kind of x, so their ELBOs and log p(x) do not compare"
        )
    estimates = [v.split(", ") for v in values.get("K, examples", []) if v is not None]  # run_figures' "K, examples"
    if len({k for k, _ in estimates}) > 1 or len({n for _, n in estimates}) > 1:
        notes.append(
            f"log p(x) was estimated with other K or on other test examples (K, examples: "
            f"{'; '.join(', '.join(e) for e in estimates)}): evaluate each run with the same -k and --limit "
            "to compare them"
        )
    return notes


def check_out(out):
    """Refuse as the output folder ``out`` a run folder and any other folder that holds files of
    ``COMPARE_FILES``' names but is not an earlier comparison (has no compare.md): compare would replace them."""
    if (out / "config.toml").exists():
        raise PyroVAEError(f"{out} is a run folder, whose own pictures compare would replace; choose another --out")
    if not (out / "compare.md").exists():
        taken = [name for name in COMPARE_FILES if (out / name).exists()]
        if taken:
            raise PyroVAEError(
                f"{out} holds {', '.join(taken)} that compare would replace and is not an earlier "
                "comparison; choose another --out"
            )


def write_table(out, names, rows, pictures):
    """compare.md and compare.txt of ``rows`` (under the ``caveats`` they call for) in ``out``, beside the
    ``pictures`` just drawn; any other picture of ``COMPARE_FILES`` that an earlier comparison left there
    (samples.png beside completions.png, say) is removed. Returns ``rows``."""
    markdown, text = table(names, rows)
    notes = "".join(f"Note: {note}.\n" for note in caveats(rows))
    atomic_write(out / "compare.md", notes + "\n" * bool(notes) + markdown)
    atomic_write(out / "compare.txt", notes + text)
    for name in COMPARE_FILES[2:]:
        if name not in pictures:
            (out / name).unlink(missing_ok=True)
    return rows


def codes_where_the_prior_is(vae, codes, labels, seed=0, mass=0.95):
    """The share of test codes (means of q(z|x) [N, z_dim]) inside the region where p(z) (p(z|y) for a
    CVAE) puts ``mass`` of its probability: log p(code) above the (1 − mass) quantile of log p(z) for
    z ~ p(z). Decoding z ~ p(z) reaches the styles of those digits only; a plain autoencoder's codes
    mostly lie elsewhere."""
    torch.manual_seed(seed)
    c = vae.label_condition(labels if vae.spec.conditional else None, len(codes), codes.dtype)
    prior = vae.prior(None if c is None else c.to(vae.device))
    z = prior.expand([len(codes)]).sample() if c is None else prior.sample()
    threshold = prior.log_prob(z).double().quantile(1 - mass)
    return (prior.log_prob(codes).double() >= threshold).double().mean().item()
