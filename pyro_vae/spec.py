"""The shape facts every component of a VAE is built from."""
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    image_shape: tuple  # (C, H, W) of one x
    z_dim: int  # latent dimension
    num_classes: int  # label classes y ∈ {0, …, num_classes−1}
    conditional: bool  # whether encoder, decoder and prior see y

    @property
    def cond_dim(self):
        """Width of the condition fed to the networks: one-hot y, or nothing."""
        return self.num_classes if self.conditional else 0
