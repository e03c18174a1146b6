"""One driver per study: a lease in the study's attributes, renewed while a search runs.

A search takes the lease before it touches any trial and renews it from a background thread;
another driver (a second ``--resume``) is refused while the lease is fresh, so it can neither
mark the first driver's children as interrupted nor run a generation twice. A lease whose
holder is gone is taken over: at once when the holder was a process on this host that no
longer exists (a killed search), otherwise once it is ``LEASE_SECONDS`` old.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from types import TracebackType

import optuna

from morphnas.errors import StudyError

LEASE_SECONDS = 60.0
ATTR = "driver"


class DriverLease:
    """The lease of ``study`` for this process: :meth:`acquire`, then ``with lease:`` renews and releases it."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, force: bool = False) -> None:
        """Take the lease, or raise StudyError naming the driver that holds it; ``force`` takes
        it from a holder that still looks alive (the user knows it is gone)."""
        held = self.study.user_attrs.get(ATTR)
        if held and not force and _alive(held) and {k: held.get(k) for k in self.me} != self.me:
            age = time.time() - float(held["renewed"])
            raise StudyError(
                f"study {self.study.study_name!r} is being run by another driver (pid {held['pid']} on "
                f"{held['host']}, renewed {age:.0f} s ago); resume it once that search has ended or was stopped "
                f"(--force takes it over, if you know that driver is gone)"
            )
        self._renew()

    def _renew(self) -> None:
        self.study.set_user_attr(ATTR, {**self.me, "renewed": time.time()})

    def _loop(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 6):
            self._renew()

    def __enter__(self) -> DriverLease:
        self._thread = threading.Thread(target=self._loop, name="morphnas-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.study.set_user_attr(ATTR, None)


def _alive(held: dict) -> bool:
    """Whether the lease ``held`` may still belong to a running driver."""
    if time.time() - float(held.get("renewed", 0.0)) > LEASE_SECONDS:
        return False
    if held.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that pid: still running
        return True
    return True
