"""The one way to apply a diagnosis' regions to structures: rebuild its features, select atoms.

A region's rule is a statement over the feature table its diagnosis built: the columns of
:func:`~chemgap.agent.diagnostics.features.compute_features` with the diagnosis' settings
(``diagnostics.environment_classes``, its seed), the model's predicted charges where it has
them (:func:`~chemgap.agent.diagnostics.features.with_model_charges`) and environment classes
named after the diagnosis' own
(:func:`~chemgap.agent.diagnostics.environment.match_environment_classes`).
Applying a region to structures means rebuilding that table on them the same way
(:func:`diagnosis_features`) and evaluating the rule on it (:class:`RegionSelector`). Every
place that does so goes through these two: the diagnosis itself (its table, and the previous
diagnosis' regions on it), the remediation experiment (the pool a data remedy draws from, the
test set each arm is scored on), and the report's chemiscope export.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.features import (
    compute_features,
    match_environment_classes,
    with_model_charges,
)
from chemgap.agent.diagnostics.region import Region
from chemgap.agent.diagnostics.rules import UnknownFeature, as_condition, rule_mask
from chemgap.agent.diagnostics.table import EnvironmentClasses, Features
from chemgap.campaigns.spec import DiagnosticsConfig

log = logging.getLogger(__name__)

__all__ = ["RegionSelector", "diagnosis_features"]


def diagnosis_features(
    structures: Sequence[Atoms],
    *,
    environment_classes: int = 8,
    seed: int = 0,
    prediction: Any | None = None,
    environment: EnvironmentClasses | Mapping[str, Any] | None = None,
    features: Features | None = None,
) -> Features:
    """The feature table a diagnosis builds of ``structures``.

    Args:
        structures: the structures; the table's rows are their atoms, in order.
        environment_classes: k of the environment family (``diagnostics.environment_classes``).
        seed: the diagnosis' seed (the environment family's KMeans).
        prediction: a prediction of ``structures`` (:class:`chemgap.models.predict.Prediction`);
            its ``charges_mean`` / ``charges_std`` (members with learned charges) become the
            ``pred_charge_e`` / ``charge_spread_e`` columns. None, or a model without charges:
            no charge columns.
        environment: the environment classes of the diagnosis whose regions are to be applied
            (or their ``regions.json`` form): the classes here take the names of the matching
            ones there. None: the classes keep the names they were computed with.
        features: a table :func:`compute_features` already made of ``structures`` (it is not
            computed again; the charges and the class names are still applied).

    Returns:
        The :class:`~chemgap.agent.diagnostics.table.Features` table.
    """
    if features is None:
        features = compute_features(structures, environment_classes=environment_classes, seed=seed)
    features = with_model_charges(
        features,
        getattr(prediction, "charges_mean", None),
        getattr(prediction, "charges_std", None),
    )
    if isinstance(environment, Mapping):
        environment = EnvironmentClasses.from_dict(environment) if environment else None
    if environment is not None:
        features = match_environment_classes(features, environment)
    return features


class RegionSelector:
    """The atoms of a feature table that each region's rule selects.

    **A rule naming a feature the table lacks selects no atom**, and a warning names the region
    and the feature. Rebuilt on other structures, a table can lack a column its diagnosis had:
    a functional-group flag where no atom has the group, a column that is constant (or empty)
    on these structures, the charges of a model without them. Such a rule selects nothing
    here; it is never an exception, so every caller gets a mask of the table's length, and
    :meth:`absent` says which feature was missing for a caller that reports it (a resolved
    region's note). (:func:`chemgap.agent.diagnostics.region.region_masks`, for a diagnosis'
    own regions on its own table, raises instead: there a missing column is a bug.)

    Attributes:
        features: the table the rules are evaluated on.
    """

    def __init__(self, features: Features) -> None:
        self.features = features

    @classmethod
    def rebuild(
        cls,
        structures: Sequence[Atoms],
        cfg: DiagnosticsConfig,
        *,
        seed: int = 0,
        prediction: Any | None = None,
        environment: EnvironmentClasses | Mapping[str, Any] | None = None,
    ) -> RegionSelector:
        """A selector on the diagnosis' features rebuilt on ``structures``
        (:func:`diagnosis_features` with ``cfg``'s settings; the other arguments are its).
        """
        features = diagnosis_features(
            structures,
            environment_classes=cfg.environment_classes,
            seed=seed,
            prediction=prediction,
            environment=environment,
        )
        return cls(features)

    def _apply(self, region: Region) -> tuple[np.ndarray, str | None]:
        """The rule's mask and None, or an empty mask and the feature the table lacks."""
        try:
            return rule_mask([as_condition(c) for c in region.conditions], self.features), None
        except UnknownFeature as exc:
            return np.zeros(self.features.n_atoms, dtype=bool), exc.feature

    def absent(self, region: Region) -> str | None:
        """The feature ``region``'s rule names that the table lacks; None when it has them all."""
        return self._apply(region)[1]

    def select(self, region: Region) -> np.ndarray:
        """(n_atoms,) bool: the atoms ``region``'s rule selects (none when it names a feature
        the table lacks; a warning says which).
        """
        mask, missing = self._apply(region)
        if missing is not None:
            log.warning(
                "region %s (%s) selects no atom here: its feature %r is absent from these "
                "structures' features",
                region.id,
                region.rule,
                missing,
            )
        return mask

    def masks(self, regions: Iterable[Region]) -> dict[str, np.ndarray]:
        """Region id -> :meth:`select` of every region, in the order given."""
        return {r.id: self.select(r) for r in regions}
