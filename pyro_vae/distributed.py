"""Several processes, launched by ``torchrun``: the process group, each rank's share of a batch, and
the few collectives the trainer and the evaluator use.

One process (no ``torchrun``) is a world of size 1 and calls no collective. Under ``torchrun`` the
ranks join one group: gloo for CPU tensors, NCCL for CUDA tensors (one GPU per rank, ``cuda:LOCAL_RANK``).
Every collective has a time limit (``TIMEOUT``), so a rank whose peer died or hangs stops with one line
instead of waiting for ever; gloo notices a peer that died (its sockets close) at once.
"""

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import PyroVAEError, Reported
from .workers import ended_first

TIMEOUT = timedelta(seconds=120)


class PeerLost(PyroVAEError):
    """A collective failed: another process of the run died, hung, or stopped first."""


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self):
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def shard(self, start, stop):
        """This rank's slice [begin, end) of the examples start … stop − 1 of a global batch: N nearly equal
        contiguous parts (sizes differ by at most one), in rank order, so their union is the batch."""
        size = stop - start
        return start + size * self.rank // self.size, start + size * (self.rank + 1) // self.size


def launched():
    """Whether ``torchrun`` (or another launcher setting its variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def restart_count():
    """How many times ``torchrun --max-restarts`` has restarted this run's processes (0 at first)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def join():
    """Join the process group ``torchrun`` describes (once; no-op without ``torchrun``) and return the ``World``."""
    if not launched():
        return World()
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        try:
            # the launcher's store outlives a restart and holds the last attempt's addresses: a key prefix of
            # the attempt's own keeps the restarted ranks from dialling processes that are gone
            store, rank, size = next(dist.rendezvous("env://", timeout=TIMEOUT))
            store = dist.PrefixStore(f"pyro_vae/attempt{restart_count()}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as e:
            raise PeerLost(f"could not join the other processes ({first_line(e)})") from None
    return world()


def world():
    """The ``World`` of this process: size 1 unless a process group is running."""
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def leave():
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(device, world):
    """The device this rank uses: its own GPU ``cuda:LOCAL_RANK`` where ``device`` is CUDA, else ``device``."""
    device = torch.device(device)
    if device.type == "cuda" and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return device


def first_line(error):
    """The gist of a (gloo, NCCL, torch) error message: its first sentence, without a source location."""
    text = re.sub(r"^\[[^\]]*\.(cpp|cc|h):\d+\]\s*", "", str(error).strip().partition("\n")[0])
    return text.partition(". ")[0][:200]


def lost(error):
    """The one-line error for a failed collective, naming the processes of this machine that ended first."""
    who = ended_first() or "another process of this run stopped or timed out"
    return PeerLost(f"process {world().rank}: {who} ({first_line(error)})")


def is_collective_failure(error):
    """Whether a RuntimeError comes from a collective that lost its peers (gloo's or NCCL's words for it)."""
    return isinstance(error, dist.DistError) or any(
        word in str(error)
        for word in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out", "Timed out")
    )


@contextmanager
def collective():
    """A collective's failure (a peer died, hung or stopped first) raised as one ``PeerLost`` line
    (``dist.DistError`` is a RuntimeError)."""
    try:
        yield
    except RuntimeError as e:
        raise lost(e) from None


def all_sum(tensor):
    """Σ over ranks of ``tensor``, in place on every rank (the tensor itself with one process)."""
    if world().size > 1:
        with collective():
            dist.all_reduce(tensor)
    return tensor


def all_gather(obj):
    """[obj of rank 0, obj of rank 1, …] on every rank (a picklable object each; [obj] with one process)."""
    if world().size == 1:
        return [obj]
    gathered = [None] * world().size
    with collective():
        dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (what rank 0 read from disk, so other machines need no shared folder)."""
    if world().size == 1:
        return obj
    box = [obj]
    with collective():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def agreed_error(message):
    """The error for a mistake every rank finds alike (a NaN loss, a setting): rank 0's prints it, the others' do not."""
    return (PyroVAEError if world().main else Reported)(message)


def on_main(fn):
    """``fn()`` run by rank 0 alone (reading or creating run files), its result broadcast to every rank. An
    error of rank 0's stops every rank: rank 0 raises it, the others raise ``Reported`` and print nothing."""
    outcome = None
    if world().main:
        try:
            outcome = ("ok", fn())
        except (PyroVAEError, OSError) as e:
            broadcast(("error", str(e)))
            raise
    outcome = broadcast(outcome)
    if outcome[0] == "error":
        raise Reported(outcome[1])
    return outcome[1]
