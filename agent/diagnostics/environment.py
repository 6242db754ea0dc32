"""The environment feature family: local-environment classes of SOAP, named across diagnoses.

KMeans (k = ``environment_classes``) on per-atom SOAP power spectra (Bartók, Kondor & Csányi,
Phys. Rev. B 87, 184115, 2013; dscribe) gives every atom a class; the classes depend on the
structures and the seed only. :func:`match_environment_classes` names the classes of one
diagnosis after the matching classes of an earlier one, and :func:`describe_environment` says
in words what each class is (:func:`chemgap.agent.diagnostics.neighbours.describe_class`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.neighbours import (
    describe_class,
    low_coordinated_neighbours,
    neighbour_counts,
)
from chemgap.agent.diagnostics.table import (
    EnvironmentClasses,
    FeatureBlock,
    FeatureContext,
    FeatureKind,
    Features,
)

log = logging.getLogger(__name__)


def environment_family(ctx: FeatureContext) -> FeatureBlock:
    """The ``environment`` column: each atom's KMeans class of per-atom SOAP, and the classes."""
    from sklearn.cluster import KMeans

    x = ctx.soap()
    k = max(1, min(ctx.environment_classes, len(np.unique(np.round(x, 6), axis=0))))
    km = KMeans(n_clusters=k, n_init=4, random_state=ctx.seed).fit(x)
    species = sorted({s for a in ctx.structures for s in a.get_chemical_symbols()})
    return FeatureBlock(
        atom={"environment": np.array([f"env{j}" for j in km.labels_], dtype=object)},
        kinds={"environment": FeatureKind.CATEGORICAL},
        environment=EnvironmentClasses(
            labels=[f"env{j}" for j in range(k)],
            centroids=np.asarray(km.cluster_centers_, dtype=float),
            species=species,
        ),
    )


def match_environment_classes(
    features: Features, reference: EnvironmentClasses | None, *, max_shift: float = 0.5
) -> Features:
    """``features`` with its environment classes named after the matching ``reference`` ones.

    Classes are paired by the Hungarian assignment (``scipy.optimize.linear_sum_assignment``;
    Kuhn, Naval Res. Logist. Q. 2, 83, 1955) on the Euclidean distance between centroids. A pair
    is accepted when the new centroid lies closer to its reference centroid than ``max_shift``
    x the distance from that reference centroid to its nearest other reference centroid (well
    inside its cell: a different environment is never given an old name); a new class left
    without a partner gets a name no reference class has (``env<k>``, k past the largest).

    Args:
        features: a feature table with an ``environment`` column and its classes.
        reference: the classes of an earlier diagnosis; None: nothing to match.
        max_shift: the acceptance fraction described above.

    Returns:
        A new :class:`Features` (the input is not changed) with the ``environment`` column and
        ``environment`` classes renamed; ``features`` itself when nothing can be matched
        (no classes on either side, other species or another SOAP dimension).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    env = features.environment
    if reference is None or env is None or "environment" not in features.atom:
        return features
    if env.species != reference.species or env.centroids.shape[1:] != reference.centroids.shape[1:]:
        log.info("environment classes: other species or SOAP size; not matched to the previous")
        return features
    cost = cdist(env.centroids, reference.centroids)
    ref_gap = cdist(reference.centroids, reference.centroids)
    np.fill_diagonal(ref_gap, np.inf)
    nearest_other = ref_gap.min(axis=1)
    names: dict[str, str] = {}
    for i, j in zip(*linear_sum_assignment(cost), strict=True):
        if cost[i, j] < max_shift * nearest_other[j]:
            names[env.labels[i]] = reference.labels[j]
    names.update(_fresh_names([lab for lab in env.labels if lab not in names], reference.labels))
    column = np.array([names[str(v)] for v in features.atom["environment"]], dtype=object)
    return replace(
        features,
        atom={**features.atom, "environment": column},
        environment=replace(env, labels=[names[lab] for lab in env.labels]),
    )


def _fresh_names(unmatched: list[str], taken: list[str]) -> dict[str, str]:
    """``env<k>`` names for unmatched classes, k past every ``env<k>`` in ``taken``."""
    used = [int(t[3:]) for t in taken if t.startswith("env") and t[3:].isdigit()]
    start = max(used, default=-1) + 1
    return {lab: f"env{start + n}" for n, lab in enumerate(unmatched)}


def describe_environment(
    ctx: FeatureContext, atom: dict[str, np.ndarray], classes: EnvironmentClasses
) -> EnvironmentClasses:
    """``classes`` with every class described in words by its atoms' chemistry.

    Uses the first shells of ``ctx`` and, where present in ``atom``, the molecular family's
    hybridisation and group columns (:func:`chemgap.agent.diagnostics.neighbours.describe_class`).
    """
    symbols = ctx.symbols()
    elements = sorted(set(symbols))
    shells = ctx.shells()
    counts = neighbour_counts(shells, symbols, elements)
    cn = np.concatenate([s.coordination for s in shells]).astype(float)
    groups = {
        k.removeprefix("group:"): v.astype(bool) for k, v in atom.items() if k.startswith("group:")
    }
    env = atom["environment"].astype(str)
    descriptions, details = [], []
    for label in classes.labels:
        text, detail = describe_class(
            env == label,
            symbols=symbols,
            coordination=cn,
            counts=counts,
            elements=elements,
            hybridisation=atom.get("hybridisation"),
            groups=groups,
        )
        descriptions.append(text)
        details.append(detail)
    _tell_apart(descriptions, details, env, low_coordinated_neighbours(shells, symbols), classes)
    return replace(classes, descriptions=descriptions, details=details)


def _tell_apart(
    descriptions: list[str],
    details: list[dict[str, Any]],
    env: np.ndarray,
    low: np.ndarray,
    classes: EnvironmentClasses,
) -> None:
    """Add the range of low-coordinated neighbours to classes whose descriptions coincide.

    Changes ``descriptions`` and ``details`` in place; classes still alike keep their ids apart.
    """
    counts = Counter(descriptions)
    for k, label in enumerate(classes.labels):
        if counts[descriptions[k]] < 2:
            continue
        lo, hi = (int(v) for v in np.round(np.percentile(low[env == label], (5, 95))))
        details[k]["low_coordinated_neighbours"] = [lo, hi]
        span = str(lo) if lo == hi else f"{lo}–{hi}"
        descriptions[k] += f", {span} low-coordinated neighbour" + ("" if hi == 1 else "s")
