"""A diagnosis on disk: ``regions.json`` and ``regions/<id>.extxyz``, written crash-safely.

:func:`write_regions` stores a :class:`~chemgap.agent.diagnostics.result.DiagnosisResult` as
``regions.json`` (an object whose ``"regions"`` list ``chemgap status`` counts) and the
exemplars as ``regions/<id>.extxyz``, atomically and without replacing files it did not write
(:func:`check_regions_target`); :func:`load_regions` and :func:`load_previous` read it back
(regions as :class:`~chemgap.agent.diagnostics.region.Region`, through
:meth:`~chemgap.agent.diagnostics.region.Region.from_dict`). The paths are the layout's
(:class:`chemgap.agent.layout.DiagnosisLayout`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ase import Atoms

from chemgap.agent.diagnostics.region import Region
from chemgap.agent.diagnostics.result import PreviousDiagnosis
from chemgap.agent.diagnostics.table import EnvironmentClasses
from chemgap.agent.errors import BadInput
from chemgap.agent.layout import REGIONS_DIR, DiagnosisLayout

if TYPE_CHECKING:
    from chemgap.agent.diagnostics.result import DiagnosisResult

log = logging.getLogger(__name__)

# the only names write_regions puts into (and so may replace in) a regions/ folder
EXEMPLAR_NAME = re.compile(r"^R[0-9a-f]{8}\.extxyz$")
_NEW_PREFIX, _OLD_PREFIX = f".{REGIONS_DIR}.new-", f".{REGIONS_DIR}.old-"


def _diagnosis_file(path: str | Path) -> Path:
    """``regions.json`` itself, or the one in folder ``path``."""
    p = Path(path)
    return DiagnosisLayout(p).regions_file if p.is_dir() else p


def check_regions_target(out_dir: str | Path) -> None:
    """Refuse (``BadInput``) a folder whose ``regions.json`` / ``regions/`` chemgap did not write.

    :func:`write_regions` replaces ``regions/`` as a whole, so it may only replace one holding
    nothing but files named like its exemplars (``R`` + 8 hex digits + ``.extxyz``; chemgap
    owns that pattern); anything else there (``notes.txt``, a folder, a link) is a user's and
    is refused, naming the path. ``regions.json`` is replaced only when it is a chemgap
    regions file (a JSON object with ``format`` and ``regions``).
    """
    out = DiagnosisLayout(Path(out_dir))
    folder = out.regions_dir
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise BadInput(
            f"{folder}: is not a folder chemgap wrote; refusing to replace it with failure "
            "regions (move it away or write elsewhere with -o DIR)"
        )
    foreign = _foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise BadInput(
            f"{folder}: holds files chemgap did not write ({shown}); refusing to replace it "
            "with failure regions (move them away or write elsewhere with -o DIR)"
        )
    path = out.regions_file
    if path.exists() and not _is_regions_payload(path):
        raise BadInput(
            f"{path}: is not a chemgap regions file; refusing to overwrite it "
            "(move it away or write elsewhere with -o DIR)"
        )


def _foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` that :func:`write_regions` would not have written (sorted)."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_symlink() or not p.is_file() or not EXEMPLAR_NAME.match(p.name)
    )


def _is_regions_payload(path: Path) -> bool:
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and "format" in payload and "regions" in payload


def write_exemplars(folder: Path, exemplars: dict[str, list[Atoms]]) -> None:
    """Write ``folder/<id>.extxyz`` per region with exemplars, each file fsynced."""
    import ase.io

    for rid, images in exemplars.items():
        if not images:
            continue
        # the exemplars' name in the layout (regions/<id>.extxyz), in the folder being filled
        with open(folder / DiagnosisLayout(folder).region_structures(rid).name, "w") as f:
            ase.io.write(f, images, format="extxyz")
            f.flush()
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tidy(out: Path) -> None:
    """Undo what an interrupted :func:`write_regions` left in ``out``.

    A crash between its two renames leaves no ``regions/`` but a ``.regions.old-*``: that is
    the folder the (old) ``regions.json`` describes, so it goes back. Leftover temporary
    folders holding only exemplar names are removed; others are left alone.
    """
    folder = DiagnosisLayout(out).regions_dir
    olds = sorted(out.glob(f"{_OLD_PREFIX}*"), key=lambda p: p.stat().st_mtime)
    if not folder.exists() and olds and not _foreign_files(olds[-1]):
        os.replace(olds.pop(), folder)
    for stale in [*olds, *out.glob(f"{_NEW_PREFIX}*")]:
        if stale.is_dir() and not stale.is_symlink() and not _foreign_files(stale):
            shutil.rmtree(stale, ignore_errors=True)


def write_regions(result: DiagnosisResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/regions.json`` and ``out_dir/regions/<id>.extxyz``; returns the json path.

    Safe against a crash and against replacing a user's files:

    - :func:`check_regions_target` first: a ``regions/`` holding anything but exemplar files,
      or a ``regions.json`` that is not a chemgap one, is refused (``BadInput``), changing
      nothing;
    - the payload is serialised and the exemplars are written (fsynced) into a temporary
      folder next to ``regions/`` before anything is replaced: a failure there leaves the old
      ``regions.json`` and ``regions/`` as they were;
    - the new folder is swapped in by two renames (old -> ``.regions.old-*``, new ->
      ``regions/``), then ``regions.json`` is replaced atomically (temp file, fsync, rename),
      then the old folder is deleted. A crash between the renames is undone by the next call
      (:func:`_tidy`); a crash between the swap and the json leaves the new exemplars next to
      the old json until the next write.

    Stale exemplars of resolved regions go with the old folder.
    """
    from chemgap.common.files import atomic_write_text, current_umask

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_regions_target(out)
    _tidy(out)
    text = json.dumps(result.to_dict(), indent=1) + "\n"
    new = Path(tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=out))
    os.chmod(new, 0o777 & ~current_umask())  # mkdtemp makes it 0700: readable like the rest
    try:
        write_exemplars(new, result.exemplars)
        _fsync_dir(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    layout = DiagnosisLayout(out)
    folder = layout.regions_dir
    old = out / (_OLD_PREFIX + new.name.removeprefix(_NEW_PREFIX))
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    _fsync_dir(out)
    path = layout.regions_file
    atomic_write_text(path, text)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_regions(path: str | Path) -> tuple[list[Region], dict[str, Any]]:
    """Regions and the whole payload from ``regions.json`` (or a folder holding it).

    Raises:
        BadInput: the file is missing or is not a chemgap regions file.
    """
    p = _diagnosis_file(path)
    if not p.exists():
        raise BadInput(f"regions: {p} does not exist (run 'chemgap diagnose' first)")
    try:
        payload = json.loads(p.read_text())
        regions = [Region.from_dict(d) for d in payload["regions"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise BadInput(f"regions: {p} is not a chemgap regions file ({exc})") from None
    return regions, payload


def load_previous(path: str | Path) -> PreviousDiagnosis | None:
    """The diagnosis stored at ``path`` (``regions.json`` or its folder), as the next diagnosis
    (:func:`chemgap.agent.diagnostics.diagnose.diagnose`) and any reader of its regions take it.

    Returns None (logged) when there is none or it cannot be read: a diagnosis without a
    previous one starts the history afresh.
    """
    p = Path(path)
    if not _diagnosis_file(p).exists():
        return None
    try:
        regions, payload = load_regions(p)
        env = payload.get("environment")
        classes = EnvironmentClasses.from_dict(env) if env else None
    except (BadInput, KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring the previous diagnosis %s: %s", p, exc)
        return None
    return PreviousDiagnosis(
        regions=regions, environment=classes, iteration=payload.get("iteration")
    )


def export_exemplars(source: str | Path, dest: str | Path, region: str | None = None) -> list[Path]:
    """Copy exemplar extxyz files (all, or one region's) from a diagnosis folder to ``dest``."""
    src = Path(source)
    folder = DiagnosisLayout(src.parent if src.is_file() else src).regions_dir
    if not folder.is_dir():
        raise BadInput(f"--export: {folder} has no exemplars")
    files = sorted(folder.glob("*.extxyz"))
    if region is not None:
        files = [f for f in files if f.stem == region]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        shutil.copy2(f, dest / f.name)
        out.append(dest / f.name)
    return out
