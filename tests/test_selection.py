"""Batch selection: budget, quotas, de-duplication, diversity, and the random control."""

from __future__ import annotations

import numpy as np
import pytest

from chemgap.agent.selection import STRATEGIES, Candidates, find_duplicates, select
from chemgap.campaigns.spec import SelectionStrategy


def two_clusters(rng, n=20):
    """Half the candidates near (0,0) with high uncertainty, half near (10,0) with lower."""
    desc = np.vstack(
        [rng.normal(0, 0.3, (n, 2)), rng.normal(0, 0.3, (n, 2)) + np.array([10.0, 0.0])]
    )
    unc = np.concatenate([rng.uniform(0.8, 1.0, n), rng.uniform(0.4, 0.6, n)])
    elements = [frozenset({"Cu"})] * n + [frozenset({"Cu", "O"})] * n
    return Candidates(uncertainty=unc, descriptors=desc, elements=elements)


def test_registry_covers_every_strategy():
    assert set(STRATEGIES) == set(SelectionStrategy)


@pytest.mark.parametrize("strategy", list(SelectionStrategy))
def test_budget_counts_oracle_cost(strategy, rng):
    c = two_clusters(rng)
    c.cost = np.where(np.arange(len(c)) % 2 == 0, 1.0, 3.0)
    sel = select(c, budget=10, strategy=strategy, rng=np.random.default_rng(1))
    assert sel.spent == pytest.approx(c.cost[sel.indices].sum())
    assert sel.spent <= 10
    assert len(set(sel.indices)) == len(sel.indices)
    # nothing affordable was left behind: the remaining budget buys no unchosen candidate
    rest = np.setdiff1d(np.arange(len(c)), sel.indices + sel.duplicates)
    assert (c.cost[rest] > 10 - sel.spent).all()


def test_uncertainty_takes_the_top_and_diverse_covers_both_clusters(rng):
    c = two_clusters(rng)
    top = select(c, budget=4, strategy="uncertainty")
    assert sorted(top.indices) == sorted(np.argsort(-c.uncertainty)[:4].tolist())
    assert all(i < 20 for i in top.indices)  # all from the more uncertain cluster
    diverse = select(c, budget=4, strategy="diverse")
    assert diverse.indices[0] == int(np.argmax(c.uncertainty))
    assert {i < 20 for i in diverse.indices} == {True, False}


def test_quota_is_filled_first(rng):
    c = two_clusters(rng)
    sel = select(c, budget=5, strategy="uncertainty", quotas={"O": 2})
    with_o = [i for i in sel.indices if "O" in c.elements[i]]
    assert len(with_o) == 2 and sel.reason[with_o[0]] == "quota:O"
    assert len(sel.indices) == 5
    # an impossible quota takes what there is and does not fail
    sel = select(c, budget=5, strategy="uncertainty", quotas={"Zn": 3})
    assert len(sel.indices) == 5


def test_duplicates_of_labelled_data_and_of_each_other(rng):
    desc = np.array([[0.0, 0.0], [0.0, 0.0005], [5.0, 5.0], [9.0, 9.0]])
    unc = np.array([0.5, 0.9, 0.7, 0.6])
    labelled = np.array([[9.0, 9.0002]])
    assert find_duplicates(desc, unc, labelled, tol=1e-3) == [0, 3]  # 0 copies the more uncertain 1
    c = Candidates(uncertainty=unc, descriptors=desc, elements=[frozenset({"C"})] * 4)
    sel = select(c, budget=10, strategy="uncertainty", labelled_descriptors=labelled)
    assert sel.indices == [1, 2] and sel.duplicates == [0, 3]


def test_random_control_is_seeded(rng):
    c = two_clusters(rng)
    a = select(c, budget=6, strategy="random", rng=np.random.default_rng(7))
    b = select(c, budget=6, strategy="random", rng=np.random.default_rng(7))
    d = select(c, budget=6, strategy="random", rng=np.random.default_rng(8))
    assert a.indices == b.indices != d.indices


def test_bad_input_is_a_value_error(rng):
    c = two_clusters(rng)
    with pytest.raises(ValueError, match="budget"):
        select(c, budget=0)
    with pytest.raises(ValueError, match="greedy"):
        select(c, budget=1, strategy="greedy")
    with pytest.raises(ValueError, match="descriptors"):
        Candidates(uncertainty=np.ones(3), descriptors=np.ones((2, 2)), elements=[frozenset()] * 3)


@pytest.mark.parametrize("strategy", list(SelectionStrategy))
def test_priority_candidates_come_first_within_their_share(strategy, rng):
    """Priority candidates (a campaign's probe structures) are taken first, in their order,
    whatever their uncertainty, up to their share of the budget; a priority candidate that
    duplicates a labelled structure is skipped; the strategy fills the rest.
    """
    c = two_clusters(rng)
    low = list(np.argsort(c.uncertainty)[:4])  # the four least uncertain: never picked alone
    labelled = c.descriptors[[low[1]]]  # the second is labelled already
    sel = select(
        c,
        budget=8,
        strategy=strategy,
        rng=np.random.default_rng(1),
        labelled_descriptors=labelled,
        priority=low,
        priority_budget=2,
        priority_reason="probe",
    )
    assert sel.indices[:2] == [low[0], low[2]]
    assert [sel.reason[i] for i in sel.indices].count("probe") == 2
    assert low[1] in sel.duplicates and low[3] not in sel.indices[:2]
    assert len(sel.indices) == 8 and sel.reason[sel.indices[2]] == str(strategy)
