"""torchrun's workers on this machine, read from the environment and ``/proc`` alone: the command line
asks while a signal may have stopped it halfway through importing torch, so nothing here imports it."""

import os


def ended_ranks():
    """The ranks on this machine whose processes are gone while this one runs (torchrun's workers are the
    children of one agent; a worker that ended and was reaped has left ``/proc``). [] without torchrun or
    where ``/proc`` cannot tell; a worker that is exiting now (a zombie) still counts as running."""
    try:
        local_size = int(os.environ["LOCAL_WORLD_SIZE"])
        first = int(os.environ["RANK"]) - int(os.environ["LOCAL_RANK"])
        parent, running = os.getppid(), set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                if int(fields[1]) != parent:
                    continue
                with open(f"/proc/{entry}/environ", "rb") as f:
                    variables = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
                running.add(int(variables[b"RANK"]) if b"RANK" in variables else -1)
                if fields[0] == "Z":  # exiting now, its environment already gone: not one that ended first
                    return []
            except (OSError, ValueError, KeyError, IndexError):
                continue
    except (KeyError, ValueError, OSError):
        return []
    return sorted(set(range(first, first + local_size)) - running)


def ended_first():
    """ "process 1 of this run ended first" for the ranks ``ended_ranks`` finds, or None where it finds none."""
    ended = ended_ranks()
    if not ended:
        return None
    return f"process{'es' * (len(ended) > 1)} {', '.join(map(str, ended))} of this run ended first"
