"""What every arm of a remediation experiment starts from: one iteration of a finished run.

The base of iteration ``it`` is the model that iteration trained (``iterations/NNN/models``),
the labels it was trained and early-stopped on (train and holdout labels of earlier
iterations: the labels chosen in iteration ``it`` arrive after its training) and the run's
fixed test set. The loop's own diagnosis of iteration ``it`` (``regions.json``) is not used:
it was made on the whole test set, which scores the arms. An experiment splits the test set
(:mod:`chemgap.agent.remedies.guidance`) and gives the base the regions found on its
guidance part (:meth:`Base.guided_by`); the arms are scored on the other part
(:attr:`Base.scoring`).
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
    from chemgap.agent.remedies.guidance import Guidance, TestSplit

from chemgap.agent.errors import RemedyRefused, RunDirError
from chemgap.agent.layout import IterationLayout, RunLayout
from chemgap.agent.store import RunStore
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
        test: the run's fixed labelled test set (never trained on), whole.
        split: its split into guidance and scoring parts (None until :meth:`guided_by`).
        regions: the regions that steer the ``region`` arm: found by diagnosing the base
            ensemble on the guidance part (:meth:`guided_by`); empty until then.
        environment: that diagnosis' environment classes, or None.
    """

    root: Path
    spec: CampaignSpec
    iteration: int
    train: list[Atoms]
    holdout: list[Atoms]
    test: list[Atoms]
    split: TestSplit | None = None
    regions: list[Region] = field(default_factory=list)
    environment: EnvironmentClasses | None = None

    def guided_by(self, guidance: Guidance) -> None:
        """Take the experiment's split and the regions its guidance part's diagnosis found."""
        self.split = guidance.split
        self.regions = list(guidance.regions)
        self.environment = guidance.environment

    def _part(self, name: str) -> list[Atoms]:
        if self.split is None:
            raise RuntimeError("the test set is not split yet (Base.guided_by)")
        return self.split.structures(self.test, name)

    @property
    def scoring(self) -> list[Atoms]:
        """The scoring part of the test set: every arm is scored on these structures only."""
        from chemgap.agent.remedies.guidance import SCORING

        return self._part(SCORING)

    @property
    def guiding(self) -> list[Atoms]:
        """The guidance part: the regions that steer the region arm were found on these, and
        they never score an arm.
        """
        from chemgap.agent.remedies.guidance import GUIDANCE

        return self._part(GUIDANCE)

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
        log.info(
            "base: %s iteration %d, %d train, %d holdout, %d test structures",
            store.root,
            it,
            len(base.train),
            len(base.holdout),
            len(test),
        )
        return base

    def seeds(self) -> list[Atoms]:
        """The campaign's seed structures (the same the loop started its walkers from)."""
        import numpy as np

        from chemgap.agent.seeds import generate_seeds

        rng = np.random.default_rng([self.spec.seed, 0])
        return generate_seeds(self.spec.system, rng, self.root)

    def elements(self) -> list[str]:
        """Every element of the campaign's seeds (the members' element set)."""
        return sorted(self.spec.elements(self.root))
