"""The run's test set in two parts: one finds the regions that guide the arms, one scores them.

The ``region`` arm is steered by failure regions, and every arm is scored on the run's fixed
test set, overall and inside those regions. Were the regions found on the structures that
score the arms, an arm would be aimed at the very atoms it is judged on, and a region's error
there would be inflated by its selection (it was flagged because its error was high on those
structures). So the test set is split once per experiment (:func:`split_test_set`: seeded,
stratified by test kind, ``remediation.guidance_fraction`` of each kind to guidance and at least
``remediation.min_per_part`` structures of each kind on each side):

- the **guidance** part: the base iteration's ensemble is diagnosed again on it alone (the
  diagnosis pipeline, :func:`chemgap.agent.diagnostics.diagnose.diagnose`, with the campaign's
  ``diagnostics`` settings and seed), and the regions it finds steer the ``region`` arm
  (:func:`chemgap.agent.remedies.pool.pick_region`, on the experiment's own exploration pool);
  these structures never score an arm;
- the **scoring** part: every arm is scored on it alone (overall, ID/OOD, and inside each
  guidance region, whose atoms there are those its rule selects on the scoring part's own
  features: :func:`scoring_masks`,
  :class:`~chemgap.agent.diagnostics.selector.RegionSelector`). A region that selects no atom
  of the scoring part is reported *not scorable*, with why, never dropped silently.

The split and the guidance diagnosis are files of the experiment (``split.json``,
``guidance/regions.json`` with ``guidance/regions/``; :class:`chemgap.agent.layout.RemediesLayout`);
an experiment continued in the same folder reads them back.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from chemgap.agent.errors import BadInput, RemedyRefused
from chemgap.agent.layout import RemediesLayout
from chemgap.common.files import atomic_write_text

if TYPE_CHECKING:
    from chemgap.agent.diagnostics.region import Region
    from chemgap.agent.diagnostics.result import DiagnosisResult
    from chemgap.agent.diagnostics.table import EnvironmentClasses
    from chemgap.agent.remedies.base import Base

log = logging.getLogger(__name__)

GUIDANCE, SCORING = "guidance", "scoring"


def kind_of(atoms: Atoms) -> str:
    """A test structure's kind (``info['test_kind']``, else its seed kind, else ``test``)."""
    return str(atoms.info.get("test_kind") or atoms.info.get("seed_kind") or "test")


@dataclass(kw_only=True)
class TestSplit:
    """One split of the run's test set (indices into :attr:`Base.test`, data.db order).

    Attributes:
        seed: the seed of the split's generator.
        fraction: the share of each kind that guides (``remediation.guidance_fraction``).
        min_per_part: the fewest structures of a kind on each side.
        guidance: indices of the structures whose diagnosis guides the region arm.
        scoring: indices of the structures every arm is scored on (the rest).
        db_ids: data.db id of every test structure (None where unknown), in test-set order.
        kinds: test kind of every test structure, in test-set order.
    """

    __test__ = False  # not a pytest class

    seed: list[int]
    fraction: float
    min_per_part: int
    guidance: list[int]
    scoring: list[int]
    db_ids: list[int | None]
    kinds: list[str]

    def part(self, name: str) -> list[int]:
        """The indices of part ``name`` (``guidance`` or ``scoring``)."""
        return self.guidance if name == GUIDANCE else self.scoring

    def per_kind(self, name: str) -> dict[str, int]:
        """Test kind -> structures of that kind in part ``name``."""
        return dict(sorted(Counter(self.kinds[i] for i in self.part(name)).items()))

    def structures(self, test: Sequence[Atoms], name: str) -> list[Atoms]:
        """The structures of part ``name``."""
        return [test[i] for i in self.part(name)]

    def to_dict(self) -> dict[str, Any]:
        """The split as ``split.json`` records it: per part the indices, data.db ids and the
        count per kind.
        """
        parts = {
            name: {
                "n": len(self.part(name)),
                "indices": list(self.part(name)),
                "db_ids": [self.db_ids[i] for i in self.part(name)],
                "per_kind": self.per_kind(name),
            }
            for name in (GUIDANCE, SCORING)
        }
        return {
            "seed": list(self.seed),
            "fraction": self.fraction,
            "min_per_part": self.min_per_part,
            "stratified_by": "test_kind",
            "n_test": len(self.kinds),
            **parts,
        }


def split_test_set(
    test: Sequence[Atoms], *, fraction: float, min_per_part: int, seed: Sequence[int]
) -> TestSplit:
    """Split ``test`` into guidance and scoring parts, stratified by :func:`kind_of`.

    Kind by kind (in name order, one generator seeded with ``seed``): a random permutation of the
    kind's structures, the first ``floor(fraction * n)`` (at least ``min_per_part``, at most
    ``n - min_per_part``) to guidance, the rest to scoring; each kind is on both sides, and an
    odd structure scores.

    Raises:
        RemedyRefused: a kind has fewer than ``2 * min_per_part`` structures, or the guidance
            part has fewer than 2 structures (a diagnosis needs 2).
    """
    kinds = [kind_of(a) for a in test]
    rng = np.random.default_rng(list(seed))
    guidance: list[int] = []
    scoring: list[int] = []
    short: dict[str, int] = {}
    for kind in sorted(set(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        n = len(idx)
        if n < 2 * min_per_part:
            short[kind] = n
            continue
        n_guide = min(max(int(np.floor(fraction * n)), min_per_part), n - min_per_part)
        order = rng.permutation(n)
        guidance += sorted(idx[j] for j in order[:n_guide])
        scoring += sorted(idx[j] for j in order[n_guide:])
    if short:
        have = ", ".join(f"{kind} has {n}" for kind, n in short.items())
        raise RemedyRefused(
            f"the test set is too small to split into a guidance part (which finds the regions) "
            f"and a scoring part (which scores the arms) with at least {min_per_part} structures "
            f"of each kind on each side ({have}): raise test_set.per_kind to "
            f"{2 * min_per_part} or lower remediation.min_per_part"
        )
    if len(guidance) < 2:
        raise RemedyRefused(
            f"the guidance part of the test set holds {len(guidance)} structure(s) and its "
            "diagnosis needs 2: raise test_set.per_kind or remediation.min_per_part"
        )
    return TestSplit(
        seed=[int(s) for s in seed],
        fraction=float(fraction),
        min_per_part=int(min_per_part),
        guidance=sorted(guidance),
        scoring=sorted(scoring),
        db_ids=[_db_id(a) for a in test],
        kinds=kinds,
    )


def _db_id(atoms: Atoms) -> int | None:
    value = atoms.info.get("db_id")
    return None if value is None else int(value)


@dataclass(kw_only=True)
class Guidance:
    """The split and what the guidance part's diagnosis found.

    Attributes:
        split: the test set's split.
        regions: the regions found on the guidance part (rank order): they steer the region arm
            and are scored on the scoring part.
        environment: that diagnosis' environment classes (a region's ``env`` names), or None.
        source: what was diagnosed, in words.
        result: the fresh diagnosis, not yet written (None when read back from the folder).
    """

    split: TestSplit
    regions: list[Region]
    environment: EnvironmentClasses | None
    source: str
    result: DiagnosisResult | None = None

    def write(self, layout: RemediesLayout) -> None:
        """``split.json`` and, when fresh, the guidance diagnosis (``guidance/regions.json``)."""
        from chemgap.agent.diagnostics.storage import write_regions

        if self.result is not None:
            write_regions(self.result, layout.guidance.path)
            self.result = None
        atomic_write_text(layout.split, json.dumps(self.record(layout), indent=1))

    def record(self, layout: RemediesLayout) -> dict[str, Any]:
        """What ``split.json`` holds: the split, the regions found on the guidance part and
        where that diagnosis is (relative to the experiment folder).
        """
        return {
            **self.split.to_dict(),
            "guidance_diagnosis": str(layout.guidance.regions_file.relative_to(layout.path)),
            "guidance_source": self.source,
            "regions_found": [r.id for r in self.regions],
        }


def _part_text(split: TestSplit, name: str) -> str:
    kinds = ", ".join(f"{kind} {n}" for kind, n in split.per_kind(name).items())
    return f"{len(split.part(name))} structures ({kinds})"


def guide(
    base: Base,
    split: TestSplit,
    ensemble: Callable[[], Any],
    layout: RemediesLayout,
) -> Guidance:
    """The regions that guide the experiment: the base iteration's ensemble diagnosed on the
    guidance part alone, or that diagnosis read back from ``layout`` when the folder holds one
    made on the same split.

    Args:
        base: the base (its test set, spec and iteration).
        split: the test set's split (:func:`split_test_set`).
        ensemble: returns the base ensemble (called only when a diagnosis is needed).
        layout: the experiment's folder.

    Raises:
        RemedyRefused: the guidance part cannot be diagnosed (too few usable structures).
    """
    from chemgap.agent.diagnostics.diagnose import diagnose
    from chemgap.agent.diagnostics.storage import load_regions
    from chemgap.agent.diagnostics.table import EnvironmentClasses

    source = (
        f"guidance part of the test set of {base.root} ({_part_text(split, GUIDANCE)}; "
        f"split seed {split.seed}): never scores an arm"
    )
    stored = _read_json(layout.split)
    if (
        stored is not None
        and _same_split(stored, split.to_dict())
        and layout.guidance.regions_file.exists()
    ):
        regions, payload = load_regions(layout.guidance.regions_file)
        env = payload.get("environment")
        environment = EnvironmentClasses.from_dict(env) if env else None
        log.info("guidance: %d regions read back from %s", len(regions), layout.guidance.path)
        return Guidance(split=split, regions=regions, environment=environment, source=source)
    structures = split.structures(base.test, GUIDANCE)
    try:
        result = diagnose(
            structures,
            ensemble(),
            base.spec.diagnostics,
            seed=base.spec.seed,
            iteration=base.iteration,
            source=source,
        )
    except BadInput as exc:
        raise RemedyRefused(
            f"the guidance part of the test set cannot be diagnosed: {exc}"
        ) from None
    log.info(
        "guidance: iteration %d's ensemble on %s: %d regions",
        base.iteration,
        _part_text(split, GUIDANCE),
        len(result.regions),
    )
    return Guidance(
        split=split,
        regions=list(result.regions),
        environment=result.environment,
        source=source,
        result=result,
    )


def _read_json(path: Any) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _same_split(stored: dict[str, Any], mine: dict[str, Any]) -> bool:
    return all(stored.get(k) == json.loads(json.dumps(v)) for k, v in mine.items())


def scoring_masks(
    base: Base, guidance: Guidance, ensemble: Any
) -> tuple[dict[str, list[bool]], dict[str, str]]:
    """Each guidance region's atoms on the scoring part, selected by its rule.

    The scoring part's features are rebuilt as the guidance diagnosis built its own (its
    settings and seed, the base model's charges, environment classes named after the guidance
    diagnosis' classes) and each rule is applied to them
    (:class:`~chemgap.agent.diagnostics.selector.RegionSelector`); no mask comes from a
    diagnosis of the scored structures.

    Returns:
        ``(masks, not_scorable)``: region id -> (n_scoring_atoms,) mask, for the regions with at
        least one atom on the scoring part; region id -> why not, for the others.
    """
    from chemgap.agent.diagnostics.region import as_region
    from chemgap.agent.diagnostics.selector import RegionSelector

    regions = [as_region(r) for r in guidance.regions]
    if not regions:
        return {}, {}
    scoring = guidance.split.structures(base.test, SCORING)
    selector = RegionSelector.rebuild(
        scoring,
        base.spec.diagnostics,
        seed=base.spec.seed,
        prediction=ensemble.predict(scoring),
        environment=guidance.environment,
    )
    masks: dict[str, list[bool]] = {}
    not_scorable: dict[str, str] = {}
    for r in regions:
        missing = selector.absent(r)
        if missing is not None:
            not_scorable[r.id] = f"its feature {missing!r} is absent from the scoring part"
            continue
        mask = selector.select(r)
        if mask.any():
            masks[r.id] = mask.tolist()
        else:
            not_scorable[r.id] = "its rule selects no atom of the scoring part"
    if not_scorable:
        log.info("regions not scorable on the scoring part: %s", not_scorable)
    return masks, not_scorable


def split_summary(guidance: Guidance, layout: RemediesLayout) -> dict[str, Any]:
    """What ``results.json`` says of the split (``test_split``): its seed and fraction, per
    part the count, data.db ids and count per kind, the regions found on the guidance part, and
    the files that record it (relative to the experiment folder).
    """
    record = guidance.split.to_dict()
    for name in (GUIDANCE, SCORING):
        record[name].pop("indices", None)
    record["regions_found"] = len(guidance.regions)
    record["file"] = str(layout.split.relative_to(layout.path))
    record["guidance_diagnosis"] = str(layout.guidance.regions_file.relative_to(layout.path))
    return record
