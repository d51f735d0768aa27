"""Encoder/decoder pairs chosen by name.

encoder(x [B, *image_shape], c [B, C] | None) → (loc, scale), each [B, z_dim], scale > 0: the
diagonal Gaussian q(z|x, y).
decoder(z [..., B, z_dim], c [B, C] | None) → outputs [..., B, num_outputs, *image_shape] that the
likelihood turns into p(x|z, y); leading particle dimensions of z are kept.
"""

import math
from typing import Annotated

import torch
from torch import nn

from ..errors import PyroVAEError
from ..registry import Range, Registry, Size
from .ops import Softplus, softplus

NETWORKS = Registry("network")
ACTIVATIONS = {"relu": nn.ReLU, "softplus": Softplus, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def activation_class(name):
    if name not in ACTIVATIONS:
        raise PyroVAEError(f"unknown activation {name!r}; valid choices: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def with_condition(h, c):
    """[h, c] along the last dimension, c broadcast over h's leading (particle) dimensions."""
    if c is None:
        return h
    return torch.cat([h, c.expand(h.shape[:-1] + c.shape[-1:])], dim=-1)


def mlp(sizes, activation):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """features [B, F] → (loc, scale) [B, z_dim] with scale = softplus(·) + 1e-4, in float32 under autocast
    too (log scale enters log q(z|x), and a bfloat16 scale would round the 1e-4 floor away)."""

    def __init__(self, in_features, z_dim):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * z_dim)

    def forward(self, h):
        loc, raw_scale = self.linear(h).chunk(2, dim=-1)
        return loc, softplus(raw_scale.float()) + 1e-4


class GaussianMLP(nn.Module):
    """h [..., in_features] → (loc, scale) [..., out_features]: hidden layers, then a ``GaussianHead``; a
    diagonal Gaussian conditional such as q(z₂|z₁) or p(z₁|z₂) between stochastic layers."""

    def __init__(self, in_features, hidden, out_features, activation):
        super().__init__()
        self.body = mlp([in_features, *hidden], activation)
        self.head = GaussianHead(hidden[-1], out_features)
        self.act = activation()

    def forward(self, h):
        return self.head(self.act(self.body(h)))


class MLPEncoder(GaussianMLP):
    def __init__(self, spec, hidden, activation):
        super().__init__(math.prod(spec.image_shape) + spec.cond_dim, hidden, spec.z_dim, activation)
        self.event_dims = len(spec.image_shape)

    def forward(self, x, c=None):
        return super().forward(with_condition(x.flatten(-self.event_dims), c))


class MLPDecoder(nn.Module):
    def __init__(self, spec, num_outputs, hidden, activation):
        super().__init__()
        self.out_shape = (num_outputs, *spec.image_shape)
        self.net = mlp([spec.z_dim + spec.cond_dim, *reversed(hidden), math.prod(self.out_shape)], activation)

    def forward(self, z, c=None):
        return self.net(with_condition(z, c)).unflatten(-1, self.out_shape)


@NETWORKS.register("mlp")
class MLP(nn.Module):
    """Fully connected encoder (D+C → hidden… → 2·z_dim) and mirrored decoder (z_dim+C → …hidden → P·D)."""

    def __init__(self, spec, num_outputs, *, hidden: list[Size] = [400], activation: str = "softplus"):
        super().__init__()
        if not hidden or min(hidden) < 1:
            raise PyroVAEError(f"network.hidden must be a non-empty list of positive sizes, got {hidden}")
        act = activation_class(activation)
        self.encoder = MLPEncoder(spec, hidden, act) if spec.z_dim else None  # no latent: no q(z|x)
        self.decoder = MLPDecoder(spec, num_outputs, hidden, act)


def quarter(size):
    """The side two stride-2 4×4 convolutions (padding 1) leave of ``size``: ⌊⌊size/2⌋/2⌋."""
    return size // 2 // 2


class ConvEncoder(nn.Module):
    def __init__(self, spec, channels, hidden, activation):
        super().__init__()
        c_in, height, width = spec.image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c_in, channels, 4, stride=2, padding=1),
            activation(),  # H → ⌊H/2⌋
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
            activation(),  # → ⌊H/4⌋
            nn.Flatten(),
        )
        features = 2 * channels * quarter(height) * quarter(width)
        self.body = nn.Sequential(nn.Linear(features + spec.cond_dim, hidden), activation())
        self.head = GaussianHead(hidden, spec.z_dim)

    def forward(self, x, c=None):
        return self.head(self.body(with_condition(self.features(x), c)))


class ConvDecoder(nn.Module):
    """z → a grid of ⌈H/4⌉ × ⌈W/4⌉, two stride-2 transposed convolutions up to 4⌈H/4⌉ × 4⌈W/4⌉, and the
    top-left H × W of it: any image size."""

    def __init__(self, spec, num_outputs, channels, hidden, activation):
        super().__init__()
        self.channels = channels
        self.out_shape = (num_outputs, *spec.image_shape)
        _, height, width = spec.image_shape
        self.grid = (-(-height // 4), -(-width // 4))
        self.body = nn.Sequential(
            nn.Linear(spec.z_dim + spec.cond_dim, hidden),
            activation(),
            nn.Linear(hidden, 2 * channels * self.grid[0] * self.grid[1]),
            activation(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            activation(),  # ×2
            nn.ConvTranspose2d(channels, num_outputs * spec.image_shape[0], 4, stride=2, padding=1),  # ×2
        )

    def forward(self, z, c=None):
        h = self.body(with_condition(z, c))
        lead = h.shape[:-1]
        out = self.deconv(h.reshape(-1, 2 * self.channels, *self.grid))[..., : self.out_shape[2], : self.out_shape[3]]
        return out.reshape(*lead, *self.out_shape)


@NETWORKS.register("conv")
class Conv(nn.Module):
    """A small convolutional encoder/decoder for images [C, H, W] of any size from 4 × 4: two stride-2 4×4
    convolutions (H → ⌊H/2⌋ → ⌊H/4⌋) and a hidden layer, mirrored with transposed convolutions in the
    decoder (cropped to H × W)."""

    def __init__(
        self,
        spec,
        num_outputs,
        *,
        channels: Annotated[int, Range(1, 4096)] = 32,
        hidden: Size = 256,
        activation: str = "relu",
    ):
        super().__init__()
        if len(spec.image_shape) != 3:
            raise PyroVAEError(
                f"the conv network generates whole images [C, H, W], not {spec.image_shape} (points, or a condition "
                "on part of the image, which generates the missing pixels only); use the mlp network"
            )
        if min(spec.image_shape[1:]) < 4:
            raise PyroVAEError(f"the conv network needs images of 4 × 4 pixels or more, got {spec.image_shape}")
        act = activation_class(activation)
        self.encoder = ConvEncoder(spec, channels, hidden, act)
        self.decoder = ConvDecoder(spec, num_outputs, channels, hidden, act)


class ResidualBlock(nn.Module):
    """h + conv3×3(act(conv3×3(act(h)))), the channels kept (He et al. 2016)."""

    def __init__(self, channels, activation):
        super().__init__()
        self.body = nn.Sequential(
            activation(),
            nn.Conv2d(channels, channels, 3, padding=1),
            activation(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, h):
        return h + self.body(h)


class ResConvEncoder(nn.Module):
    def __init__(self, spec, channels, blocks, hidden, activation):
        super().__init__()
        c_in, height, width = spec.image_shape
        layers = [nn.Conv2d(c_in, channels, 3, padding=1)]
        for width_in, width_out in ((channels, channels), (channels, 2 * channels)):
            layers += [ResidualBlock(width_in, activation) for _ in range(blocks)]
            layers += [nn.Conv2d(width_in, width_out, 4, stride=2, padding=1)]  # H → ⌊H/2⌋
        self.features = nn.Sequential(*layers, activation(), nn.Flatten())
        features = 2 * channels * quarter(height) * quarter(width)
        self.body = nn.Sequential(nn.Linear(features + spec.cond_dim, hidden), activation())
        self.head = GaussianHead(hidden, spec.z_dim)

    def forward(self, x, c=None):
        return self.head(self.body(with_condition(self.features(x), c)))


class ResConvDecoder(nn.Module):
    def __init__(self, spec, num_outputs, channels, blocks, hidden, activation):
        super().__init__()
        self.channels = channels
        self.out_shape = (num_outputs, *spec.image_shape)
        _, height, width = spec.image_shape
        self.grid = (-(-height // 4), -(-width // 4))
        self.body = nn.Sequential(
            nn.Linear(spec.z_dim + spec.cond_dim, hidden),
            activation(),
            nn.Linear(hidden, 2 * channels * self.grid[0] * self.grid[1]),
        )
        layers = []
        for width_in, width_out in ((2 * channels, channels), (channels, channels)):
            layers += [ResidualBlock(width_in, activation) for _ in range(blocks)]
            layers += [nn.ConvTranspose2d(width_in, width_out, 4, stride=2, padding=1)]  # ×2
        layers += [activation(), nn.Conv2d(channels, num_outputs * spec.image_shape[0], 3, padding=1)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z, c=None):
        h = self.body(with_condition(z, c))
        lead = h.shape[:-1]
        out = self.deconv(h.reshape(-1, 2 * self.channels, *self.grid))[..., : self.out_shape[2], : self.out_shape[3]]
        return out.reshape(*lead, *self.out_shape)


@NETWORKS.register("resconv")
class ResConv(nn.Module):
    """A residual convolutional encoder/decoder for images [C, H, W] of any size from 4 × 4, the default of
    the colour config: a 3×3 convolution to ``channels``, then twice ``blocks`` residual blocks of two 3×3
    convolutions (He et al. 2016; the block the ResNet VAEs of Kingma et al. 2016 stack) and a stride-2
    4×4 convolution (H → ⌊H/2⌋ → ⌊H/4⌋, ``channels`` then 2 × ``channels``), a hidden layer; the decoder
    mirrors it with transposed convolutions and crops to H × W."""

    def __init__(
        self,
        spec,
        num_outputs,
        *,
        channels: Annotated[int, Range(1, 1024)] = 64,
        blocks: Annotated[int, Range(1, 16)] = 2,
        hidden: Size = 512,
        activation: str = "relu",
    ):
        super().__init__()
        if len(spec.image_shape) != 3:
            raise PyroVAEError(
                f"the resconv network generates whole images [C, H, W], not {spec.image_shape} (points, or a condition "
                "on part of the image, which generates the missing pixels only); use the mlp network"
            )
        if min(spec.image_shape[1:]) < 4:
            raise PyroVAEError(f"the resconv network needs images of 4 × 4 pixels or more, got {spec.image_shape}")
        act = activation_class(activation)
        self.encoder = ResConvEncoder(spec, channels, blocks, hidden, act)
        self.decoder = ResConvDecoder(spec, num_outputs, channels, blocks, hidden, act)
