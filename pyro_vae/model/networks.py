"""Encoder/decoder pairs chosen by name.

encoder(x [B, *image_shape], c [B, C] | None) → (loc, scale), each [B, z_dim], scale > 0: the
diagonal Gaussian q(z|x, y).
decoder(z [..., B, z_dim], c [B, C] | None) → outputs [..., B, num_outputs, *image_shape] that the
likelihood turns into p(x|z, y); leading particle dimensions of z are kept.
"""

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PyroVAEError
from ..registry import Range, Registry, Size
from .posteriors import GaussianHead

NETWORKS = Registry("network")
ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def activation_class(name):
    if name not in ACTIVATIONS:
        raise PyroVAEError(f"unknown activation {name!r}; valid choices: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def with_condition(h, c):
    """[h, c] along the last dimension, the leading dimensions of h and c broadcast against each other (the
    particle dims of h, or the enumerated labels of c [num_classes, 1, C])."""
    if c is None:
        return h
    shape = torch.broadcast_shapes(h.shape[:-1], c.shape[:-1])
    return torch.cat([h.expand(shape + h.shape[-1:]), c.expand(shape + c.shape[-1:])], dim=-1)


def mlp(sizes, activation):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


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
        h = x.flatten(-self.event_dims)
        if c is None or c.shape[:-1] == h.shape[:-1]:
            return super().forward(with_condition(h, c))
        # c broadcasts over x (M2's enumerated labels [C, 1, K] against x [B, D]): the first layer's product with
        # x once, W[x; c] + b = (W_x x + b) + W_c c, rather than once for every label
        first, width = self.body[0], h.shape[-1]
        h = F.linear(h, first.weight[:, :width], first.bias) + F.linear(c, first.weight[:, width:])
        return self.head(self.act(self.body[1:](h)))


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


def check_whole_images(network, spec):
    """Refuse, for the convolutional ``network``, data that are not whole images [C, H, W] of 4 × 4 or more."""
    if len(spec.image_shape) != 3:
        raise PyroVAEError(
            f"the {network} network generates whole images [C, H, W], not {spec.image_shape} (points, or a condition "
            "on part of the image, which generates the missing pixels only); use the mlp network"
        )
    if min(spec.image_shape[1:]) < 4:
        raise PyroVAEError(f"the {network} network needs images of 4 × 4 pixels or more, got {spec.image_shape}")


def decoder_grid(spec):
    """(⌈H/4⌉, ⌈W/4⌉): the grid a convolutional decoder starts from, two ×2 upsamplings below H × W or above it."""
    _, height, width = spec.image_shape
    return (-(-height // 4), -(-width // 4))


class ConvEncoder(nn.Module):
    """x → ``features`` (convolutions to 2·``channels`` maps of ⌊H/4⌋ × ⌊W/4⌋, flattened) → a hidden layer →
    (loc, scale) of q(z|x)."""

    def __init__(self, spec, features, channels, hidden, activation):
        super().__init__()
        _, height, width = spec.image_shape
        self.features = features
        self.body = nn.Sequential(
            nn.Linear(2 * channels * quarter(height) * quarter(width) + spec.cond_dim, hidden), activation()
        )
        self.head = GaussianHead(hidden, spec.z_dim)

    def forward(self, x, c=None):
        return self.head(self.body(with_condition(self.features(x), c)))


class ConvDecoder(nn.Module):
    """z → ``body`` (to 2·``channels`` maps on ``decoder_grid``) → ``deconv`` (up to 4⌈H/4⌉ × 4⌈W/4⌉) → the
    top-left H × W of it: any image size."""

    def __init__(self, spec, num_outputs, channels, body, deconv):
        super().__init__()
        self.channels = channels
        self.out_shape = (num_outputs, *spec.image_shape)
        self.grid = decoder_grid(spec)
        self.body, self.deconv = body, deconv

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
        check_whole_images("conv", spec)
        act = activation_class(activation)
        features = nn.Sequential(
            nn.Conv2d(spec.image_shape[0], channels, 4, stride=2, padding=1),
            act(),  # H → ⌊H/2⌋
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
            act(),  # → ⌊H/4⌋
            nn.Flatten(),
        )
        self.encoder = ConvEncoder(spec, features, channels, hidden, act)
        grid = decoder_grid(spec)
        body = nn.Sequential(
            nn.Linear(spec.z_dim + spec.cond_dim, hidden),
            act(),
            nn.Linear(hidden, 2 * channels * grid[0] * grid[1]),
            act(),
        )
        deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            act(),  # ×2
            nn.ConvTranspose2d(channels, num_outputs * spec.image_shape[0], 4, stride=2, padding=1),  # ×2
        )
        self.decoder = ConvDecoder(spec, num_outputs, channels, body, deconv)


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
        check_whole_images("resconv", spec)
        act = activation_class(activation)
        layers = [nn.Conv2d(spec.image_shape[0], channels, 3, padding=1)]
        for width_in, width_out in ((channels, channels), (channels, 2 * channels)):
            layers += [ResidualBlock(width_in, act) for _ in range(blocks)]
            layers += [nn.Conv2d(width_in, width_out, 4, stride=2, padding=1)]  # H → ⌊H/2⌋
        self.encoder = ConvEncoder(spec, nn.Sequential(*layers, act(), nn.Flatten()), channels, hidden, act)
        grid = decoder_grid(spec)
        body = nn.Sequential(
            nn.Linear(spec.z_dim + spec.cond_dim, hidden), act(), nn.Linear(hidden, 2 * channels * grid[0] * grid[1])
        )
        layers = []
        for width_in, width_out in ((2 * channels, channels), (channels, channels)):
            layers += [ResidualBlock(width_in, act) for _ in range(blocks)]
            layers += [nn.ConvTranspose2d(width_in, width_out, 4, stride=2, padding=1)]  # ×2
        layers += [act(), nn.Conv2d(channels, num_outputs * spec.image_shape[0], 3, padding=1)]
        self.decoder = ConvDecoder(spec, num_outputs, channels, body, nn.Sequential(*layers))
