"""The ``pyro-vae`` command: train, evaluate, sample, compare, gradvar, gap, export, configs, bench.

User mistakes (``PyroVAEError``) print one line and exit with status 2; ``--debug`` shows the traceback.
"""

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path

from .errors import Interrupted, PyroVAEError, Reported
from .version import __version__

MAX_GRID = 1024  # samples in one picture; more go to a .npy array, written in batches
MAX_K = 10**6  # importance samples per example (K = 5000 is the literature's)
MAX_EXAMPLES = 10**8  # examples in one command

# Flags that are shortcuts for --set section.key=value.
SHORTCUTS = {
    "dataset": "data.name",
    "data_root": "data.root",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "device": "train.device",
    "seed": "train.seed",
    "prior": "prior.name",
    "likelihood": "likelihood.name",
    "network": "network.name",
    "objective": "objective.name",
    "z_dim": "model.z_dim",
    "precision": "train.precision",
    "condition": "condition.name",
}


class Parser(argparse.ArgumentParser):
    """argparse, whose mistakes (an unknown flag, a missing value) print one line as every other error does."""

    def error(self, message):
        print(f"pyro-vae: error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parser():
    from .runs.config import bundled_configs

    top = Parser(prog="pyro-vae", description="Variational autoencoders written the Pyro way.")
    top.add_argument("--debug", action="store_true", help="show the traceback of an error")
    top.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a VAE (or CVAE) by SVI into runs/<name>")
    train.add_argument("--config", help=f"bundled config name or TOML path (bundled: {', '.join(bundled_configs())})")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (a shortcut flag such as --epochs wins over --set of its key)",
    )
    train.add_argument("--name", help="run name (default: a timestamp)")
    train.add_argument("--runs-root", default="runs", help="folder that holds the runs (default: runs)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    train.add_argument(
        "--conditional", action="store_true", help="train a CVAE conditioned on the labels (--condition label)"
    )
    train.add_argument(
        "--quiet",
        action="store_true",
        help="print only the run folder, the last line and errors: no bar, no line per epoch",
    )
    for flag, target in SHORTCUTS.items():
        train.add_argument("--" + flag.replace("_", "-"), help=f"shortcut for --set {target}=...")

    evaluate = commands.add_parser("evaluate", help="importance-sampled log p(x) of a trained run")
    evaluate.add_argument("run", help="run folder, e.g. runs/<name>")
    evaluate.add_argument("--num-samples", "-k", type=int, default=5000, help="importance samples K per example")
    evaluate.add_argument("--split", default="test", choices=["test", "train"])
    evaluate.add_argument("--dataset", help="score another dataset of the same image shape (default: the run's own)")
    evaluate.add_argument("--data-root", help="folder that holds the dataset's files (torchvision datasets)")
    evaluate.add_argument(
        "--limit",
        type=int,
        help="evaluate only N examples: a fixed, class-balanced part of the split, the same in every command",
    )
    evaluate.add_argument("--batch-size", type=int, default=100, help="examples per batch of --classify")
    evaluate.add_argument(
        "--seed", type=int, default=0, help="example i draws its samples from a stream seeded by (seed, i)"
    )
    evaluate.add_argument("--chunk-size", type=int, help="samples drawn at once (default: chosen from memory)")
    evaluate.add_argument(
        "--method",
        default="is",
        choices=["is", "ais"],
        help="is: importance sampling from q(z|x); ais: annealed importance sampling from the prior (HMC moves), "
        "K chains per example, written to eval-ais.*",
    )
    evaluate.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="N",
        help="with --method is: N steps of per-example SVI on the encoder's q(z|x) before sampling (a tighter proposal)",
    )
    evaluate.add_argument(
        "--no-jit",
        action="store_true",
        help="with --method is: never compile the chunks' log-weights (for a model whose Python branches depend on "
        "the data's values; the JIT is otherwise used only where it reproduces the eager weights bit for bit)",
    )
    evaluate.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --method is: compile the log-weights by inductor instead of Pyro's JIT: faster on long evaluations "
        "after seconds of building; estimates differ from the JIT's in float32's last digits. By default on "
        "evaluations long enough to repay the building (a line says so); --no-compile never",
    )
    evaluate.add_argument(
        "--distributions", type=int, default=1000, metavar="T", help="with --method ais: intermediate distributions"
    )
    evaluate.add_argument(
        "--leapfrog", type=int, default=10, metavar="L", help="with --method ais: leapfrog steps per HMC move"
    )
    evaluate.add_argument("--classify", action="store_true", help="also run the CVAE's generative classifier")
    evaluate.add_argument("--classify-samples", type=int, default=100, help="K per class for --classify")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar (the results still print)")

    sample = commands.add_parser("sample", help="decode z ~ p(z) of a trained run into a grid of images")
    sample.add_argument("run")
    sample.add_argument("-n", type=int, default=64, help="number of images")
    sample.add_argument(
        "--label", type=int, help="class of every image (conditional runs; default: all classes in turn)"
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", help="PNG path (default: RUN/samples-N.png)")
    sample.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    compare = commands.add_parser("compare", help="settings, figures and pictures of several runs side by side")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders")
    compare.add_argument(
        "--out", help="folder for compare.md, compare.txt and the pictures (default: runs/compare-A-B…)"
    )
    compare.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    gradvar = commands.add_parser(
        "gradvar", help="variance of the ELBO's gradient: reparameterized against score function"
    )
    gradvar.add_argument("run")
    gradvar.add_argument("--draws", type=int, default=200, help="gradient draws per estimator")
    gradvar.add_argument("--examples", type=int, default=100, help="test examples in the batch")
    gradvar.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    gradvar.add_argument("--quiet", action="store_true", help="no progress bar (the results still print)")

    gap = commands.add_parser(
        "gap",
        help="the inference gap per test example: approximation (the family's) and amortization (the encoder's)",
    )
    gap.add_argument("run")
    gap.add_argument(
        "--limit", type=int, default=100, help="test examples (a fixed, class-balanced part; bounds the time)"
    )
    gap.add_argument("--num-samples", "-k", type=int, default=1000, help="draws K for each ELBO and log p(x)")
    gap.add_argument("--steps", type=int, default=500, help="Adam steps of each per-example fit")
    gap.add_argument("--flow-steps", type=int, default=8, help="planar flow steps of the flow posterior")
    gap.add_argument("--lr", type=float, default=0.01, help="rate of the per-example fits (decays tenfold)")
    gap.add_argument("--particles", type=int, default=8, help="draws per ELBO in the per-example fits")
    gap.add_argument("--seed", type=int, default=0)
    gap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    gap.add_argument("--quiet", action="store_true", help="no progress bar (the results still print)")

    export = commands.add_parser(
        "export", help="write a run's weights as model.safetensors beside its config (a folder to share)"
    )
    export.add_argument("run")
    export.add_argument("--out", help="folder to write (default: RUN-export)")
    export.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")

    commands.add_parser("configs", help="list the bundled configs")

    bench = commands.add_parser("bench", help="throughput of the trainer and evaluator against plain PyTorch")
    bench.add_argument("--quick", action="store_true", help="a tiny setting that only checks the benchmark runs")
    bench.add_argument("--out", default="runs/bench.json", help="JSON file for the results")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument(
        "--parity",
        type=int,
        metavar="EPOCHS",
        help="instead: train project and plain PyTorch side by side for EPOCHS epochs, compare test ELBOs",
    )
    bench.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    bench.add_argument(
        "--config",
        help="with --parity, --discriminative or --semi-supervised: the config (default: the default config)",
    )
    bench.add_argument(
        "--keep", metavar="DIR", help="with --parity: keep both trained models as runs DIR/pyro and DIR/plain"
    )
    bench.add_argument("--overwrite", action="store_true", help="with --keep: replace the runs DIR/pyro and DIR/plain")
    bench.add_argument(
        "--discriminative",
        action="store_true",
        help="instead: test accuracy of an MLP classifier of the config's network size (the CVAE classifier's baseline)",
    )
    bench.add_argument(
        "--semi-supervised",
        action="store_true",
        help="instead: M2's training throughput (--config, default mnist-m2) against a plain-PyTorch M2 and the label CVAE",
    )
    bench.add_argument(
        "--compare-run",
        metavar="RUN",
        help="instead: evaluate RUN's test log p(x) and a plain-PyTorch IWAE estimate of the same networks",
    )
    bench.add_argument("--num-samples", "-k", type=int, default=5000, help="K for --compare-run")
    bench.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="instead: training throughput of 1 and N processes (torchrun, this machine) and the scaling efficiency",
    )
    return top


def check_not_empty(args):
    """Refuse an empty value: ``--resume "$RUN"`` with RUN unset would start a new run, ``--out ""`` write
    where no --out writes."""
    for key, value in vars(args).items():
        if "" in (value if isinstance(value, list) else [value]):
            name = {"run": "RUN", "runs": "a RUN"}.get(key, "--" + key.replace("_", "-"))
            raise PyroVAEError(f"{name} is empty")


def check_one_process(command):
    """Refuse to run a command other than train and evaluate in several torchrun processes: each would do
    the whole job and write the same files."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and command not in ("train", "evaluate"):
        raise PyroVAEError(
            f"pyro-vae {command} runs in one process; run it without torchrun "
            f"(train and evaluate share their work among {world_size} processes)"
        )


def train_overrides(args):
    """The --set overrides, then the shortcut flags' (--epochs 3: train.epochs=3; --conditional:
    condition.name=label), which win over --set of the same key."""
    if args.conditional and args.condition not in (None, "label"):
        raise PyroVAEError(
            f"--conditional asks for --condition label; it cannot be combined with --condition {args.condition}"
        )
    overrides = list(args.set)
    overrides += [
        f"{target}={getattr(args, flag)}" for flag, target in SHORTCUTS.items() if getattr(args, flag) is not None
    ]
    if args.conditional:
        overrides.append("condition.name=label")
    return overrides


def run_train(args):
    from . import distributed
    from .runs.config import load_config
    from .runs.folders import new_run_dir
    from .trainer import train

    overrides = train_overrides(args)
    if args.resume and (args.config or args.name or args.overwrite):
        raise PyroVAEError(
            "--resume takes the run's own config; it cannot be combined with --config, --name or --overwrite"
        )
    if (
        distributed.launched()
        and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
        and not (args.name or args.resume)
    ):
        raise PyroVAEError(
            "torchrun --max-restarts needs --name (or --resume) so that a restarted process finds its run"
        )
    config = (
        None if args.resume else load_config(args.config, overrides)
    )  # the same mistakes on every rank: before joining
    world = distributed.join()
    resume = args.resume
    if resume is None and distributed.restart_count() and args.name:  # torchrun restarted the processes
        folder = Path(args.runs_root) / args.name
        resume = distributed.on_main(lambda: str(folder) if (folder / "config.toml").is_file() else None)
    if resume:
        config = distributed.on_main(lambda: resumed_config(resume, overrides))
        run_dir = Path(resume)
    else:
        run_dir = distributed.on_main(lambda: new_run_dir(args.runs_root, args.name, args.overwrite))
    if world.main:
        restarted = f"; torchrun restart {distributed.restart_count()}, resuming" if distributed.restart_count() else ""
        print(f"run folder: {run_dir}" + (f" ({world.size} processes{restarted})" if world.size > 1 else ""))
    train(config, run_dir, resume=bool(resume), overwrite=args.overwrite, progress=not args.quiet)
    if world.main:
        print(f"done: {run_dir} (evaluate with: pyro-vae evaluate {run_dir})")


def resumed_config(run_dir, overrides):
    """The config of the run in ``run_dir`` with ``overrides``, which may change only ``RESUMABLE_KEYS``."""
    from .runs.config import config_differences
    from .runs.folders import RESUMABLE_KEYS, run_config

    config = run_config(run_dir, overrides)
    changed = set(config_differences(run_config(run_dir).to_dict(), config.to_dict())) - RESUMABLE_KEYS
    if changed:
        raise PyroVAEError(
            f"a resumed run can change only {', '.join(sorted(RESUMABLE_KEYS))}, not {', '.join(sorted(changed))}"
        )
    return config


def check_range(flag, value, low, high):
    """Refuse a number given to ``flag`` outside low … high (None: the flag was not given)."""
    from .registry import Range

    if value is not None:
        Range(low, high).check(flag, value)


def check_seed(seed):
    """Refuse a --seed that PyTorch's CPU generator would not keep as given (it keeps 32 bits)."""
    if not 0 <= seed < 2**32:
        raise PyroVAEError(f"--seed must lie in 0 … 2^32 − 1, got {seed}")


def run_evaluate(args):
    from . import distributed
    from .report.evaluation import check_labelled, classify_run, evaluate_run
    from .runs.folders import run_config

    check_range("--num-samples", args.num_samples, 1, MAX_K)
    check_range("--batch-size", args.batch_size, 1, 2**20)
    check_range("--limit", args.limit, 1, MAX_EXAMPLES)
    check_range("--chunk-size", args.chunk_size, 1, MAX_K)
    check_seed(args.seed)
    check_range("--refine", args.refine, 0, 10**6)
    check_range("--distributions", args.distributions, 1, 10**6)
    check_range("--leapfrog", args.leapfrog, 1, 1000)
    if args.refine and args.method != "is":
        raise PyroVAEError("--refine refines the importance sampler's proposal; AIS starts its chains from the prior")
    if args.classify:
        check_range("--classify-samples", args.classify_samples, 1, MAX_K // 10)
    config = run_config(args.run)  # a missing or foreign folder: the same mistake on every rank, told before joining
    if args.classify:
        check_labelled(args.run, config)
    world = distributed.join()
    s = evaluate_run(
        args.run,
        num_samples=args.num_samples,
        split=args.split,
        limit=args.limit,
        chunk_size=args.chunk_size,
        device=args.device,
        progress=not args.quiet,
        dataset=args.dataset,
        data_root=args.data_root,
        seed=args.seed,
        refine=args.refine,
        method=args.method,
        num_distributions=args.distributions,
        leapfrog_steps=args.leapfrog,
        jit=not args.no_jit,
        compile=args.compile,
    )
    if not world.main:
        return
    what = s["what"]
    ais = s["method"] == "ais"
    bpd = "n/a (continuous likelihood)" if s["bits_per_dim"] is None else f"{s['bits_per_dim']:.4f}"
    rows = [
        ("examples", f"{s['num_examples']} ({s['dataset']}, {s['split']})"),
        (
            ("AIS", f"{s['num_samples']} chains, T = {s['num_distributions']}, {s['leapfrog_steps']} leapfrog steps")
            if ais
            else ("K", f"{s['num_samples']}" + (f", q refined by {s['refine']} SVI steps" if s["refine"] else ""))
        ),
        (
            ("mean log-weight", f"{s['elbo']:.3f}; ELBO of q(z|x) {s['elbo_10_particles']:.3f} (10 particles)")
            if ais
            else (
                "mean ELBO",
                f"{s['elbo']:.3f} (K samples); {s['elbo_10_particles']:.3f} (10 particles, Pyro's figure)",
            )
        ),
        (
            f"mean {what}",
            f"{s['log_likelihood']:.3f} ± {s['log_likelihood_stderr']:.3f}"
            if s["log_likelihood_stderr"] is not None
            else f"{s['log_likelihood']:.3f} (K = 1: one weight per example gives no standard error)",
        ),
        ("gap (log p − ELBO)", f"{s['log_likelihood'] - s['elbo']:.3f}"),
        ("bits per dim", bpd),
        ("ESS mean / median", f"{s['mean_ess']:.1f} / {s['median_ess']:.1f} of {s['weights_per_example']}"),
        ("Pareto k̂ > 0.7", pareto_line(s)),
        *([("HMC acceptance", f"{s['mean_acceptance']:.2f}")] if ais else []),
        ("seconds", f"{s['seconds']:.1f}" + (f" ({s['processes']} processes)" if s["processes"] > 1 else "")),
    ]
    if "accuracy_classifier" in s:  # M2
        rows[3:3] = [("labels summed out", "log p(x) = log Σ_y p(x, y), K samples of q(z|x,y) for each class")]
        rows += [
            ("accuracy q(y|x)", f"{s['accuracy_classifier']:.4f}"),
            ("accuracy p(x, y)", f"{s['accuracy_generative']:.4f} (argmax_y of the same estimates)"),
        ]
    for name, value in rows:
        print(f"{name:>20}  {value}")
    print(f"wrote {Path(args.run) / s['files'][0]}, {', '.join(s['files'][1:])}")
    if s["kept"]:
        print(f"kept the earlier evaluation, made with other settings, as {', '.join(s['kept'])}")
    if args.classify:
        c = classify_run(
            args.run,
            num_samples=args.classify_samples,
            split=args.split,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
            progress=not args.quiet,
        )
        print(f"{'accuracy':>20}  {c['accuracy']:.4f} ({c['num_examples']} examples, K={c['num_samples']} per class)")
        print(f"wrote {Path(args.run) / 'classify.json'}, confusion.png")
        if c["kept"]:
            print(f"kept the earlier classification, made with other settings, as {', '.join(c['kept'])}")


def pareto_line(summary):
    """The share of examples whose weights have a heavy tail, and what it means."""
    share = summary["share_pareto_k_above_0.7"]
    if share is None:
        return "not fitted (K < 50 leaves fewer than 10 tail weights)"
    verdict = (
        "none: ESS and standard error can be read as they are"
        if share == 0
        else "their log p(x) estimates are unreliable and the standard error understates the error"
    )
    return f"{share:.1%} of examples (median k̂ {summary['median_pareto_k']:.2f}); {verdict}"


def run_sample(args):
    from .runs.files import check_writable
    from .runs.folders import owned_by_run, reading, sample_file_name

    check_range("-n", args.n, 1, 10**12)
    check_seed(args.seed)
    suffix = ".png" if args.n <= MAX_GRID else ".npy"
    out = Path(args.out or Path(args.run) / sample_file_name(args.n, args.label, suffix))
    if out.suffix not in (".png", ".npy"):
        raise PyroVAEError(f"--out must end in .png (a picture) or .npy (an array of images), got {out.name}")
    if out.suffix == ".png" and args.n > MAX_GRID:
        raise PyroVAEError(
            f"a picture holds at most {MAX_GRID} samples; write {args.n} to an array with --out FILE.npy"
        )
    if owned_by_run(out):
        raise PyroVAEError(
            f"--out {out} names a file that its run folder owns; choose another name "
            f"(samples-*.png or a path outside the run)"
        )
    if out.is_dir():
        raise PyroVAEError(f"--out {out} is a folder; name the file to write")
    check_writable(out.parent)
    with reading(args.run):
        write_samples(args, out)
    print(f"wrote {out}")


def write_samples(args, out):
    """Decode ``args.n`` draws z ~ p(z) of the run ``args.run`` into ``out`` (a picture, or an array written in batches)."""
    import torch

    from .report.plots import image_grid, sample_file
    from .runs.folders import load_run

    _, vae = load_run(args.run, args.device)
    if vae.conditioning.partial:
        raise PyroVAEError(
            f"{args.run} completes images from a given part, so it has no samples of its own: see "
            f"{Path(args.run) / 'completions.png'} (test digits), or pyro-vae compare beside other runs"
        )
    torch.manual_seed(args.seed)
    labels = None
    if vae.spec.conditional or vae.conditioning.latent_label:  # M2 draws its label from p(y) where not given
        classes = vae.spec.num_classes
        if args.label is not None and not 0 <= args.label < classes:
            raise PyroVAEError(f"--label must lie in 0..{classes - 1}, got {args.label}")

        def labels(start, stop):  # samples start … stop − 1: the classes in turn, or --label
            index = torch.arange(start, stop, device=vae.device)
            return index % classes if args.label is None else torch.full_like(index, args.label)
    elif args.label is not None:
        raise PyroVAEError("--label was given for an unconditional run; labels need a run trained with --conditional")
    if out.suffix == ".png":
        nrow = vae.spec.num_classes if labels is not None and args.label is None else 8
        image_grid(
            vae.sample(args.n, None if labels is None else labels(0, args.n)),
            out,
            nrow,
            f"{args.n} samples from {args.run}",
        )
    else:
        sample_file(vae, args.n, labels, out)


def run_compare(args):
    from .report.compare import compare_runs

    names = "-".join(Path(r).name for r in args.runs)
    out = Path(args.out or Path("runs") / f"compare-{names}"[:200])
    compare_runs(args.runs, out, device=args.device)
    print((out / "compare.txt").read_text(), end="")
    pictures = "completions.png" if (out / "completions.png").exists() else "samples.png, latent.png"
    print(f"wrote {out / 'compare.md'}, compare.txt, loss.png, {pictures}")


def run_gradvar(args):
    from .report.gradvar import gradient_variance

    check_range("--draws", args.draws, 2, 10**5)
    check_range("--examples", args.examples, 1, 10**5)
    s = gradient_variance(
        args.run, draws=args.draws, examples=args.examples, device=args.device, progress=not args.quiet
    )
    print(f"gradient of −ELBO per example, {s['draws']} draws on {s['examples']} test examples")
    print(
        f"{'group':<12} {'variance, reparam.':>19} {'score function':>15} {'ratio':>9} {'SNR, reparam.':>14} {'score function':>15}"
    )
    for name, g in s["groups"].items():
        r, f = g["reparameterized"], g["score_function"]
        print(
            f"{name:<12} {r['variance']:>19.3e} {f['variance']:>15.3e} {g['variance_ratio']:>9.1f} {r['snr']:>14.3f} {f['snr']:>15.3f}"
        )
    print(f"wrote {Path(args.run) / 'gradvar.json'}")
    if s["kept"]:
        print(f"kept the earlier gradient variances, made with other settings, as {', '.join(s['kept'])}")


def run_gap(args):
    from .report.gap import gap_run

    check_range("--limit", args.limit, 1, MAX_EXAMPLES)
    check_range("--num-samples", args.num_samples, 1, MAX_K)
    check_range("--steps", args.steps, 0, 10**6)
    check_range("--flow-steps", args.flow_steps, 1, 64)
    check_range("--lr", args.lr, 1e-8, 10.0)
    check_range("--particles", args.particles, 1, 10**4)
    check_seed(args.seed)
    s = gap_run(
        args.run,
        limit=args.limit,
        num_samples=args.num_samples,
        steps=args.steps,
        flow_steps=args.flow_steps,
        lr=args.lr,
        num_particles=args.particles,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    m, e = s["means"], s["stderrs"]
    family = s["posterior"]

    def row(name, key):
        error = "" if e[key] is None else f" ± {e[key]:.3f}"
        print(f"{name:>34}  {m[key]:9.3f}{error}")

    print(
        f"{s['num_examples']} test examples, K = {s['num_samples']}, per-example fits of {s['steps']} steps "
        f"({s['flow_steps']} planar steps for the flow), {s['seconds']:.0f} s"
    )
    row("log p̂(x)", "log_likelihood")
    row("L[q*] flow", "elbo_flow")
    row(f"L[q*] {family}", "elbo_fitted")
    row("L[q] encoder", "elbo_encoder")
    row("approximation gap log p̂ − L[q*]", "approximation_gap")
    row("amortization gap L[q*] − L[q]", "amortization_gap")
    row("approximation gap of the flow", "approximation_gap_flow")
    row("amortization gap of the flow", "amortization_gap_flow")
    print(f"wrote {Path(args.run) / s['files'][0]}, {', '.join(s['files'][1:])}")
    if s["kept"]:
        print(f"kept the earlier gap, made with other settings, as {', '.join(s['kept'])}")


def run_export(args):
    from .runs.export import export_run

    out = export_run(args.run, args.out, args.overwrite)
    print(f"wrote {out}/model.safetensors and its config.toml (sample with: pyro-vae sample {out})")


def run_configs(args):
    import itertools
    import textwrap
    from importlib import resources

    from .runs.config import bundled_configs, load_config

    for name in bundled_configs():
        c = load_config(name)
        text = (resources.files("pyro_vae") / "configs" / f"{name}.toml").read_text()
        about = " ".join(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines()))
        about = " ".join(about.replace("#", " ").split())  # the config's whole leading comment, on one paragraph
        model = "NN" if c.model.z_dim == 0 else "M2" if c.condition.name == "semi_supervised" else "CVAE"
        kind = "VAE" if c.condition.name == "none" else f"{model} ({c.condition.name})"
        print(
            f"{name}: {kind} z={c.model.z_dim} {c.network.name}, prior {c.prior.name}, "
            f"likelihood {c.likelihood.name}, posterior {c.posterior.name}, {c.objective.name}"
        )
        print(textwrap.fill(about, width=100, initial_indent="    ", subsequent_indent="    ") + "\n")


def run_bench(args):
    from .benchmarks.bench import main as bench_main

    bench_main(
        quick=args.quick,
        out=args.out,
        device=args.device,
        parity_epochs=args.parity,
        overrides=args.set,
        compare=args.compare_run,
        num_samples=args.num_samples,
        nproc=args.nproc,
        config=args.config,
        keep=args.keep,
        classifier=args.discriminative,
        overwrite=args.overwrite,
        semi=args.semi_supervised,
    )


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM outside training (which handles them itself): stop like Ctrl-C."""

    def __init__(self, signum):
        super().__init__()
        self.signum = signum


RECEIVED = []  # the signals raise_stopped handled: one that a library's bare ``except:`` swallowed still stops


def raise_stopped(signum, frame):
    RECEIVED.append(signum)
    raise Stopped(signum)


def main(argv=None):
    """Run one command. Signal handling is set up first, before torch and Pyro load, so that a signal at
    any moment ends in one line."""
    handler = {
        "train": run_train,
        "evaluate": run_evaluate,
        "sample": run_sample,
        "compare": run_compare,
        "gradvar": run_gradvar,
        "gap": run_gap,
        "export": run_export,
        "configs": run_configs,
        "bench": run_bench,
    }
    previous = {s: signal.signal(s, raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    RECEIVED.clear()
    args = None
    format_before = warnings.formatwarning
    try:
        args = parser().parse_args(argv)
        if not args.debug:
            warnings.formatwarning = one_line_warning
        check_not_empty(args)
        check_one_process(args.command)
        handler[args.command](args)
        if RECEIVED:  # raised while a library was loading, and swallowed there
            raise Stopped(RECEIVED[0])
    except Interrupted as e:
        if rank() == 0:
            print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        if getattr(args, "debug", False):
            raise
        if isinstance(e.__context__, PyroVAEError):  # the signal came while our error was on its way out: torchrun
            report(e.__context__)  # stops the other ranks once one has failed; the error is the news
            sys.exit(2)
        signum = getattr(e, "signum", signal.SIGINT)
        ended = ended_first(signum)
        if ended:
            print(f"pyro-vae{f'[rank {rank()}]' if rank() else ''}: error: {ended}", file=sys.stderr)
            sys.exit(2)
        print(
            f"pyro-vae{f'[rank {rank()}]' if rank() else ''}: stopped by {signal.Signals(signum).name}; files are "
            "written whole or not at all, so nothing written before is damaged",
            file=sys.stderr,
        )
        sys.exit(128 + signum)
    except BrokenPipeError:  # the reader of our output left (pyro-vae configs | head): nothing to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that Python's exit flush is silent too
        sys.exit(0)
    except (PyroVAEError, OSError, UnicodeDecodeError, MemoryError, RuntimeError) as e:
        if getattr(args, "debug", False) or not user_facing(e):
            raise
        report(e)
        sys.exit(2)
    finally:
        warnings.formatwarning = format_before
        for s, handler_before in previous.items():
            signal.signal(s, handler_before)
        if "torch" in sys.modules:
            from .distributed import leave

            leave()


def report(error):
    """Print ``error`` as one line. Under torchrun, rank 0 prints what every rank stopped for: mistakes found
    before the ranks joined (the same on every rank) and those rank 0 reported; another rank prints what
    only it met."""
    if rank() == 0 or (joined() and not isinstance(error, Reported)):
        print(f"pyro-vae{f'[rank {rank()}]' if rank() else ''}: error: {one_line(error)}", file=sys.stderr)


def ended_first(signum):
    """Under torchrun, where a SIGTERM came because another process of the run ended first (torchrun stops the
    others once one has died or failed), the line that names it; else None."""
    if signum != signal.SIGTERM or "WORLD_SIZE" not in os.environ:
        return None
    from .workers import ended_first as ended

    who = ended()
    if who is None:
        return None
    return (
        f"{who} (killed, or stopped by its own error above), so torchrun stopped this one; files are written whole "
        "or not at all"
    )


def rank():
    """This process's rank under torchrun (0 alone)."""
    return int(os.environ.get("RANK", "0") or 0)


def joined():
    """Whether this process has joined the other ranks of a torchrun world."""
    return "torch.distributed" in sys.modules and sys.modules["torch.distributed"].is_initialized()


def user_facing(error):
    """Errors of the user's making or the machine's (not bugs): ours, the file system's, and running out of memory."""
    import torch

    return not isinstance(error, RuntimeError) or isinstance(error, torch.OutOfMemoryError)


def one_line_warning(message, category, filename, lineno, line=None):
    """A warning as the command line prints it: one line, as its errors (``--debug`` shows where it arose)."""
    return f"pyro-vae{f'[rank {rank()}]' if rank() else ''}: warning: {' '.join(str(message).split())}\n"


def one_line(error):
    """The message of a user-facing error on one line: an OSError names its cause and path."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    elif isinstance(error, (MemoryError, RuntimeError)):  # MemoryError or torch.OutOfMemoryError
        text = f"out of memory ({str(error).splitlines()[0] if str(error) else 'MemoryError'}); use smaller sizes or batches"
    else:
        text = str(error)
    return " ".join(text.split())


if __name__ == "__main__":
    main()
