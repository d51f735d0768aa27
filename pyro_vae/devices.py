"""Devices: which one a setting names, and random streams forked so the caller's stay untouched."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .errors import PyroVAEError


def resolve_device(name):
    """torch.device for ``auto`` (the GPU where there is one), ``cpu`` or ``cuda``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise PyroVAEError(
            "device cuda was asked for (--device or train.device), but no CUDA GPU is available; "
            "use --device cpu or auto"
        )
    return torch.device(name)


def bfloat16_in_hardware(device):
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a GPU whose CUDA does so natively, a CPU with
    AVX-512 BF16 or AMX instructions. Elsewhere torch emulates bfloat16, and a matrix product in it runs several
    times slower than in float32. True where this torch cannot tell."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None) or all(probe is None for probe in probes)


def forked_rng(device):
    """``torch.random.fork_rng`` over the CPU's random stream and, on a GPU, ``device``'s: the caller's
    streams are as they were once the block ends."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def free_memory(device):
    """Bytes free on ``device``: the GPU's free memory, or the CPU's MemAvailable (inf where unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return float("inf")


class AllocatedBytes(TorchDispatchMode):
    """Counts the bytes of every new tensor storage that the operations inside the block create
    (views and in-place results share their input's storage and are not counted): an upper bound on
    the peak memory those operations held at once."""

    def __enter__(self):
        self.total = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.total += t.untyped_storage().nbytes()
        return out


def allocation_line(run):
    """(fixed, per_unit): ``run(n)`` allocates about fixed + n · per_unit bytes, counted by ``AllocatedBytes``
    over ``run(1)`` and ``run(2)`` (per_unit at least 1)."""
    counts = []
    for n in (1, 2):
        with AllocatedBytes() as counter:
            run(n)
        counts.append(counter.total)
    per_unit = max(1, counts[1] - counts[0])
    return max(0, counts[0] - per_unit), per_unit
