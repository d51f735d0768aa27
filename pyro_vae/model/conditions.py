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

import torch

from ..errors import PyroVAEError
from ..registry import Registry, Size

CONDITIONS = Registry("condition")


class Condition:
    labels = False  # True where the model takes the label y of every example
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
