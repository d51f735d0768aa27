"""What a model is conditioned on, chosen by name: nothing, the label, or part of the image.

A condition splits an example into what the model generates, the target t, and what it is given,
c (fed to the encoder, the decoder and a conditional prior), so that the model is p(z|c) p(t|z,c) and
the guide q(z|t,c); the ELBO then bounds log p(t|c) (Doersch's tutorial, section 4):

- ``none``: t = x, no c (the VAE, log p(x));
- ``label``: t = x, c = one-hot y [B, num_classes] (the label CVAE, log p(x|y));
- ``quadrants`` (``given`` = 1, 2 or 3, the masks of Pyro's CVAE example) and ``column`` (Doersch's
  MNIST experiment, the middle column of pixels): c = the given pixels x_G [B, |G|], t = the missing
  pixels x_M [B, |M|], where G and M partition the image. Only the missing pixels are observed, so
  log p(x_M|x_G) is a normalized mass on them (image completion).
"""

from typing import Annotated

import torch

from ..errors import PyroVAEError
from ..registry import Range, Registry, Size

CONDITIONS = Registry("condition")


class Condition:
    labels = False  # True where the model takes the label y of every example
    latent_label = False  # True where y is a latent, observed where known (Kingma et al.'s M2)
    partial = False  # True where c is part of the image and t the rest (image completion)
    what = "log p(x)"  # the density the ELBO bounds, as reports name it

    def __init__(self, image_shape, num_classes):
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes

    @property
    def dim(self):
        """Width of c (0: no condition)."""
        return 0

    @property
    def target_shape(self):
        """Shape of one target t."""
        return self.image_shape

    def split(self, x, onehot):
        """(t, c) of images x [B, *image_shape] with one-hot labels [B, num_classes] (None without labels)."""
        return x, onehot

    def complete(self, x, t):
        """Whole images [..., B, *image_shape] of targets t [..., B, *target_shape] (with the given part of x)."""
        return t


@CONDITIONS.register("none")
class NoCondition(Condition):
    """Nothing: the model is p(z) p(x|z)."""


@CONDITIONS.register("label")
class LabelCondition(Condition):
    """The label: c = one-hot y, the model p(z|y) p(x|z,y) (the label CVAE)."""

    labels = True
    what = "log p(x|y)"

    @property
    def dim(self):
        return self.num_classes


@CONDITIONS.register("semi_supervised")
class SemiSupervised(LabelCondition):
    """The label as a latent (Kingma et al. 2014's M2): p(y) p(z) p(x|y,z), y observed where the example has
    a label and summed out exactly (Pyro's enumeration) where not, with a classifier q(y|x) in the guide
    (an MLP of ``hidden`` sizes) beside q(z|x,y). ``alpha`` weighs the classification term α·log q(y|x) of
    the labelled examples (α = ``alpha``·N for N training examples, Kingma's 0.1·N by default); each
    training step draws ``labelled_batch`` labelled examples for it."""

    labels = False  # y is optional: given where known
    latent_label = True
    what = "log p(x)"

    def __init__(
        self,
        image_shape,
        num_classes,
        *,
        hidden: list[Size] = [500],
        alpha: Annotated[float, Range(0, 1e6)] = 0.1,
        labelled_batch: Size = 100,
    ):
        super().__init__(image_shape, num_classes)
        if not hidden:
            raise PyroVAEError("condition.hidden (the classifier q(y|x)'s hidden sizes) must hold at least one size")
        self.hidden, self.alpha, self.labelled_batch = hidden, alpha, labelled_batch

    @staticmethod
    def check_config(config):
        if config.objective.name != "trace_enum_elbo":
            raise PyroVAEError(
                "the semi_supervised condition (M2) sums the unknown labels out with Pyro's enumeration; "
                f"use objective.name = trace_enum_elbo, not {config.objective.name}"
            )
        if config.model.layers or config.model.z_dim == 0 or not config.model.reparameterize:
            raise PyroVAEError(
                "the semi_supervised condition (M2) has one reparameterized latent z: leave model.layers empty, "
                "model.z_dim above 0 and model.reparameterize on"
            )


class MaskCondition(Condition):
    """Part of the image: ``given`` [H, W] (bool) marks the given pixels G, the rest are the missing ones M,
    the same in every channel. c = x_G [B, C·|G|] and t = x_M [B, C·|M|], in the order of x.flatten(1)."""

    partial = True
    what = "log p(x_M|x_G)"

    def __init__(self, image_shape, num_classes, given):
        super().__init__(image_shape, num_classes)
        flags = given.expand(self.image_shape).flatten()
        self.given = flags.nonzero().squeeze(-1)  # indices of G in x.flatten(1)
        self.missing = (~flags).nonzero().squeeze(-1)  # indices of M

    @property
    def dim(self):
        return len(self.given)

    @property
    def target_shape(self):
        return (len(self.missing),)

    def split(self, x, onehot):
        flat = x.flatten(-len(self.image_shape))
        return flat[..., self.missing.to(x.device)], flat[..., self.given.to(x.device)]

    def complete(self, x, t):
        flat = x.flatten(-len(self.image_shape)).expand(*t.shape[:-1], -1).clone()
        flat[..., self.missing.to(x.device)] = t.to(flat.dtype)
        return flat.unflatten(-1, self.image_shape)

    def given_part(self, x, fill=0.3):
        """x [B, *image_shape] with the missing pixels set to ``fill`` (how pictures show the condition)."""
        return self.complete(x, torch.full_like(self.split(x, None)[0], fill))


def image_grid(image_shape, name):
    """(H, W) of images [C, H, W]; a clear error for points or other shapes."""
    if len(image_shape) != 3:
        raise PyroVAEError(
            f"the {name} condition takes part of an image [C, H, W]; this data has shape {tuple(image_shape)}"
        )
    return tuple(image_shape)[1:]


@CONDITIONS.register("quadrants")
class Quadrants(MaskCondition):
    """Quadrants of the image, as in Pyro's CVAE example (examples/cvae): ``given`` = 1: the bottom-left
    quadrant; 2: the left half; 3: all but the bottom-right quadrant. The rest is to be completed."""

    def __init__(self, image_shape, num_classes, *, given: Size = 1):
        if given not in (1, 2, 3):
            raise PyroVAEError(f"condition.given must be 1, 2 or 3 quadrants, got {given}")
        h, w = image_grid(image_shape, "quadrants")
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[h // 2 :, : w // 2] = True
        if given >= 2:
            mask[:, : w // 2] = True
        if given == 3:
            mask[: h // 2, :] = True
        super().__init__(image_shape, num_classes, mask)


@CONDITIONS.register("column")
class Column(MaskCondition):
    """The ``width`` middle columns of pixels (Doersch's MNIST CVAE, section 5.2: the model draws the whole
    digit from its middle column, an input that fits many digits)."""

    def __init__(self, image_shape, num_classes, *, width: Size = 1):
        h, w = image_grid(image_shape, "column")
        if not 0 < width < w:
            raise PyroVAEError(f"condition.width must lie in 1 … {w - 1} columns, got {width}")
        mask = torch.zeros(h, w, dtype=torch.bool)
        start = (w - width) // 2
        mask[:, start : start + width] = True
        super().__init__(image_shape, num_classes, mask)
