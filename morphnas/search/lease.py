"""One driver per study: a lease row in the study's database, renewed while a search runs.

A search takes the lease before it touches any trial and renews it from a background thread;
another driver (a second ``--resume``) is refused while the lease is fresh, so it can neither
mark the first driver's children as interrupted nor run a generation twice. A lease whose
holder is gone is taken over: at once when the holder was a process on this host that no
longer exists (a killed search), otherwise once it is ``LEASE_SECONDS`` old.

The lease is a row of its own small table (:data:`TABLE`, one row per study) beside Optuna's,
because each change to it must be one atomic statement, which Optuna's attribute API cannot
give: the first holder is an INSERT (the primary key lets only one of two racing drivers
in), a takeover an UPDATE guarded by the ``version`` it read (compare-and-swap: of two
drivers that both saw a dead holder, only one updates a row), a renewal and a release an
UPDATE or DELETE guarded by the holder. The same statements are atomic on SQLite and
PostgreSQL, so neither needs its own lock.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from types import TracebackType

import optuna
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from morphnas.errors import StudyError

LEASE_SECONDS = 60.0

TABLE = sa.Table(
    "morphnas_driver_lease", sa.MetaData(),
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("renewed", sa.Float, nullable=False),  # time.time() of the last renewal
    sa.Column("version", sa.Integer, nullable=False),  # +1 at every write: a takeover's compare-and-swap
)


class LeaseLost(StudyError):
    """Another driver took the study over (``--force``) while this one ran it."""


class DriverLease:
    """The lease of ``study`` for this process: :meth:`acquire`, then ``with lease:`` renews and releases it."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.engine = _engine(study)
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _row(self) -> sa.ColumnElement[bool]:
        return TABLE.c.study == self.study.study_name

    @property
    def _mine(self) -> sa.ColumnElement[bool]:
        return sa.and_(self._row, TABLE.c.host == self.me["host"], TABLE.c.pid == self.me["pid"])

    def holder(self) -> dict | None:
        """The lease's row (``host``, ``pid``, ``renewed``, ``version``), or None when nobody holds it."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(TABLE).where(self._row)).mappings().first()
        return dict(row) if row else None

    def acquire(self, force: bool = False) -> None:
        """Take the lease, or raise StudyError naming the driver that holds it; ``force`` takes
        it from a holder that still looks alive (the user knows it is gone)."""
        _create_table(self.engine)
        for _ in range(3):  # a lost race re-reads the row: its winner refuses us, or is gone too
            held = self.holder()
            if held is not None and not force and _alive(held) and not self._is_me(held):
                age = time.time() - float(held["renewed"])
                raise StudyError(
                    f"study {self.study.study_name!r} is being run by another driver (pid {held['pid']} on "
                    f"{held['host']}, renewed {age:.0f} s ago); resume it once that search has ended or was stopped "
                    f"(--force takes it over, if you know that driver is gone)"
                )
            if self._write(held):
                return
        raise StudyError(f"study {self.study.study_name!r}: other drivers keep taking its lease; try again")

    def _write(self, held: dict | None) -> bool:
        """Make this process the holder in one statement; False when another driver wrote first."""
        now = time.time()
        if held is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(TABLE).values(study=self.study.study_name, renewed=now, version=0,
                                                         **self.me))
            except IntegrityError:  # another driver inserted first
                return False
            return True
        swap = sa.update(TABLE).where(self._row, TABLE.c.version == held["version"])
        with self.engine.begin() as conn:
            return conn.execute(swap.values(renewed=now, version=TABLE.c.version + 1, **self.me)).rowcount == 1

    def _is_me(self, held: dict) -> bool:
        return (held["host"], held["pid"]) == (self.me["host"], self.me["pid"])

    def _renew(self) -> bool:
        """Renew the lease; False when another driver holds it now."""
        with self.engine.begin() as conn:
            renew = sa.update(TABLE).where(self._mine).values(renewed=time.time(), version=TABLE.c.version + 1)
            return conn.execute(renew).rowcount == 1

    def verify(self) -> None:
        """Raise :class:`LeaseLost`, naming the new holder, when another driver has taken the lease."""
        held = self.holder()
        if held is not None and not self._is_me(held):
            raise LeaseLost(
                f"another driver took over study {self.study.study_name!r} (pid {held['pid']} on {held['host']}, "
                f"with --force); this driver stopped"
            )

    def _loop(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 6) and self._renew():
            pass

    def __enter__(self) -> DriverLease:
        self._thread = threading.Thread(target=self._loop, name="morphnas-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Release the lease, if still ours. A search that failed after another driver took its
        study over (which fails its trials under it) ends with :class:`LeaseLost` instead."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self.engine.begin() as conn:
            conn.execute(sa.delete(TABLE).where(self._mine))
        if isinstance(exc, Exception):
            self.verify()


def _engine(study: optuna.Study) -> sa.Engine:
    """The SQLAlchemy engine of ``study``'s RDB storage (Optuna wraps it in a cache)."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise StudyError(f"a search needs an RDB storage (SQLite, PostgreSQL), not {type(storage).__name__}")
    return storage.engine


def _create_table(engine: sa.Engine) -> None:
    """Create :data:`TABLE` unless it exists; two drivers creating it at once may both try."""
    try:
        TABLE.create(engine, checkfirst=True)
    except DBAPIError:  # the other one created it between the check and the CREATE
        if not sa.inspect(engine).has_table(TABLE.name):
            raise


def _alive(held: dict) -> bool:
    """Whether the lease ``held`` may still belong to a running driver."""
    if time.time() - float(held["renewed"]) > LEASE_SECONDS:
        return False
    if held["host"] != socket.gethostname():
        return True
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that pid: still running
        return True
    return True
