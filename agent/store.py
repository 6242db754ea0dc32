"""The run directory: one campaign, one folder, everything a later command needs.

```
RUN/
  spec.yaml        the resolved spec (every default written out)
  state.json       the state machine, written atomically (temp file + fsync + rename)
  data.db          ASE SQLite database: every structure labelled or tried, with provenance
  run.lock         held (flock) by the process driving the run; released even on kill -9
  iterations/NNN/  member checkpoints, calibration, exploration summary, selection
```

Files and directories of a run are never group or world writable (group and others may read
them, so users can share runs): creating or opening a store adds ``0o022`` to the process umask
(:func:`chemgap.common.files.restrict_umask`; a local Ray instance started afterwards, and its
workers, inherit it).

A run on a read-only directory can still be read (``status``, ``inspect``, ``report -o``);
driving it (:meth:`RunStore.lock`) refuses with a :class:`~chemgap.agent.errors.RunDirError`
saying so before anything is written. On a full disk every write fails whole: ``state.json`` is
replaced atomically and ``data.db`` rolls the failed row back, both raising ``OSError(ENOSPC)``
naming the file.

``ase db RUN/data.db`` lists the structures; labels are stored as the row's single-point results
(so ``energy`` and ``fmax`` show up there) and come back under the label keys of
:mod:`chemgap.common.keys` in ``atoms.info`` / ``atoms.arrays`` with no calculator attached.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from ase import Atoms
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from chemgap.agent.errors import RunDirError
from chemgap.agent.layout import (
    DB_FILE,
    ITERATIONS_DIR,
    LOCK_FILE,
    SPEC_FILE,
    STATE_FILE,
    RunLayout,
)
from chemgap.campaigns.spec import CampaignSpec, dump_spec, parse_spec
from chemgap.common.files import (
    atomic_write_text,
    make_dirs,
    raise_if_disk_full,
    restrict_umask,
    why_unwritable,
)
from chemgap.common.keys import (
    ENERGY_KEY,
    FORCES_KEY,
    STRESS_KEY,
    structure_key,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# provenance keys every row of data.db carries (ase.db key-value pairs)
PROVENANCE_KEYS = ("iteration", "source", "walker", "temperature_K", "oracle", "status", "seconds")


class RunStatus(StrEnum):
    """Where a run stands: running, done, failed (runtime error) or interrupted."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


LOOP_STEPS = ("train", "calibrate", "explore", "probe", "select", "label", "evaluate")
"""An iteration's steps in order (:data:`chemgap.agent.loop.steps.STEPS` runs them)."""

# the campaign's steps as state.json may name them (chemgap.agent.loop's state machine)
Step = Literal[("init", "initial_labels", *LOOP_STEPS)]


class HistoryRow(BaseModel):
    """One row of ``state.json``'s history: what the evaluate step of an iteration recorded.

    The fields the state machine reads back (the stop check, ``status``, the summary) are typed
    here; the row's other figures (test-set errors per part and kind, region counts) are kept
    as written.
    """

    model_config = ConfigDict(extra="allow")

    iteration: int = Field(ge=1)
    labels_ok: int = Field(ge=0)
    labels_failed: int = Field(ge=0)
    oracle_calls: int = Field(ge=0, description="outside the test set and the isolated atoms")
    oracle_calls_test: int = Field(0, ge=0)
    oracle_calls_e0: int = Field(0, ge=0, description="isolated atoms (reference energies E0)")
    energy_mae_per_atom: float = Field(ge=0, description="holdout, eV/atom")
    force_mae: float = Field(ge=0, description="holdout, eV/Å")
    accurate: float = Field(ge=0, le=1, description="fraction of explored frames")
    candidate: float = Field(ge=0, le=1, description="fraction of explored frames")
    failed: float = Field(ge=0, le=1, description="fraction of explored frames")
    elapsed_s: float = Field(ge=0, description="campaign wall time at the row, s")
    regions: int | None = Field(None, ge=0)
    silent_regions: int | None = Field(None, ge=0)
    diagnosis_error: str | None = None
    regions_tentative: bool = Field(False, description="the model missed its ID target")
    probes_run: int | None = Field(None, ge=0, description="probes run this iteration")
    probes_failed: list[str] | None = Field(None, description="failed a bound or raised")
    probes_passed: bool | None = Field(None, description="every probe run passed")


def _typed_row(row: dict[str, Any]) -> dict[str, Any]:
    """A history row checked against :class:`HistoryRow` (as a dict, extra figures kept)."""
    try:
        return HistoryRow.model_validate(row).model_dump()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise PydanticCustomError(
            "history_row", "{field}: {msg}", {"field": field, "msg": first["msg"]}
        ) from None


class RunState(BaseModel):
    """``state.json``: where the campaign's state machine stands."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    chemgap_version: str
    campaign: str
    status: RunStatus = RunStatus.RUNNING
    iteration: int = Field(0, ge=0, description="current iteration (0: initial labelling)")
    step: Step = Field("init", description="the last step finished ('init': none yet)")
    stop_reason: str | None = None
    created: float = Field(default_factory=time.time, description="Unix time, s")
    updated: float = Field(default_factory=time.time, description="Unix time, s")
    host: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)
    history: list[Annotated[dict[str, Any], AfterValidator(_typed_row)]] = Field(
        default_factory=list, description="per-iteration metrics (:class:`HistoryRow`)"
    )
    elapsed_s: float = Field(
        0.0, ge=0, description="campaign wall time so far, summed over resumes"
    )
    timings: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="iteration -> step -> wall seconds"
    )

    @model_validator(mode="after")
    def _history_within(self) -> RunState:
        its = [row["iteration"] for row in self.history]
        if any(b <= a for a, b in itertools.pairwise(its)):
            raise ValueError(f"history: iterations must be strictly increasing, got {its}")
        if self.history and self.history[-1]["iteration"] > self.iteration:
            raise ValueError(
                f"history: has iteration {self.history[-1]['iteration']} beyond the state's "
                f"iteration {self.iteration}"
            )
        return self


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chemgap")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class RunStore:
    """A campaign's run directory. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, root: Path, spec: CampaignSpec, state: RunState):
        self.root = root
        self.spec = spec
        self.state = state
        self._db: Any = None
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, root: str | Path, spec: CampaignSpec) -> RunStore:
        """Make a new run directory for ``spec``. ``root`` must be missing or empty.

        Raises:
            RunDirError: ``root`` holds something else, or it (or the directory it would be
                made in) cannot be written.
        """
        root = Path(root)
        restrict_umask()
        if root.exists():
            if not root.is_dir():
                raise RunDirError(f"{root} is a file, not a run directory")
            if (root / STATE_FILE).exists():
                raise RunDirError(
                    f"{root} already holds a chemgap run; continue it with "
                    f"'chemgap resume {root}' or choose another --out"
                )
            if any(root.iterdir()):
                raise RunDirError(
                    f"{root} is a non-empty directory that is not a chemgap run; "
                    "refusing to write into it (choose an empty or new --out)"
                )
        _require_creatable(root)
        made_root = not root.exists()
        store = cls(root, spec, RunState(chemgap_version=_version(), campaign=spec.name))
        try:
            make_dirs(root / ITERATIONS_DIR)
            atomic_write_text(root / SPEC_FILE, dump_spec(spec))
            store.db.count()  # creates data.db with its tables
            store.write_state()  # last: a directory with state.json is a complete run
        except BaseException:  # a full disk, say: leave the directory as it was found
            _remove_partial(root, made_root)
            raise
        log.info("created run %s", root)
        return store

    @classmethod
    def open(cls, root: str | Path) -> RunStore:
        """Open an existing run; refuse (``RunDirError``) anything that is not a readable one.

        Opening reads only: nothing in the directory changes until the caller writes (the
        process umask loses group/world write, see the module's docstring). A read-only run
        opens; :meth:`lock` (driving it) refuses.
        """
        root = Path(root)
        restrict_umask()
        state = read_state(root)
        try:
            import yaml

            data = yaml.safe_load((root / SPEC_FILE).read_text())
            spec = parse_spec(data, source=str(root / SPEC_FILE), base_dir=root)
        except FileNotFoundError:
            raise RunDirError(
                f"{root} has state.json but no spec.yaml; the run is incomplete"
            ) from None
        except ValueError as exc:
            raise RunDirError(f"{root / SPEC_FILE} is not a valid spec: {exc}") from None
        return cls(root, spec, state)

    # ------------------------------------------------------------------ state
    def write_state(self, **changes: Any) -> RunState:
        """Apply ``changes`` to the state and write ``state.json`` atomically.

        Raises:
            OSError: the file could not be written (a full disk: ``ENOSPC``); ``state.json``
                and :attr:`state` are then left as they were.
        """
        data = self.state.model_dump()
        data.update(changes, updated=time.time(), pid=os.getpid(), host=socket.gethostname())
        state = RunState.model_validate(data)
        atomic_write_text(self.root / STATE_FILE, state.model_dump_json(indent=2) + "\n")
        self.state = state
        return state

    def try_write_state(self, **changes: Any) -> bool:
        """:meth:`write_state`, but a failed write is logged instead of raised.

        For recording how a run ended while another error propagates (on a full disk the
        record itself may not fit): that error stays the one the caller sees, and the previous
        ``state.json`` stays whole.

        Returns:
            True when ``state.json`` was written.
        """
        try:
            self.write_state(**changes)
        except OSError as exc:
            log.warning(
                "could not record %s in %s (%s); it keeps its previous state",
                changes.get("status", "the state"),
                self.root / STATE_FILE,
                exc,
            )
            return False
        return True

    def require_writable(self) -> None:
        """Refuse (``RunDirError``) when the run directory cannot be written.

        Raises:
            RunDirError: the directory is on a read-only file system or not writable by this
                user; nothing was written.
        """
        reason = why_unwritable(self.root)
        if reason is not None:
            raise RunDirError(
                f"{self.root} is read-only ({reason}), so chemgap cannot continue the run "
                "there; copy the directory somewhere writable and resume the copy"
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock while driving it; a second driver gets a clear error.

        ``state.json`` is read again once the lock is held: the state the holder acts on is
        never one read before another driver's last write.

        Raises:
            RunDirError: another process drives the run, or its directory is read-only
                (:meth:`require_writable`).
        """
        self.require_writable()
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"{self.root} is being driven by another chemgap process") from None
        self._lock_fd = fd
        try:
            # what another process wrote before we held the lock is the state we continue
            self.state = read_state(self.root)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ data.db
    @property
    def db(self) -> Any:
        """The ASE SQLite database (``ase.db.core.Database``)."""
        if self._db is None:
            from ase.db import connect

            self._db = connect(str(self.root / DB_FILE), type="db", append=True)
        return self._db

    def add(self, atoms: Atoms, **provenance: Any) -> int:
        """Write one structure (labelled or not) with its provenance; returns the row id.

        Labels are read from the keys of :mod:`chemgap.common.keys` (energy, forces, stress);
        ``status`` is ``'ok'``, a failure category, or ``'pending'``. Each call commits, so a
        crash after it loses nothing.
        """
        from ase.calculators.singlepoint import SinglePointCalculator

        row_atoms = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        results = {}
        if ENERGY_KEY in atoms.info:
            results["energy"] = float(atoms.info[ENERGY_KEY])
        if FORCES_KEY in atoms.arrays:
            results["forces"] = np.asarray(atoms.arrays[FORCES_KEY], dtype=float)
        if STRESS_KEY in atoms.info:
            results["stress"] = np.asarray(atoms.info[STRESS_KEY], dtype=float)
        if results:
            row_atoms.calc = SinglePointCalculator(row_atoms, **results)
        kvp = {k: _kvp_value(v) for k, v in provenance.items() if v is not None}
        kvp.setdefault("status", atoms.info.get("label_status", "ok" if results else "pending"))
        kvp["key"] = structure_key(atoms)
        data = {}
        if msg := atoms.info.get("label_message"):
            data["message"] = str(msg)
        try:
            return self.db.write(row_atoms, key_value_pairs=kvp, data=data)
        except sqlite3.OperationalError as exc:  # rolled back: the database holds no half row
            raise_if_disk_full(exc, self.root / DB_FILE)
            raise

    def has(self, atoms: Atoms) -> bool:
        """True when data.db already holds this structure (any status but pending)."""
        key = structure_key(atoms)
        return any(row.get("status") != "pending" for row in self.db.select(key=key))

    def structures(self, **query: Any) -> list[Atoms]:
        """Rows matching ``query`` (ase.db selection) as Atoms with REF_ keys and provenance in
        ``atoms.info``; no calculator attached.
        """
        return [row_to_atoms(row) for row in self.db.select(**query)]

    def label_counts(self) -> dict[str, int]:
        """``{"ok": n, "failed": n}``: rows labelled, and rows whose oracle call failed."""
        return label_counts(self.root / DB_FILE)

    # ------------------------------------------------------------------ iterations
    def iteration_dir(self, iteration: int, *, create: bool = True) -> Path:
        """``iterations/NNN`` of ``iteration`` (made unless ``create`` is False)."""
        path = RunLayout(self.root).iteration(iteration).path
        if create:
            make_dirs(path)
        return path


def _remove_partial(root: Path, made_root: bool) -> None:
    """Remove what a failed :meth:`RunStore.create` wrote (its own files only, in a directory
    that was missing or empty), and ``root`` itself when it made it.
    """
    import shutil

    with contextlib.suppress(OSError):
        shutil.rmtree(root / ITERATIONS_DIR, ignore_errors=True)
        for name in (SPEC_FILE, STATE_FILE, DB_FILE, f"{DB_FILE}-journal", f"{DB_FILE}-wal"):
            (root / name).unlink(missing_ok=True)
        if made_root:
            root.rmdir()


def _require_creatable(root: Path) -> None:
    """Refuse (``RunDirError``) a run directory that could not be written: ``root`` itself when
    it exists, else the nearest directory above it that does.
    """
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return  # mkdir says what is wrong
    reason = why_unwritable(existing)
    if reason is None:
        return
    where = "it" if existing == root else str(existing)
    raise RunDirError(f"cannot write the run directory {root}: {where} is read-only ({reason})")


def _kvp_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def row_to_atoms(row: Any) -> Atoms:
    """An ase.db row as Atoms with labels under REF_ keys and provenance in ``info``."""
    atoms = Atoms(row.numbers, row.positions, cell=row.cell, pbc=row.pbc)
    if row.get("energy") is not None:
        atoms.info[ENERGY_KEY] = float(row.energy)
    if row.get("forces") is not None:
        atoms.arrays[FORCES_KEY] = np.array(row.forces, dtype=float)
    if row.get("stress") is not None:
        atoms.info[STRESS_KEY] = np.array(row.stress, dtype=float)
    atoms.info.update(row.key_value_pairs)
    atoms.info["label_status"] = row.key_value_pairs.get("status", "ok")
    if row.data and "message" in row.data:
        atoms.info["label_message"] = row.data["message"]
    atoms.info["db_id"] = row.id
    return atoms


# ---------------------------------------------------------------------- read-only views
def read_state(root: Path) -> RunState:
    """Read and check ``RUN/state.json`` without changing anything; ``RunDirError`` otherwise."""
    if not root.exists():
        raise RunDirError(f"{root} does not exist")
    if not root.is_dir():
        raise RunDirError(f"{root} is a file, not a run directory")
    state_path = root / STATE_FILE
    if not state_path.exists():
        if not any(root.iterdir()):
            raise RunDirError(f"{root} is an empty directory, not a chemgap run")
        raise RunDirError(f"{root} is not a chemgap run: it has no {STATE_FILE}")
    try:
        raw = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{state_path} is corrupt ({exc}); the run was left unchanged") from None
    if not isinstance(raw, dict):
        raise RunDirError(
            f"{state_path} is corrupt (not a JSON object); the run was left unchanged"
        )
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise RunDirError(
            f"{root} was written by chemgap {raw.get('chemgap_version', '?')} with run format "
            f"{version!r}; this chemgap ({_version()}) reads format {FORMAT_VERSION} only"
        )
    try:
        return RunState.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise RunDirError(
            f"{state_path} is corrupt ({field}: {first['msg']}); the run was left unchanged"
        ) from None


def is_locked(root: Path) -> bool:
    """True while a chemgap process holds the run's lock (the run is being driven)."""
    path = root / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def label_counts(db_path: Path) -> dict[str, int]:
    """``{"ok": n, "failed": n}`` from a data.db, read-only (a missing db counts zero)."""
    counts = {"ok": 0, "failed": 0}
    if not db_path.exists():
        return counts
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=20)
    try:
        rows = con.execute(
            "SELECT value, COUNT(*) FROM text_key_values WHERE key = 'status' GROUP BY value"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        # an unreadable store is not "0 calls used": the budget check reads this
        raise RunDirError(f"{db_path} cannot be read as a chemgap database ({exc})") from None
    finally:
        con.close()
    for value, n in rows:
        if value == "ok":
            counts["ok"] += n
        elif value != "pending":
            counts["failed"] += n
    return counts
