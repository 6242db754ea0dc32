"""Statistics of failure regions against cases with known answers (no model training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, fcc100, fcc111
from scipy.stats import false_discovery_control, mannwhitneyu

from chemgap.agent.diagnostics.features import FeatureKind, Features, compute_features
from chemgap.agent.diagnostics.regions import (
    Condition,
    Region,
    UnknownFeature,
    find_regions,
    numeric_cuts,
    region_id,
    region_masks,
    rule_text,
)
from chemgap.agent.diagnostics.stats import ClusterBootstrap, benjamini_hochberg, slice_p_value
from chemgap.campaigns.spec import DiagnosticsConfig


def test_benjamini_hochberg_matches_the_textbook_and_scipy():
    # Benjamini & Hochberg (1995), section 4: the 15 p-values of their example; at q = 0.05
    # the step-up procedure rejects the 4 smallest.
    p = np.array(
        [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240,
         0.4262, 0.5719, 0.6528, 0.7590, 1.0000]
    )  # fmt: skip
    q = benjamini_hochberg(p)
    assert (q <= 0.05).sum() == 4
    np.testing.assert_allclose(q, false_discovery_control(p, method="bh"), rtol=1e-12)
    shuffled = np.random.default_rng(0).permutation(len(p))
    np.testing.assert_allclose(benjamini_hochberg(p[shuffled]), q[shuffled])
    assert benjamini_hochberg(np.array([])).shape == (0,)


def _synthetic(rng, n_struct=30, per=12):
    """Errors with a strong per-structure effect (atoms of a structure are correlated)."""
    sidx = np.repeat(np.arange(n_struct), per)
    effect = rng.lognormal(0.0, 0.8, n_struct)
    return sidx, effect[sidx] * rng.lognormal(0.0, 0.3, len(sidx))


def test_a_feature_with_no_effect_is_not_significant_beyond_the_nominal_rate():
    """200 random draws of a random flag with no effect: rejections ≤ alpha + tolerance.

    Checked for a per-structure flag (where an atom-level test is badly anti-conservative, shown
    by the naive Mann-Whitney on atoms) and a per-atom flag.
    """
    rng = np.random.default_rng(1)
    alpha, draws = 0.05, 200
    per_structure = per_atom = naive = 0
    for _ in range(draws):
        sidx, err = _synthetic(rng)
        n_struct = sidx.max() + 1
        s_flag = (rng.random(n_struct) < 0.3)[sidx]
        a_flag = rng.random(len(sidx)) < 0.3
        per_structure += slice_p_value(err, sidx, s_flag) <= alpha
        per_atom += slice_p_value(err, sidx, a_flag) <= alpha
        if s_flag.any() and (~s_flag).any():
            naive += mannwhitneyu(err[s_flag], err[~s_flag], alternative="greater").pvalue <= alpha
    tolerance = 0.04  # ~2.6 binomial standard errors at 200 draws
    assert per_structure / draws <= alpha + tolerance
    assert per_atom / draws <= alpha + tolerance
    assert naive / draws > 3 * alpha  # what treating atoms as independent would have claimed


def test_find_regions_null_feature_through_the_whole_pipeline():
    """A random flag with no effect, among the tested slices, survives BH rarely."""
    rng = np.random.default_rng(2)
    hits, draws = 0, 100
    for _ in range(draws):
        sidx, err = _synthetic(rng, n_struct=24, per=10)
        feats = Features(
            atom={
                "noise": rng.random(len(sidx)) < 0.4,
                "element": np.array(["Cu"] * len(sidx), dtype=object),
            },
            structure={},
            kinds={"noise": FeatureKind.FLAG, "element": FeatureKind.CATEGORICAL},
            system_idx=sidx,
        )
        regions, n_tested = find_regions(
            feats,
            err,
            np.ones_like(err),
            DiagnosticsConfig(bootstrap=100),
            methods=["slice"],
            rng=rng,
        )
        assert n_tested == 1
        hits += bool(regions)
    assert hits / draws <= 0.05 + 0.05


def test_cluster_bootstrap_interval_covers_the_true_mean():
    rng = np.random.default_rng(3)
    covered, draws, true_mean = 0, 100, 1.0
    for _ in range(draws):
        n_struct, per = 40, 8
        sidx = np.repeat(np.arange(n_struct), per)
        err = true_mean + rng.normal(0, 0.3, n_struct)[sidx] + rng.normal(0, 0.2, len(sidx))
        boot = ClusterBootstrap.draw(err, sidx, 400, rng)
        (lo, hi), (rlo, rhi) = boot.interval(np.ones(len(err), dtype=bool))
        covered += lo <= true_mean <= hi
        assert rlo == pytest.approx(1.0) and rhi == pytest.approx(1.0)  # the whole set / itself
    assert 0.88 <= covered / draws <= 1.0


def test_numeric_cuts_read_like_a_chemist_writes_them():
    cn = np.array([12, 12, 9, 9, 8, 11, 12], dtype=float)
    texts = {c.text for c in numeric_cuts("coordination", cn)}
    assert {"coordination ≤ 9", "coordination ≥ 11", "coordination ≤ 8"} <= texts
    cont = np.linspace(0.0, 1.0, 101)
    cuts = numeric_cuts("strain", cont)
    assert len(cuts) == 18 and {c.op for c in cuts} == {"≤", ">"}
    assert rule_text([Condition(feature="group:nitrile", op="=", value=True)]) == "group = nitrile"
    assert region_id("element = Cu") == region_id("element = Cu") != region_id("element = Ag")


def _cu_structures():
    out = []
    for i in range(10):
        a = bulk("Cu", cubic=True) * (2, 1, 1)
        a.rattle(0.05, seed=i)
        out.append(a)
    for i in range(6):
        a = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
        a.pbc = True
        a.rattle(0.05, seed=100 + i)
        out.append(a)
        b = fcc100("Cu", size=(2, 2, 3), vacuum=5.0)
        b.pbc = True
        b.rattle(0.05, seed=200 + i)
        out.append(b)
    return out


def test_planted_effect_on_coordination_is_found_by_slices_tree_and_clusters():
    """Synthetic errors 3x larger on under-coordinated atoms: every finder sees it."""
    structures = _cu_structures()
    feats = compute_features(structures, environment_classes=4, seed=0)
    cn = feats.atom["coordination"]
    assert set(np.unique(cn)) >= {12.0, 9.0, 8.0}  # bulk, (111) and (100) surface atoms
    rng = np.random.default_rng(4)
    err = np.where(cn < 12, 0.3, 0.1) * rng.lognormal(0, 0.2, len(cn))
    # the ensemble's uncertainty *drops* at the surface: a silent failure
    silent_unc = np.where(cn < 12, 0.05, 0.1)
    cfg = DiagnosticsConfig(bootstrap=300)
    regions, _ = find_regions(feats, err, silent_unc, cfg, rng=rng)
    assert regions
    top = regions[0]
    text = " ".join([top.rule, top.machine_rule, *top.also])
    assert "coordination" in text or "defect" in text
    assert top.significant and top.q_value < 1e-3
    # 43% of the atoms are surface atoms: expected ratio 0.3 / (0.43 x 0.3 + 0.57 x 0.1) = 1.61
    assert 1.4 < top.ratio < 1.85 and 1.25 < top.ratio_ci[0] < top.ratio < top.ratio_ci[1]
    assert top.ci[0] < top.mean_error < top.ci[1]
    # (error / uncertainty) inside over the same overall = ratio x mean(uncertainty) / 0.05
    expected = top.ratio * silent_unc.mean() / 0.05
    assert top.silent and top.error_to_uncertainty == pytest.approx(expected, rel=1e-9)
    assert {"slice", "tree", "cluster"} <= {m for r in regions for m in r.methods}
    # uncertainty that follows the error: the same region, not silent
    loud, _ = find_regions(feats, err, err.copy(), cfg, rng=np.random.default_rng(4))
    assert loud and not any(r.silent for r in loud)
    # the round trip through JSON keeps everything
    again = Region.from_dict(top.to_dict())
    assert again == top


def test_find_regions_reads_its_thresholds_from_the_config():
    """The defaults are DiagnosticsConfig's; a stricter config reports fewer, smaller lists."""
    structures = _cu_structures()
    feats = compute_features(structures, environment_classes=4, seed=0)
    cn = feats.atom["coordination"]
    err = np.where(cn < 12, 0.3, 0.1) * np.random.default_rng(5).lognormal(0, 0.2, len(cn))
    unc = np.full_like(err, 0.1)
    default, n_default = find_regions(feats, err, unc, rng=np.random.default_rng(0))
    explicit, n_explicit = find_regions(
        feats, err, unc, DiagnosticsConfig(), rng=np.random.default_rng(0)
    )
    same = [json.dumps(r.to_dict(), sort_keys=True) for r in default]  # NaN == NaN as text
    assert same == [json.dumps(r.to_dict(), sort_keys=True) for r in explicit]
    assert n_default == n_explicit and len(default) > 1
    capped, _ = find_regions(
        feats, err, unc, DiagnosticsConfig(max_regions=1), rng=np.random.default_rng(0)
    )
    assert [r.id for r in capped] == [default[0].id]
    strict, _ = find_regions(
        feats, err, unc, DiagnosticsConfig(min_ratio=10.0), rng=np.random.default_rng(0)
    )
    assert strict == []


def _hot_features(n_struct: int, per: int, hot_per_structure: int):
    """A per-atom flag ``hot`` on the first atoms of every structure, all atoms Cu."""
    sidx = np.repeat(np.arange(n_struct), per)
    hot = np.tile(np.arange(per) < hot_per_structure, n_struct)
    feats = Features(
        atom={"hot": hot, "element": np.array(["Cu"] * len(sidx), dtype=object)},
        structure={},
        kinds={"hot": FeatureKind.FLAG, "element": FeatureKind.CATEGORICAL},
        system_idx=sidx,
    )
    return feats, sidx, hot


def test_tree_rules_are_scored_on_the_held_out_half_only(monkeypatch):
    """A hot spot that is extreme in the half the tree grows on and mild in the other half.

    Catches the broken variant that scores tree rules (ratio, its CI, mean error, CI, baseline,
    severity) on all structures: that gives a ratio of ~2.0 against ~1.43 on the held-out half,
    and a CI that lies above the honest ratio.
    """
    from chemgap.agent.diagnostics import finders as regions_mod

    n_struct, per = 20, 10
    feats, sidx, hot = _hot_features(n_struct, per, 4)
    grow = np.arange(n_struct) < n_struct // 2
    monkeypatch.setattr(regions_mod, "honest_split", lambda n, rng: grow.copy())
    rng = np.random.default_rng(6)
    in_grow = grow[sidx]
    err = np.where(hot, np.where(in_grow, 1.0, 0.2), 0.1) * rng.lognormal(0, 0.05, len(sidx))
    regions, n_tested = find_regions(
        feats, err, np.full_like(err, 0.1), DiagnosticsConfig(bootstrap=300), methods=["tree"]
    )
    assert n_tested == 1 and len(regions) == 1
    r = regions[0]
    assert r.method == "tree" and r.rule == "hot = yes"
    held = ~in_grow
    honest_mean = err[hot & held].mean()
    honest_ratio = honest_mean / err[held].mean()
    optimistic_ratio = err[hot].mean() / err.mean()
    assert optimistic_ratio > 1.3 * honest_ratio  # the planted difference is visible
    assert r.held_out and r.scored_structures == n_struct // 2
    assert r.mean_error == pytest.approx(honest_mean, rel=1e-12)
    assert r.baseline == pytest.approx(err[held].mean(), rel=1e-12)
    assert r.ratio == pytest.approx(honest_ratio, rel=1e-12)
    assert r.ci[0] < honest_mean < r.ci[1] < err[hot].mean()
    assert r.ratio_ci[0] < honest_ratio < r.ratio_ci[1] < optimistic_ratio
    assert r.severity == pytest.approx(r.ratio_ci[0] - 1.0)
    # the whole-set description of the rule stays: all its atoms, all its structures
    assert r.n_atoms == int(hot.sum()) and r.n_structures == n_struct
    # the p-value too comes from the held-out half: 10 vs 10 structures, complete separation
    assert r.p_value == pytest.approx(
        mannwhitneyu(np.arange(10, 20), np.arange(10), alternative="greater").pvalue
    )


def test_search_summary_bounds_what_an_empty_search_could_have_found():
    """Too few structures for any rule to be significant; the summary says so, in structures.

    Catches variants that count atoms instead of structures (40 vs 120 atoms would allow a
    tiny p), forget that q ≥ p under Benjamini-Hochberg, or report a bound that an actual
    q-value undercuts.
    """
    from math import comb

    from chemgap.agent.diagnostics.regions import search_regions
    from chemgap.agent.diagnostics.stats import min_p_value, structures_needed

    feats, sidx, _ = _hot_features(4, 40, 0)
    feats.atom["hot"] = sidx == 0  # one structure of four: samples of 1 and 3 structures
    noise = np.random.default_rng(9).lognormal(0, 0.1, len(sidx))  # distinct structure means
    err = np.where(sidx == 0, 1.0, 0.1) * noise
    found = search_regions(
        feats, err, np.ones_like(err), DiagnosticsConfig(bootstrap=100), methods=["slice"]
    )
    s = found.summary
    assert found.regions == [] and s["n_rules_tested"] == found.n_tested == 1
    assert s["n_structures"] == 4 and s["n_atoms"] == 160 and s["best_sizes"] == [1, 3]
    assert s["min_q_achievable"] == pytest.approx(1 / comb(4, 1))  # exact MW, U = n1 n2
    assert s["structures_needed"] == structures_needed(0.05) == 3
    assert s["max_ratio_seen"]["rule"] == "hot = yes"
    assert s["max_ratio_seen"]["ratio"] == pytest.approx(err[sidx == 0].mean() / err.mean())
    assert s["max_ratio_seen"]["q_value"] >= s["min_q_achievable"]
    # with many structures and many rules: every q respects the bound, the lone-finding q
    rng = np.random.default_rng(8)
    sidx, err = _synthetic(rng, n_struct=30, per=12)
    feats = Features(
        atom={
            "a": rng.random(len(sidx)) < 0.3,
            "b": (rng.random(30) < 0.5)[sidx],
            "x": np.round(rng.random(len(sidx)), 2),
        },
        structure={},
        kinds={"a": FeatureKind.FLAG, "b": FeatureKind.FLAG, "x": FeatureKind.NUMERIC},
        system_idx=sidx,
    )
    found = search_regions(
        feats, err, np.ones_like(err), DiagnosticsConfig(bootstrap=100), methods=["slice"]
    )
    s = found.summary
    m = s["n_rules_tested"]
    assert m > 10 and s["structures_needed"] is None
    assert s["n_two_sided"] > 0  # both sides of the cuts of x: one two-sided hypothesis each
    factor = 2.0 if s["best_two_sided"] else 1.0
    assert s["min_q_achievable"] == pytest.approx(factor * min_p_value(*s["best_sizes"]))
    assert s["min_q_lone"] == pytest.approx(min(1.0, m * s["min_q_achievable"]))
    assert s["min_q_seen"]["q_value"] >= s["min_q_achievable"]


def test_a_rule_naming_an_absent_feature_raises_rather_than_matching_no_atom():
    """``group = nitrile`` on a table without that column is an error naming the feature and
    the columns there are; ``element = Xx`` (a column that exists) is an empty region.

    Broken variant caught: the old ``region_masks``, which turned the missing column into an
    all-False mask (a region of zero atoms) instead of an error.
    """
    feats, _, _ = _hot_features(3, 4, 1)
    nitrile = Condition(feature="group:nitrile", op="=", value=True)
    with pytest.raises(UnknownFeature, match=r"'group:nitrile'.*\(columns: element, hot\)"):
        nitrile.mask(feats)
    assert not Condition(feature="element", op="=", value="Xx").mask(feats).any()
    region = Region(
        id=region_id(nitrile.text),
        rule=nitrile.text,
        conditions=[nitrile.to_dict()],
        method="slice",
        n_atoms=4,
        n_structures=1,
        coverage=0.3,
        mean_error=1.0,
        ci=(0.9, 1.1),
        baseline=0.5,
        ratio=2.0,
        ratio_ci=(1.8, 2.2),
        p_value=0.01,
    )
    with pytest.raises(UnknownFeature) as err:
        region_masks([region], feats)
    assert isinstance(err.value, KeyError) and err.value.feature == "group:nitrile"


def significant_region(**fields) -> Region:
    """A significant slice region over 40 atoms of 8 structures, ``fields`` overriding."""
    base = dict(
        id="R0",
        rule="coordination ≤ 9",
        conditions=[],
        method="slice",
        n_atoms=40,
        n_structures=8,
        coverage=0.1,
        mean_error=0.15,
        ci=(0.12, 0.18),
        baseline=0.05,
        ratio=3.0,
        ratio_ci=(2.0, 4.0),
        p_value=1e-4,
        q_value=1e-3,
        significant=True,
    )
    return Region(**{**base, **fields})


@pytest.mark.parametrize(
    ("mean_error", "uncertainty_mean", "silent"),
    [(0.12, 0.26, False), (0.30, 0.10, True)],
)
def test_a_region_whose_uncertainty_exceeds_its_error_is_never_silent(
    mean_error, uncertainty_mean, silent
):
    """A significant region with 3x the overall error per unit of uncertainty is silent only
    when its error is above its own calibrated uncertainty (issue 31's region: 0.12 eV/Å of
    error under 0.26 of uncertainty was called silent).

    Broken variant caught: silence from the relative ratio alone (the first case is then silent).
    """
    from chemgap.agent.diagnostics.search import _silent

    region = significant_region(
        mean_error=mean_error,
        ratio=mean_error / 0.05,
        uncertainty_mean=uncertainty_mean,
        error_to_uncertainty=3.0,
    )
    assert _silent(region, DiagnosticsConfig()) is silent


def test_a_region_whose_interval_includes_no_effect_is_not_reported():
    """The test and the interval give one verdict: a rule the rank test finds (q 2e-3) but
    whose selection-aware ratio CI includes 1 is not significant; one whose CI excludes 1 is.

    Broken variant caught: significance from q and the ratio alone (organics-xtb listed `group
    = carbonyl` at q 2e-3 beside a CI of 0.75–2.65).
    """
    from chemgap.agent.diagnostics.search import _require_interval

    def region(ci: tuple[float, float]) -> Region:
        return significant_region(
            id=f"R{ci[0]}", rule="group = carbonyl", ratio=1.52, ratio_ci=ci, q_value=2e-3
        )

    wide, tight = region((0.75, 2.65)), region((1.2, 1.9))
    assert _require_interval([wide, tight]) == 1
    assert not wide.significant and tight.significant
