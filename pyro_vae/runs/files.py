"""The project's own files: atomic writes that respect the umask, early write and free-space checks,
and the lock that keeps two processes from training one run folder. Every operating-system error on
these files becomes a one-line ``PyroVAEError`` naming the path and the cause."""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from ..errors import PyroVAEError


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


def os_error(action, path, error):
    """A one-line ``PyroVAEError`` for an ``OSError`` met while doing ``action`` on ``path``."""
    return PyroVAEError(f"cannot {action} {path}: {error.strerror or error}")


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path beside ``path`` to write the whole file into; once the block ends the
    file is fsynced and renamed onto ``path``, so ``path`` is never half written. On any error the
    temporary is removed. The file gets the mode a plain ``open`` would give it (0666 less the umask)."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~UMASK)
        os.close(fd)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise os_error("write", path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path, data):
    """Write bytes or text to ``path`` whole or not at all (``atomic_file``)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def read_json(path):
    """The JSON file at ``path`` (None where there is none)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise PyroVAEError(f"{path} cannot be read ({type(e).__name__}); evaluate the run again") from None


def check_writable(folder):
    """Refuse, before any work, a folder that files cannot be written into (missing, not a folder,
    read-only, or out of space for a new file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PyroVAEError(f"cannot write into {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise os_error("write into", folder, e) from None


def make_folder(folder):
    """Create ``folder`` (and its parents) where it is missing and check that files can be written into it,
    before any work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error("create", folder, e) from None
    check_writable(folder)


def check_space(folder, size, what):
    """Refuse, before any work, ``what`` (a file of ``size`` bytes) where ``folder``'s file system has less free."""
    free = shutil.disk_usage(folder).free
    if size > free:
        raise PyroVAEError(f"{what} need {size_text(size)} in {folder}, which has {size_text(free)} free")


def size_text(size):
    """``size`` bytes for a reader: '512 B', '3.4 MiB', '25.6 GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


class RunLock:
    """A lock on a run folder: exclusive while a process trains, resumes or replaces the run; shared
    while a command reads it and adds its results (evaluate, sample, compare, gradvar), so that no
    run is replaced under a command that is reading it.

    It is ``flock`` on ``RUN/.lock``, opened without following a link (a link there is refused, never
    written through): the kernel releases it when the holder exits, however it exits, so a lock left by a
    killed process is free to take. The exclusive holder writes its name (PID and host) into the file for
    the error message of a second process. A reader of a folder it cannot create the file in (read-only)
    goes without: no one can write there either.
    """

    def __init__(self, run_dir, shared=False):
        self.path = Path(run_dir) / ".lock"
        self.shared = shared
        self.fd = None

    def open(self):
        flags = os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PyroVAEError(
                    f"{self.path} is a symbolic link; pyro-vae never writes through a link in a run folder: remove it"
                ) from None
            if self.shared and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                try:
                    return os.open(self.path, os.O_RDONLY | flags)
                except FileNotFoundError:
                    return None
                except OSError:
                    pass
            raise os_error("lock", self.path.parent, e) from None

    def acquire(self):
        fd = self.open()
        if fd is None:
            return self
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            trained = self.shared or not self.readers_only(fd)
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() if trained else ""
            os.close(fd)
            if self.shared:
                raise PyroVAEError(
                    f"run {self.path.parent} is being trained or replaced by {holder or 'another process'}; "
                    "wait for it to finish or stop it first"
                ) from None
            raise PyroVAEError(
                f"run {self.path.parent} is in use by {holder or 'a command that reads it (evaluate, sample, compare, gradvar)'}; "
                "wait for it to finish or stop it first"
            ) from None
        if not self.shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, which trains it\n".encode(), 0)
        self.fd = fd
        return self

    @staticmethod
    def readers_only(fd):
        """Whether the lock on ``fd``'s file is held by readers alone (a shared lock can still be taken)."""
        probe = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(probe)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
