"""The sampling check: does the error follow how structures were sampled rather than what they are?

Provenance (:data:`~chemgap.agent.diagnostics.features.PROVENANCE_FEATURES`: the MD walker, the
campaign iteration, the seed index, the sampling temperature) is never a failure region: a
chemist cannot act on ``walker = 14``. When the error tracks it anyway, that is a warning about
the sampling (one walker that blew up, a hot trajectory over-represented, an early iteration's
odd structures), shown apart from the regions.

Each provenance column of the structures is tested on its own, with the structure as the unit as
everywhere in the diagnostics (per-structure mean force-error norm): a categorical column
(walker, seed index) by a Kruskal-Wallis test across its values that hold at least
:data:`MIN_GROUP_STRUCTURES` structures (Kruskal & Wallis, J. Am. Stat. Assoc. 47, 583, 1952),
a numeric one (iteration, temperature) by Spearman's rank correlation with the error. The
p-values of these few tests are Benjamini-Hochberg adjusted among themselves (a family of their
own, apart from the regions'); a column is flagged when its q-value is ≤ alpha.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from chemgap.agent.diagnostics.stats import benjamini_hochberg
from chemgap.agent.diagnostics.table import PROVENANCE_FEATURES, FeatureKind, Features

log = logging.getLogger(__name__)

MIN_GROUP_STRUCTURES = 2  # a value of a categorical column is compared with ≥ this many structures
MIN_STRUCTURES = 4  # fewest structures (with a value) for any test
KRUSKAL, SPEARMAN = "Kruskal-Wallis", "Spearman"  # the tests, by the kind of column


def _structure_errors(features: Features, errors: np.ndarray) -> np.ndarray:
    """(n_struct,) mean force-error norm over each structure's atoms, eV/Å."""
    n = features.n_struct
    sums = np.bincount(features.system_idx, weights=errors, minlength=n)
    return sums / np.maximum(np.bincount(features.system_idx, minlength=n), 1)


def _categorical(values: np.ndarray, per: np.ndarray, baseline: float) -> dict[str, Any] | None:
    """Kruskal-Wallis across the values with enough structures; None if it cannot be run."""
    from scipy.stats import kruskal

    names, counts = np.unique(values[values != ""], return_counts=True)
    names = names[counts >= MIN_GROUP_STRUCTURES]
    groups = [per[values == v] for v in names]
    if len(groups) < 2 or sum(map(len, groups)) < MIN_STRUCTURES:
        return None
    if len(np.unique(np.concatenate(groups))) < 2:
        return None
    means = [float(g.mean()) for g in groups]
    worst = int(np.argmax(means))
    res = kruskal(*groups)
    return dict(  # key ``test``: the statistical test (a keyword, never a split name)
        test=KRUSKAL,
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        n_structures=int(sum(map(len, groups))),
        n_values=len(groups),
        worst={
            "value": str(names[worst]),
            "n_structures": len(groups[worst]),
            "ratio": means[worst] / baseline if baseline > 0 else float("nan"),
        },
    )


def _numeric(values: np.ndarray, per: np.ndarray, baseline: float) -> dict[str, Any] | None:
    """Spearman's rank correlation of the value with the error; None if it cannot be run."""
    from scipy.stats import spearmanr

    ok = np.isfinite(values)
    if ok.sum() < MIN_STRUCTURES or len(np.unique(values[ok])) < 2:
        return None
    res = spearmanr(values[ok], per[ok])
    rho = float(res.statistic) if np.isfinite(res.statistic) else 0.0
    end = np.max(values[ok]) if rho >= 0 else np.min(values[ok])  # the end with higher errors
    top = values[ok] == end
    return dict(  # key ``test``: the statistical test (a keyword, never a split name)
        test=SPEARMAN,
        statistic=rho,
        p_value=float(res.pvalue) if np.isfinite(res.pvalue) else 1.0,
        n_structures=int(ok.sum()),
        n_values=len(np.unique(values[ok])),
        worst={
            "value": f"{float(end):g}",
            "n_structures": int(top.sum()),
            "ratio": float(per[ok][top].mean() / baseline) if baseline > 0 else float("nan"),
        },
    )


def _message(entry: dict[str, Any], numeric: bool) -> str:
    """The warning sentence of one flagged provenance column (``numeric``: tested by Spearman)."""
    w = entry["worst"]
    name = entry["feature"]
    if numeric:
        trend = "rises" if entry["statistic"] > 0 else "falls"
        what = f"error {trend} with {name} (Spearman ρ {entry['statistic']:.2f}"
    else:
        what = (
            f"error differs between {name} values (Kruskal-Wallis over {entry['n_values']} values"
        )
    return (
        f"{what}, {entry['n_structures']} structures, q = {entry['q_value']:.2g}); "
        f"{name} = {w['value']}: {w['ratio']:.2f}× the mean force-error norm over "
        f"{w['n_structures']} structures. Possibly a sampling artefact, not a failure region: "
        "check how these structures were made."
    )


def check_provenance(features: Features, errors: np.ndarray, alpha: float) -> list[dict[str, Any]]:
    """Test whether the error follows each provenance column of the structures.

    Args:
        features: the feature table (its structure-level provenance columns are tested).
        errors: (n_atoms,) force-error norm per atom, eV/Å.
        alpha: the false-discovery rate of the flags (Benjamini-Hochberg over these tests).

    Returns:
        One dict per column tested, in :data:`PROVENANCE_FEATURES` order: ``feature``,
        ``test`` (``Kruskal-Wallis`` or ``Spearman``), ``statistic`` (H, or ρ), ``p_value``,
        ``q_value``, ``flagged`` (q ≤ alpha), ``n_structures``, ``n_values``, ``worst``
        (``{"value", "n_structures", "ratio"}``: the value whose structures err most, or for a
        numeric column its highest value when ρ ≥ 0 and its lowest otherwise, with their mean
        error over the mean of all structures) and, when flagged, ``message`` (a sentence).
        Columns absent or without enough structures are not listed.
    """
    per = _structure_errors(features, np.asarray(errors, dtype=float))
    baseline = float(per.mean()) if len(per) else float("nan")
    out: list[dict[str, Any]] = []
    numeric: list[bool] = []
    for name in PROVENANCE_FEATURES:
        if name not in features.structure:
            continue
        col = features.structure[name]
        is_numeric = features.kinds.get(name) == FeatureKind.NUMERIC
        if is_numeric:
            entry = _numeric(col.astype(float), per, baseline)
        else:
            entry = _categorical(col.astype(str), per, baseline)
        if entry is not None:
            out.append({"feature": name, **entry})
            numeric.append(is_numeric)
    q = benjamini_hochberg(np.array([e["p_value"] for e in out]))
    for entry, qv, by_rank in zip(out, q, numeric, strict=True):
        entry["q_value"] = float(qv)
        entry["flagged"] = bool(qv <= alpha)
        if entry["flagged"]:
            entry["message"] = _message(entry, by_rank)
            log.info("sampling check: %s", entry["message"])  # every face prints the flags
    return out


def provenance_warnings(checks: list[dict[str, Any]] | None) -> list[str]:
    """The messages of the flagged provenance checks (none for files written without them)."""
    return [str(c.get("message")) for c in checks or [] if c.get("flagged")]
