"""Each finding at the level where its effect lives: atoms, or whole structures.

Synthetic cells like cu-defects' (half of them hold 4 under-coordinated atoms, the others none)
with errors planted either on every atom of the defect cells (a whole-cell effect) or on the
under-coordinated atoms only (an atom effect); per-structure random effects and atom noise as
real errors have them. Seeded, so every run draws the same datasets.
"""

from __future__ import annotations

import numpy as np
import pytest

from chemgap.agent.diagnostics.features import FeatureKind, Features
from chemgap.agent.diagnostics.region import shown_rule
from chemgap.agent.diagnostics.search import find_regions
from chemgap.agent.diagnostics.stats import within_structure_p
from chemgap.campaigns.spec import DiagnosticsConfig

N_SETS = 40


def _cells(rng: np.random.Generator, effect: str, n_struct: int = 40, per: int = 12):
    """Features (coordination) and errors of ``n_struct`` cells of ``per`` atoms; ``effect``
    ``cell``: every atom of the defect cells errs 2x; ``atom``: their 11-fold atoms only.
    """
    sidx = np.repeat(np.arange(n_struct), per)
    defect = np.arange(n_struct) % 2 == 0
    coordination = np.full(len(sidx), 12.0)
    for s in np.flatnonzero(defect):
        coordination[np.flatnonzero(sidx == s)[:4]] = 11.0
    feats = Features(
        atom={"coordination": coordination},
        structure={},
        kinds={"coordination": FeatureKind.NUMERIC},
        system_idx=sidx,
    )
    noise = np.exp(rng.normal(0.0, 0.3, n_struct))[sidx] * rng.lognormal(0.0, 0.3, len(sidx))
    planted = defect[sidx] if effect == "cell" else coordination < 12
    return feats, noise * np.where(planted, 2.0, 1.0)


def _search(feats: Features, err: np.ndarray, seed: int):
    unc = np.full(len(err), np.nan)
    return find_regions(feats, err, unc, DiagnosticsConfig(), rng=np.random.default_rng(seed))[0]


def test_a_whole_cell_effect_gives_no_atom_level_region():
    """Every atom of the defect cells errs 2x: ``coordination ≤ 11`` passes the structure-level
    test (only defect cells hold such atoms) but its atoms are no worse than the 12-fold atoms
    beside them, so it is reported as a finding about whole structures, never about those
    atoms. Measured: 1 of 40 datasets gives an atom-level region (the within test's 5 %); the
    structure-level finding is made in 35. Broken variant caught: the structure-level test
    alone, which makes every one of those 35 an atom-level region.
    """
    rng = np.random.default_rng(3)
    atom_level = found = 0
    for k in range(N_SETS):
        regions = _search(*_cells(rng, "cell"), seed=k)
        atom_level += any(r.level == "atom" for r in regions)
        found += any(r.rule == "coordination ≤ 11" for r in regions)
        for r in regions:
            if r.rule == "coordination ≤ 11" and r.level == "structure":
                assert shown_rule(r).startswith("structures with: ")
    assert atom_level <= 0.1 * N_SETS  # the within test's false-positive rate at alpha 0.05
    assert found >= 0.5 * N_SETS


def test_an_effect_on_some_atoms_of_a_cell_gives_the_atom_level_region():
    """The 11-fold atoms alone err 2x: ``coordination ≤ 11`` is found and is ``atom``-level in
    at least 90 % of the datasets (measured: 40 of 40).
    """
    rng = np.random.default_rng(4)
    hits = 0
    for k in range(N_SETS):
        regions = _search(*_cells(rng, "atom"), seed=k)
        hits += any(r.rule == "coordination ≤ 11" and r.level == "atom" for r in regions)
    assert hits >= 0.9 * N_SETS


def test_within_structure_p_cancels_a_whole_structure_shift():
    """The within test compares atoms inside a structure: a shift of whole structures leaves
    its differences, and so its p, unchanged; a rule over whole structures has none (NaN).
    """
    rng = np.random.default_rng(0)
    feats, err = _cells(rng, "atom")
    sidx = feats.system_idx
    mask = feats.atom["coordination"] < 12
    p, mixed = within_structure_p(err, sidx, mask)
    shift = rng.normal(0.0, 1.0, sidx.max() + 1)[sidx]  # whole structures up or down
    p_shifted, _ = within_structure_p(err + shift, sidx, mask)
    assert mixed == 20 and p < 1e-4 and p_shifted == pytest.approx(p)
    whole = np.isin(sidx, np.arange(0, 40, 2))
    assert np.isnan(within_structure_p(err, sidx, whole)[0])
