"""One writer per run directory: ``RUN/.lock`` names the process that trains the run (pid, host,
start time), and a second ``train`` into it is refused with that name. A stale lock (its
process gone) is taken over on the host that wrote it, refused from another host; the file is
created with ``O_EXCL``, and takeovers on one host take turns under an ``flock``
(docs/reliability.md). Under torchrun rank 0 takes the lock for the job (``hold_run_lock``).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from depthattn.train.distributed import Distributed
from depthattn.train.run_dir import RunDir
from depthattn.utils.errors import DepthAttnError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """The process a lock file names."""

    pid: int
    host: str
    since: str  # when it took the lock, UTC, ISO 8601

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.since})"


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (signal 0: checked, nothing is sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


class RunLock:
    """The lock of one run directory, held from ``acquire`` to ``release``."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.path = run.lock_file
        self._created: list[Path] = []  # the folders acquire made, removed again if left empty
        self._held: Holder | None = None

    def holder(self) -> Holder | None:
        """The process the lock file names, or None when there is no lock file."""
        try:
            fields = json.loads(self.path.read_text(encoding="utf-8"))
            return Holder(int(fields["pid"]), str(fields["host"]), str(fields["since"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            raise DepthAttnError(f"{self.path} does not name the process that trains the run "
                                 f"({error!r}); if none does, remove it and train again") from None

    def acquire(self) -> None:
        """Take the lock, creating the run directory if needed; raise ValueError naming the
        process that holds it."""
        folder = self.run.path
        if folder.exists() and not folder.is_dir():
            raise DepthAttnError(f"run_dir {folder} is a file, not a folder; choose another run_dir")
        self._created = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder):
            holder = self.holder()
            if holder is not None:
                self._refuse_unless_stale(holder)
                log.warning("%s: taking over the lock of %s, which no longer runs", folder,
                            holder)
                self.path.unlink()
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            me = Holder(os.getpid(), socket.gethostname(), now)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # another host took it meanwhile
                raise DepthAttnError(f"run_dir {folder} was locked meanwhile by {self.holder()}; "
                                     f"choose another run_dir") from None
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(json.dumps(vars(me)) + "\n")
        self._held = me
        _HELD_HERE.add(self.path.resolve())

    def _refuse_unless_stale(self, holder: Holder) -> None:
        folder = self.run.path
        if holder.host != socket.gethostname():
            raise DepthAttnError(f"run_dir {folder} is locked by {holder}, another host, so whether "
                                 f"that process still trains it cannot be checked from here; if it "
                                 f"no longer runs, remove {self.path} and train again")
        # Our own pid in a lock this process does not hold: an earlier process had that pid (a
        # restarted container numbers its processes alike).
        ours = holder.pid == os.getpid() and self.path.resolve() not in _HELD_HERE
        if not ours and is_alive(holder.pid):
            raise DepthAttnError(f"run_dir {folder} is being trained by {holder}; wait for it to "
                                 f"end or stop it, or choose another run_dir (if pid {holder.pid} "
                                 f"does not train this run, remove {self.path})")

    def release(self) -> None:
        """Remove the lock file if it is still ours, and the folders ``acquire`` created if
        nothing was written into them."""
        if self._held is None:
            return
        _HELD_HERE.discard(self.path.resolve())
        with contextlib.suppress(ValueError):  # a file not ours is left as it is
            if self.holder() == self._held:
                self.path.unlink()
        self._held = None
        for folder in self._created:  # the run directory first, then its new parents
            if any(folder.iterdir()):
                break
            folder.rmdir()


# The lock files this process holds.
_HELD_HERE: set[Path] = set()


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Processes of this host take turns in this block (an flock on ``folder``)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        # Best effort: some network file systems lock only files open for writing; the lock
        # file itself is still created exclusively (O_EXCL) there.
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def hold_run_lock(run: RunDir, dist: Distributed) -> Iterator[None]:
    """The run's lock for the duration of the block: rank 0 takes it for the job and every
    rank raises rank 0's refusal, so all ranks go on, or stop, together."""
    lock = RunLock(run)
    refusal = None
    if dist.is_main:
        try:
            lock.acquire()
        except (ValueError, OSError) as error:  # OSError: e.g. run_dir cannot be created
            refusal = str(error)
    refusal = dist.broadcast(refusal)
    if refusal is not None:
        raise DepthAttnError(refusal)
    try:
        yield
    finally:
        if dist.is_main:
            lock.release()
