"""The ``remediation`` section: which remedies (:class:`RemedyName`) an experiment after the
loop compares, with what budget and repeats; the agent's arms are ``agent/remedies/arms.py``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator

from chemgap.models.config import LongRange

from .base import ELEMENTS, Section
from .probes.registry import ProbeName

__all__ = ["RemediationConfig", "RemedyName"]


class RemedyName(StrEnum):
    """Remediation strategies a remediation experiment compares (``chemgap.agent.remedies``)."""

    # data remedies: spend the same oracle budget on different structures
    UNCERTAINTY = "uncertainty"  # the loop continued: the most uncertain explored frames
    DIVERSE = "diverse"  # uncertain and spread out in descriptor space
    RANDOM = "random"  # the control: frames drawn uniformly from the same trajectories
    REGION = "region"  # frames whose atoms fall in a flagged failure region
    PROBE = "probe"  # structures from the probes' runs
    CELL_SIZE = "cell_size"  # larger supercells of the periodic seeds
    # model remedies: the same data, a different model or training
    TRANSFER = "transfer"  # members initialised from another model through an element map
    LONG_RANGE = "long_range"  # learned charges (coulomb) and/or D3 added to MACE
    DEEPER = "deeper"  # one more message-passing layer
    OBSERVATIONS = "observations"  # stress/virials fitted as well


class RemediationConfig(Section):
    """A remediation experiment after the loop (off unless ``remedies`` lists some).

    Every arm starts from the same base (the run's last iteration unless ``iteration`` says
    otherwise), trains with the same settings, and is repeated ``repeats`` times with different
    seeds; data arms spend ``budget`` oracle calls each, against the ``random`` control, model
    arms are compared with the base model retrained on the same data (``baseline``).

    The run's test set is split once per experiment, seeded and stratified by test kind, into
    a *guidance* part (``guidance_fraction`` of each kind), on which the base iteration's
    ensemble is diagnosed again to find the regions that steer the ``region`` arm, and a
    *scoring* part (the rest), on which every arm is scored: the regions that guide an arm
    are never found on the structures that score it. Each kind keeps at least
    ``min_per_part`` structures on each side, so a kind needs twice that many test structures.
    """

    remedies: list[RemedyName] = Field(default_factory=list, description="arms to compare")
    budget: int = Field(24, ge=1, le=10_000, description="oracle calls per data arm and repeat")
    repeats: int = Field(5, ge=1, le=50, description="repeats (seeds) per arm")
    iteration: int | None = Field(
        None, ge=1, description="the base iteration (default: the run's last)"
    )
    members: int | None = Field(
        None, ge=1, le=32, description="ensemble size of every arm (default: ensemble.members)"
    )
    max_epochs: int | None = Field(
        None, ge=1, description="epoch cap of every arm (default: ensemble.max_epochs)"
    )
    sizes: list[int] = Field(
        default_factory=list,
        description="training-set sizes of a data-size sweep of the model arms (empty: all)",
    )
    long_range: LongRange = Field(
        LongRange.COULOMB, description="what the long_range arm adds: coulomb, d3, coulomb+d3"
    )
    transfer_from: str | None = Field(
        None, description="transfer: model directory to start from (default: iteration 1's)"
    )
    element_map: str | None = Field(
        None, description="transfer: source=target elements, e.g. Si=Ge (needed by transfer)"
    )
    stress_weight: float = Field(1.0, gt=0, description="observations: loss weight of stress")
    cell_repeat: int = Field(2, ge=2, le=4, description="cell_size: supercell repetitions")
    probes: list[ProbeName] = Field(
        default_factory=list,
        description="probes every arm's ensemble is scored on (|model − oracle| per metric)",
    )
    guidance_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="share of each test kind whose diagnosis guides the region arm (the rest "
        "scores the arms)",
    )
    min_per_part: int = Field(
        2,
        ge=1,
        le=100,
        description="test structures of each kind at least on each side of the guidance/scoring "
        "split",
    )

    @field_validator("probes")
    @classmethod
    def _unique_probes(cls, value: list[ProbeName]) -> list[ProbeName]:
        return list(dict.fromkeys(value))

    @field_validator("remedies")
    @classmethod
    def _unique_remedies(cls, value: list[RemedyName]) -> list[RemedyName]:
        return list(dict.fromkeys(value))

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        if any(n < 2 for n in value):
            raise ValueError("every size must be ≥ 2 structures")
        return sorted(set(value))

    @field_validator("long_range")
    @classmethod
    def _adds_something(cls, value: LongRange) -> LongRange:
        if value == LongRange.NONE:
            raise ValueError("the long_range arm must add a term: coulomb, d3 or coulomb+d3")
        return value

    @field_validator("element_map")
    @classmethod
    def _map(cls, value: str | None) -> str | None:
        if value is None:
            return value
        for part in value.replace("->", "=").split(","):
            src, sep, dst = part.strip().partition("=")
            if not sep or src.strip() not in ELEMENTS or dst.strip() not in ELEMENTS:
                raise ValueError("expected SRC=DST pairs of chemical symbols, e.g. Si=Ge")
        return value
