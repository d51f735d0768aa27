"""The shape facts every component of a VAE is built from."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    image_shape: tuple  # (C, H, W) of one x
    z_dim: int  # latent dimension
    num_classes: int  # label classes y ∈ {0, …, num_classes−1}
    conditional: bool  # whether the model takes the label y of every example
    cond_dim: int = 0  # width of the condition c fed to the networks (one-hot y, given pixels; 0: none)

    @property
    def points(self):
        """True where x is a point in ℝ^D (shape [D]) rather than a grey image."""
        return len(self.image_shape) == 1
