"""Pictures of a run: loss curves, reconstructions, samples, interpolations, the latent space,
the Kingma–Welling manifold (z of dimension 2), CVAE class grids, image completions, log p̂(x) against
K, and the generative classifier's confusion matrix; for points in ℝ², data against samples and the learned map
g(z) = E[x|z]. Each function writes one PNG."""

import io
import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from ..devices import forked_rng  # noqa: E402
from ..runs.files import atomic_file, atomic_write, check_space  # noqa: E402


def save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def image_grid(images, path, nrow, title, row_labels=None):
    """Images [N, C, H, W] in [0, 1] tiled ``nrow`` per row."""
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(nrow * 0.6 + 1, grid.shape[1] / grid.shape[2] * nrow * 0.6 + 0.6))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.set_xticks([])
    if row_labels is None:
        ax.set_yticks([])
    else:
        step = grid.shape[1] / len(row_labels)
        ax.set_yticks([step * (i + 0.5) for i in range(len(row_labels))], [str(r) for r in row_labels])
    save(fig, path)


@torch.no_grad()
def sample_file(vae, n, labels, path, batch_size=1000):
    """n samples E[x|z,y], z ~ p(z|y), as a float32 .npy array [n, *image_shape], drawn ``batch_size`` at a
    time and appended to the file (memory does not grow with n), then renamed into place whole; the labels
    y of samples start … stop − 1 are ``labels(start, stop)`` (None: no labels). A folder without room for
    the array is refused before any sampling; a disk that fills meanwhile ends in a one-line error and
    leaves no file."""
    import numpy as np

    shape = (n, *vae.spec.image_shape)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    check_space(Path(path).parent, len(header.getvalue()) + 4 * math.prod(shape), f"{n} samples")
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.getvalue())
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                images = vae.sample(stop - start, None if labels is None else labels(start, stop))
                f.write(images.float().cpu().numpy().astype("<f4", copy=False).tobytes())


def loss_curves(metrics, path):
    metrics = [m for m in metrics if "train_loss" in m]  # epochs, not events such as a resume
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [m["train_loss"] for m in metrics], label="train loss (−ELBO per example)")
    tested = [m for m in metrics if "test_elbo" in m]  # every train.test_every epochs
    ax.plot([m["epoch"] for m in tested], [-m["test_elbo"] for m in tested], label="test −ELBO per example")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("nats")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, path)


def pca_2d(points):
    """The first two principal coordinates of points [N, D] (the points themselves when D ≤ 2)."""
    if points.shape[1] <= 2:
        return points
    centered = points - points.mean(0)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    return centered @ v[:2].T


def latent_scatter(loc, labels, path):
    coords = pca_2d(loc.cpu())
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(coords[:, 0], coords[:, 1], c=labels.cpu(), cmap="tab10", s=4, alpha=0.7)
    fig.colorbar(points, ax=ax, label="label")
    kind = "z" if loc.shape[1] <= 2 else "first two principal components of z"
    ax.set_title(f"test-set means of q(z|x): {kind}")
    save(fig, path)


@torch.no_grad()
def manifold(vae, path, steps=20):
    """Decoded images on a grid of z = Φ⁻¹(u), u ∈ (0.05, 0.95)², for a 2-dimensional z (Kingma & Welling 2014)."""
    u = torch.linspace(0.05, 0.95, steps)
    z1, z2 = torch.meshgrid(
        torch.distributions.Normal(0, 1).icdf(u), torch.distributions.Normal(0, 1).icdf(u), indexing="ij"
    )
    z = torch.stack([z2.flatten(), -z1.flatten()], dim=-1).to(vae.device)
    image_grid(vae.decode(z), path, steps, "learned manifold: decoded z on a grid of Gaussian quantiles")


@torch.no_grad()
def training_figures(vae, run_dir, metrics, test_x, test_y, n=64):
    """Every picture of a trained run, written into ``run_dir``."""
    run_dir = Path(run_dir)
    vae.eval()
    conditional = vae.spec.conditional or vae.conditioning.latent_label  # decodes with a label
    # M2 pictures its codes and reconstructions with the label its classifier q(y|x) finds most likely
    y = test_y if vae.spec.conditional else vae.predict(test_x) if conditional else None
    if metrics:
        loss_curves(metrics, run_dir / "loss.png")
    if vae.conditioning.partial:
        completions([("completions", vae)], test_x[one_per_class(test_y)], run_dir / "completions.png")
        return
    if vae.spec.points:
        point_figures(vae, run_dir, test_x, y)
        return
    x, yb = test_x[:32], None if y is None else y[:32]
    pairs = torch.stack([x, vae.reconstruct(x, yb)], dim=1).reshape(-1, *x.shape[1:])
    image_grid(pairs, run_dir / "reconstructions.png", 16, "test images (left) and reconstructions (right)")
    pairs = min(16, len(test_x)) // 2  # up to 8 pairs of test images: a small test split has fewer
    if pairs:
        loc, _ = vae.encode(test_x[: 2 * pairs], None if y is None else y[: 2 * pairs])
        t = torch.linspace(0, 1, 10, device=x.device)[:, None, None]
        path = (1 - t) * loc[0::2] + t * loc[1::2]  # [10, pairs, z]: from image 2i to image 2i+1
        labels = None if y is None else y[: 2 * pairs : 2].expand(10, pairs)  # a CVAE keeps the first one's label
        frames = vae.decode(path, labels).transpose(0, 1).reshape(-1, *x.shape[1:])
        image_grid(frames, run_dir / "interpolations.png", 10, "interpolations in latent space between test images")
    loc, _ = vae.encode(test_x[:2000], None if y is None else y[:2000])
    latent_scatter(loc, test_y[:2000], run_dir / "latent.png")
    if conditional:
        class_grids(vae, run_dir)
        if vae.conditioning.latent_label:
            styles(vae, test_x[one_per_class(test_y)], test_y[one_per_class(test_y)], run_dir / "styles.png")
    else:
        image_grid(vae.sample(n), run_dir / "samples.png", 8, "samples: decoded z ~ p(z)")
    if vae.spec.z_dim == 2 and not conditional:
        manifold(vae, run_dir / "manifold.png")


@torch.no_grad()
def point_figures(vae, run_dir, test_x, test_y, n=2000):
    """Pictures of a VAE of points x [N, D]: samples.png (test points against E[x|z] for z ~ p(z), the
    first two coordinates), latent.png (means of q(z|x), coloured by the angle of x) and, for a
    2-dimensional z, manifold.png: z ~ N(0, I) and its image g(z) = E[x|z], point for point in the
    same colours, the map Doersch's tutorial draws (section 2.1)."""
    x = test_x[:n]
    y = None if test_y is None else test_y[:n]
    angle = torch.atan2(x[:, 1], x[:, 0]).cpu() if x.shape[1] > 1 else x[:, 0].cpu()
    generated = vae.sample(len(x), y).cpu()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x[:, 0].cpu(), x[:, -1].cpu(), s=3, color="gray", alpha=0.5, label="test data")
    ax.scatter(generated[:, 0], generated[:, -1], s=3, color="tab:orange", alpha=0.5, label="E[x|z], z ~ p(z)")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("data and samples")
    save(fig, run_dir / "samples.png")
    loc, _ = vae.encode(x, y)
    fig, ax = plt.subplots(figsize=(6, 5))
    coords = pca_2d(loc.cpu())
    points = ax.scatter(coords[:, 0], coords[:, 1], c=angle, cmap="hsv", s=4, alpha=0.7)
    fig.colorbar(points, ax=ax, label="angle of x")
    ax.set_aspect("equal")
    ax.set_title("test-set means of q(z|x)")
    save(fig, run_dir / "latent.png")
    if vae.spec.z_dim != 2 or y is not None:
        return
    z = vae.sample_prior(n)
    g = vae.decode(z).cpu()
    z = z.cpu()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    colour = torch.atan2(z[:, 1], z[:, 0])
    axes[0].scatter(z[:, 0], z[:, 1], c=colour, cmap="hsv", s=3)
    axes[0].set_title("z ~ N(0, I)")
    axes[1].scatter(x[:, 0].cpu(), x[:, -1].cpu(), s=3, color="lightgray")
    axes[1].scatter(g[:, 0], g[:, -1], c=colour, cmap="hsv", s=3)
    axes[1].set_title("g(z) = E[x|z] (grey: test data)")
    for ax in axes:
        ax.set_aspect("equal")
    fig.suptitle("the decoder maps N(0, I) onto the data")
    save(fig, run_dir / "manifold.png")


@torch.no_grad()
def class_grids(vae, run_dir, columns=10, seed=0):
    """CVAE pictures: class_grid.png (row y, the same prior noise in each column, so y fixes the class
    and z the style) and class_samples.png (independent z ~ p(z|y) per image)."""
    num_classes = vae.spec.num_classes
    rows = []
    for label in range(num_classes):
        with forked_rng(vae.device):
            torch.manual_seed(seed)
            rows.append(vae.sample(columns, torch.full((columns,), label, device=vae.device)))
    image_grid(
        torch.cat(rows),
        Path(run_dir) / "class_grid.png",
        columns,
        "one row per label y, the same z in each column",
        row_labels=range(num_classes),
    )
    labels = torch.arange(num_classes, device=vae.device).repeat_interleave(columns)
    image_grid(
        vae.sample(len(labels), labels),
        Path(run_dir) / "class_samples.png",
        columns,
        "samples x ~ p(x|z,y), z ~ p(z|y), one row per label",
        row_labels=range(num_classes),
    )


@torch.no_grad()
def styles(vae, x, y, path):
    """styles.png, Kingma et al.'s analogies (2014, Figure 1): each row a test image x beside its style z, the
    mean of q(z|x,y) at its true label, decoded with every label y' (E[x|z,y'] in column y')."""
    num_classes = vae.spec.num_classes
    z = vae.encode(x, y)[0]
    labels = torch.arange(num_classes, device=z.device)
    decoded = vae.decode(z[:, None].expand(-1, num_classes, -1), labels.expand(len(z), -1))  # [rows, C, …]
    image_grid(
        torch.cat([x[:, None], decoded], 1).flatten(0, 1),
        path,
        num_classes + 1,
        "a test image, then its style z decoded with each label 0, 1, …",
    )


def one_per_class(labels, n=10):
    """Indices of ``n`` examples of labels [N] taken from the classes in turn (the first of each class, then
    the second, …), so that a picture of test digits shows different digits."""
    per_class = [(labels == c).nonzero().squeeze(-1).tolist() for c in labels.unique().tolist()]
    order = [i for group in itertools.zip_longest(*per_class) for i in group if i is not None]
    return torch.tensor(order[:n], dtype=torch.long, device=labels.device)


@torch.no_grad()
def completion_rows(runs, x, samples=6, seed=0):
    """([images [B, …]] one per row, [row label]) of image completion for test images x [B, …]: the given
    part (missing pixels grey), the truth, then each run's completions, E[x_M|z,x_G] for z ~ p(z|x_G) drawn
    from the same random stream (``samples`` rows; one for a run without a latent, whose completion is
    its one prediction). ``runs``: [(name, VAE)] of one condition."""
    rows, labels = [runs[0][1].conditioning.given_part(x), x], ["given", "truth"]
    for name, vae in runs:
        n = samples if vae.latent_sites else 1
        with forked_rng(vae.device):
            torch.manual_seed(seed)
            rows += list(vae.complete(x, n))
        labels += [name] + [""] * (n - 1)
    return rows, labels


def completions(runs, x, path, samples=6, seed=0):
    """``completion_rows`` as one picture, a column per test image."""
    rows, labels = completion_rows(runs, x, samples, seed)
    image_grid(torch.cat(rows), path, len(x), "image completion: each column one test image", row_labels=labels)


def bound_vs_k(
    ks,
    means,
    stderrs,
    num_examples,
    path,
    xlabel="K (importance samples)",
    title="importance-sampled bound tightens as K grows (K = 1 is the ELBO)",
):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(ks, means, yerr=stderrs, marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"mean log p̂(x) over {num_examples} examples (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save(fig, path)


def confusion_matrix(matrix, accuracy, path):
    """matrix [C, C] of counts, rows true y, columns predicted y."""
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix.cpu(), cmap="Blues")
    fig.colorbar(image, ax=ax)
    for (i, j), count in zip(
        torch.cartesian_prod(*[torch.arange(s) for s in matrix.shape]).tolist(), matrix.flatten().tolist()
    ):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted y = argmax p(y|x)")
    ax.set_ylabel("true y")
    ax.set_title(f"generative classifier, accuracy {accuracy:.2%}")
    save(fig, path)


def compare_curves(names, metrics, path):
    """Every run's test −ELBO per example (solid) and train loss (dashed) against the epoch, on one axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, records) in enumerate(zip(names, metrics)):
        epochs = [m for m in records if "train_loss" in m]
        tested = [m for m in epochs if "test_elbo" in m]
        color = f"C{i}"
        ax.plot(
            [m["epoch"] for m in tested], [-m["test_elbo"] for m in tested], color=color, label=f"{name}: test −ELBO"
        )
        ax.plot(
            [m["epoch"] for m in epochs],
            [m["train_loss"] for m in epochs],
            color=color,
            linestyle="--",
            label=f"{name}: train loss",
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("nats per example")
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    if values and min(values) > 0 and max(values) > 20 * min(values):  # runs far apart: each stays readable
        ax.set_yscale("log")
        ax.set_ylabel("nats per example (log scale)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)


def compare_samples(names, samples, path, nrow=8):
    """Each run's samples [n, C, H, W] as a grid of its own (points [n, D]: a scatter of the first two
    coordinates), side by side."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False)
    for ax, name, images in zip(axes[0], names, samples):
        if images.dim() == 2:
            points = images.float().cpu()
            ax.scatter(points[:, 0], points[:, -1], s=3, alpha=0.6)
            ax.set_aspect("equal")
            ax.set_title(name, fontsize=9)
            continue
        grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("decoded z ~ p(z), the same random stream for every run")
    save(fig, path)


def compare_latents(names, codes, labels, path):
    """Each run's test-set means of q(z|x) [N, D] (their first two principal coordinates where D > 2) on
    shared axes, with the circle of radius 2 where N(0, I) puts most of its mass."""
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False, sharex=True, sharey=True)
    for ax, name, loc, y in zip(axes[0], names, codes, labels):
        coords = pca_2d(loc.cpu())
        ax.scatter(coords[:, 0], coords[:, 1], c=y.cpu(), cmap="tab10", s=3, alpha=0.6)
        ax.add_patch(plt.Circle((0, 0), 2, fill=False, linestyle="--", color="gray"))
        ax.set_title(f"{name}" + (" (PCA)" if loc.shape[1] > 2 else ""), fontsize=9)
        ax.set_aspect("equal")
    fig.suptitle("test-set means of q(z|x); dashed: radius 2 of N(0, I)")
    save(fig, path)


def inference_gaps(means, columns, family, path):
    """Left: the mean bounds of ``pyro-vae gap`` as a ladder, log p̂(x) ≥ L[q*_flow], L[q*] ≥ L[q], with the
    approximation and amortization gaps between them; right: each example's two gaps (``columns``, [N] each)."""
    fig, (ladder, spread) = plt.subplots(1, 2, figsize=(11, 4.5))
    levels = [
        ("log p̂(x)", means["log_likelihood"]),
        ("L[q*] flow", means["elbo_flow"]),
        (f"L[q*] {family}", means["elbo_fitted"]),
        ("L[q] encoder", means["elbo_encoder"]),
    ]
    values = [value for _, value in levels]
    spacing = 0.06 * (max(values) - min(values))  # labels of close levels kept apart, in the levels' order
    label_at = float("inf")
    for i, (name, value) in enumerate(levels):
        ladder.hlines(value, 0, 1, color=f"C{i}", lw=2)
        label_at = min(value, label_at - spacing)
        ladder.text(1.02, label_at, f"{name}  {value:.2f}", va="center", fontsize=9, color=f"C{i}")
    top, fitted, bottom = means["log_likelihood"], means["elbo_fitted"], means["elbo_encoder"]
    ladder.annotate("", (0.3, fitted), (0.3, top), arrowprops={"arrowstyle": "<->"})
    ladder.text(0.32, (top + fitted) / 2, f"approximation {top - fitted:.2f}", va="center", fontsize=9)
    ladder.annotate("", (0.6, bottom), (0.6, fitted), arrowprops={"arrowstyle": "<->"})
    ladder.text(0.62, (fitted + bottom) / 2, f"amortization {fitted - bottom:.2f}", va="center", fontsize=9)
    ladder.set_xlim(0, 1.7)
    ladder.set_xticks([])
    ladder.set_ylabel("mean over examples (nats)")
    ladder.set_title(f"inference gap of the {family} posterior, {len(columns['log_likelihood'])} test examples")
    high = max(columns["approximation_gap"].max().item(), columns["amortization_gap"].max().item(), 1e-3)
    low = min(columns["approximation_gap"].min().item(), columns["amortization_gap"].min().item(), 0.0)
    bins = torch.linspace(low, high, 31).tolist()
    spread.hist(columns["approximation_gap"].tolist(), bins=bins, alpha=0.6, label="approximation: log p̂(x) − L[q*]")
    spread.hist(columns["amortization_gap"].tolist(), bins=bins, alpha=0.6, label="amortization: L[q*] − L[q]")
    spread.set_xlabel("gap per example (nats)")
    spread.set_ylabel("examples")
    spread.legend(fontsize=8)
    spread.set_title("per example")
    save(fig, path)
