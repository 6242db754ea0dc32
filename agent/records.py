"""Typed records of the files one iteration writes and the report reads back.

``state.json`` has :class:`chemgap.agent.store.RunState`; these are the others a later step or
the report reads: ``calibration.json`` (:class:`CalibrationRecord`), ``exploration.json``
(:class:`ExplorationRecord`), ``selection.json`` (:class:`SelectionRecord`) and the remediation
experiment's ``results.json`` (:class:`RemedyResultsRecord`). Each names the fields its readers
use and keeps every other field as written (``extra="allow"``), so a file written before a
field was added still reads, and a writer and its reader cannot drift apart silently: a missing
or mistyped field is one error naming the file and the field. Paths come from
:mod:`chemgap.agent.layout`; the JSON written is the same as before these records existed
(tests/test_layout.py reads a run written by an older chemgap).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chemgap.agent.errors import RunDirError
from chemgap.common.files import atomic_write_text


class _Record(BaseModel):
    """A JSON file of the run directory: read, validated, written atomically."""

    model_config = ConfigDict(extra="allow")
    _indent: int = 2

    @classmethod
    def read(cls, path: Path) -> Self:
        """The record in ``path``.

        Raises:
            RunDirError: the file is missing, not JSON, or lacks a field (which, in one line).
        """
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{path}: cannot be read ({exc})") from None
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise RunDirError(f"{path}: {field}: {first['msg']}") from None

    @classmethod
    def read_optional(cls, path: Path) -> Self | None:
        """The record in ``path``, or None when it is missing or unreadable (the report shows
        the part as not run).
        """
        try:
            return cls.read(path)
        except RunDirError:
            return None

    def to_dict(self) -> dict[str, Any]:
        """The record as written (fields never set are left out)."""
        return self.model_dump(exclude_unset=True)

    def write(self, path: Path) -> None:
        """Write the record atomically (:func:`chemgap.common.files.atomic_write_text`)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=self._indent, default=float))


class CalibrationRecord(_Record):
    """``iterations/NNN/calibration.json``: the calibrate step's fit, trust levels and checks.

    ``calibration`` is :meth:`chemgap.models.calibration.Calibration.to_dict`, ``trust`` is
    :meth:`chemgap.agent.trust.TrustLevels.to_dict`; ``holdout_errors`` the holdout's scores
    (:func:`chemgap.common.metrics.score`: eV/atom, eV/Å); ``checks`` the calibration checks on
    the fitting data, the holdout and the test set's ID and OOD parts; ``roles`` which split each
    number comes from; ``loop`` the same calibration also fitted on the loop's own labels (None
    before iteration 2).
    """

    calibration: dict[str, Any]
    trust: dict[str, Any]
    holdout_errors: dict[str, Any]
    checks: dict[str, Any] = Field(default_factory=dict)
    roles: dict[str, str] = Field(default_factory=dict)
    loop: dict[str, Any] | None = None


class ExplorationRecord(_Record):
    """``iterations/NNN/exploration.json``: what the explore step ran and found.

    ``counts``/``fractions`` are per group (seed kind and temperature) of explored frames:
    ``accurate`` (below the lower trust level), ``candidate`` (between), ``failed`` (above, or a
    failed walker); ``overall`` the fractions over every group.
    """

    walkers: int = Field(ge=0)
    steps: int = Field(ge=0, description="MD steps per walker asked for")
    walker_steps: int = Field(ge=0, description="MD steps the walkers ran, summed")
    graph_builds: int = Field(ge=0, description="neighbour-list rebuilds")
    candidates: int = Field(ge=0, description="frames written to candidates.extxyz")
    visited: int | None = Field(
        None, ge=0, description="frames written to visited.extxyz (None: a run of before)"
    )
    md_failures: int = Field(ge=0, description="walkers that failed")
    counts: dict[str, dict[str, int]]
    fractions: dict[str, dict[str, float]]
    overall: dict[str, float]


class SelectionRecord(_Record):
    """``iterations/NNN/selection.json``: how the select step chose the labelling batch.

    ``selected``, ``duplicates`` and ``reasons`` (why each chosen structure was chosen: the
    strategy's name or ``probe``) are absent when nothing was chosen. ``roles``: how many of the
    batch are holdout and calibration labels, drawn at random from ``roles_pool`` frames
    (``roles_from``: ``visited``, the uniform sample of the trajectories, or ``candidates``
    when it held too few); absent in runs written before roles were drawn apart.
    """

    candidates: int = Field(ge=0, description="candidates not yet in data.db")
    already_in_db: int = Field(ge=0)
    probe_candidates: int = Field(ge=0)
    batch: int = Field(ge=0, description="the most the budget allowed")
    selected: int | None = Field(None, ge=0)
    duplicates: int | None = Field(None, ge=0)
    reasons: list[str] | None = None
    roles: dict[str, int] | None = None
    roles_from: str | None = None
    roles_pool: int | None = Field(None, ge=0)


class RemedyResultsRecord(_Record):
    """``remedies/results.json``: the remediation experiment's summary
    (:func:`chemgap.agent.remedies.results.summarise`): one row per arm with each metric's
    mean, CI and values and its comparison with the control, the regions each arm fixed.
    """

    _indent: int = 1

    settings: dict[str, Any] = Field(default_factory=dict)
    arms: list[dict[str, Any]] = Field(default_factory=list)
    regions: list[dict[str, Any]] = Field(default_factory=list)
    metric_names: dict[str, str] = Field(default_factory=dict)
    probe_units: dict[str, Any] = Field(default_factory=dict)
