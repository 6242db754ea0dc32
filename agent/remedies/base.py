"""What every arm of a remediation experiment starts from: one iteration of a finished run.

The base of iteration ``it`` is the model that iteration trained (``iterations/NNN/models``),
the labels it was trained and early-stopped on (train and holdout labels of earlier
iterations: the labels chosen in iteration ``it`` arrive after its training), the run's fixed
test set, and the failure regions its diagnosis flagged on that test set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ase import Atoms

if TYPE_CHECKING:
    from chemgap.agent.diagnostics.features import EnvironmentClasses
    from chemgap.agent.diagnostics.region import Region

from chemgap.agent.errors import RemedyRefused, RunDirError
from chemgap.agent.layout import IterationLayout, RunLayout
from chemgap.agent.store import RunStore
from chemgap.agent.structio import read_extxyz
from chemgap.campaigns.spec import CampaignSpec
from chemgap.common.keys import HOLDOUT_SPLIT, TEST_SPLIT, TRAIN_SPLIT

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Base:
    """One iteration of a run, as the common start of every arm.

    Attributes:
        root: the run directory.
        spec: its resolved spec.
        iteration: the base iteration.
        train: labelled training structures the base model saw (iteration < ``iteration``).
        holdout: labelled holdout structures of the same iterations (early stopping, the ID
            holdout score).
        test: the run's fixed labelled test set (never trained on).
        regions: the base iteration's failure regions (read from its ``regions.json``).
        environment: that diagnosis' environment classes, or None.
    """

    root: Path
    spec: CampaignSpec
    iteration: int
    train: list[Atoms]
    holdout: list[Atoms]
    test: list[Atoms]
    regions: list[Region] = field(default_factory=list)
    environment: EnvironmentClasses | None = None

    def atomic_energies(self) -> dict[str, float]:
        """Element -> E0 (eV) of the base iteration's model: every arm is built with them."""
        from chemgap.models.e0 import saved_atomic_energies

        return saved_atomic_energies(self.models_dir)

    @property
    def layout(self) -> IterationLayout:
        """The base iteration's paths."""
        return RunLayout(self.root).iteration(self.iteration)

    @property
    def iteration_dir(self) -> Path:
        """``iterations/NNN`` of the base iteration."""
        return self.layout.path

    @property
    def models_dir(self) -> Path:
        """The base model's directory."""
        return self.layout.models

    @classmethod
    def from_run(cls, run: str | Path, iteration: int | None = None) -> Base:
        """The base of ``run`` at ``iteration`` (default: its last evaluated iteration).

        Raises:
            RunDirError: not a chemgap run, no evaluated iteration, or ``iteration`` not one.
            RemedyRefused: the run has no test set to score the arms on.
        """
        store = RunStore.open(run)
        done = [int(h["iteration"]) for h in store.state.history]
        if not done:
            raise RunDirError(f"{store.root}: no iteration has finished yet; nothing to remedy")
        it = done[-1] if iteration is None else int(iteration)
        if it not in done:
            raise RunDirError(
                f"iteration {it} of {store.root} has not finished; finished: "
                f"{', '.join(map(str, done))}"
            )
        if not RunLayout(store.root).iteration(it).models.is_dir():
            raise RunDirError(f"{store.root}: iteration {it} has no models directory")
        labelled = store.structures(status="ok")
        before = [a for a in labelled if int(a.info.get("iteration", 0)) < it]
        test = [a for a in labelled if a.info.get("split") == TEST_SPLIT]
        if not test:
            raise RemedyRefused(
                f"{store.root} has no test set (test_set.per_kind is 0): a remediation "
                "experiment scores every arm on the run's fixed test set"
            )
        base = cls(
            root=store.root,
            spec=store.spec,
            iteration=it,
            train=[a for a in before if a.info.get("split") == TRAIN_SPLIT],
            holdout=[a for a in before if a.info.get("split") == HOLDOUT_SPLIT],
            test=test,
        )
        base._load_regions()
        log.info(
            "base: %s iteration %d, %d train, %d holdout, %d test structures, %d regions",
            store.root,
            it,
            len(base.train),
            len(base.holdout),
            len(test),
            len(base.regions),
        )
        return base

    def _load_regions(self) -> None:
        from chemgap.agent.diagnostics.features import EnvironmentClasses
        from chemgap.agent.diagnostics.storage import load_regions

        if not self.layout.regions_file.exists():
            return
        self.regions, payload = load_regions(self.layout.regions_file)
        env = payload.get("environment")
        self.environment = EnvironmentClasses.from_dict(env) if env else None

    def exemplars(self, region_id: str) -> list[Atoms]:
        """The stored exemplar structures of one region (empty when none were written)."""
        return read_extxyz(self.layout.region_structures(region_id))

    def seeds(self) -> list[Atoms]:
        """The campaign's seed structures (the same the loop started its walkers from)."""
        import numpy as np

        from chemgap.agent.seeds import generate_seeds

        rng = np.random.default_rng([self.spec.seed, 0])
        return generate_seeds(self.spec.system, rng, self.root)

    def elements(self) -> list[str]:
        """Every element of the campaign's seeds (the members' element set)."""
        return sorted(self.spec.elements(self.root))
