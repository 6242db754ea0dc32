"""A built-in campaign answers its own question end to end: si-ge-transfer, reduced to one
short iteration, names the Ge region of its Si-trained model from its test set.
"""

from __future__ import annotations

import json

import pytest

from chemgap.agent.loop import run_campaign
from chemgap.agent.store import RunStore
from chemgap.campaigns.spec import load_spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REDUCED = {
    "budget.max_iterations": "1",
    "ensemble.members": "2",
    "ensemble.wall_time_s": "30",
    "exploration.walkers": "4",
    "exploration.steps": "30",
    # the built-in transfer experiment after the loop, at one size, once, tiny
    "remediation.repeats": "1",
    "remediation.sizes": "[6]",
    "remediation.members": "1",
    "remediation.max_epochs": "5",
}


@pytest.mark.slow
def test_si_ge_transfer_names_the_ge_region_of_its_si_model(tmp_path):
    """The built-in spec with only its size reduced (one iteration, 2 members of at most 30 s,
    short exploration; the seeds, test set and diagnosis as shipped): the first model, trained on
    Si only, meets its in-distribution target (regions are findings, not tentative), and its
    top failure region is ``element = Ge`` with q < 0.05 and a force-error ratio above 2.

    Broken variants caught: members built without the elements the labels lack (Ge cannot be
    predicted: the run fails), Ge seeds in the initial labels (no Ge region), a test set too
    small for the element rule to win (the region named by a proxy such as Si neighbours).
    """
    spec = load_spec("si-ge-transfer", overrides=REDUCED)
    store = RunStore.create(tmp_path / "run", spec)
    assert run_campaign(store, num_cpus=2) == "iteration cap (1)"
    (row,) = RunStore.open(store.root).state.history
    assert row["model_quality"]["ready"] and not row["regions_tentative"]
    assert row["test_force_mae_ood"] > 5 * row["test_force_mae_id"]
    payload = json.loads((store.root / "regions.json").read_text())
    assert not payload["tentative"]
    top = payload["regions"][0]
    assert top["rule"] == "element = Ge", [r["rule"] for r in payload["regions"]]
    assert top["q_value"] < 0.05 and top["ratio"] > 2.0
    # the remediation section ran after the loop: transfer (Si -> Ge) against scratch
    results = json.loads((store.root / "remedies" / "results.json").read_text())
    arms = {(row["arm"], row["size"]) for row in results["arms"]}
    assert arms == {("baseline", 6), ("transfer", 6)}
    transfer = json.loads(
        (
            store.root / "remedies" / "cells" / "transfer-n6-r0" / "models" / "ensemble.json"
        ).read_text()
    )
    assert transfer["element_map"] == "Si=Ge" and transfer["init_from"].endswith("001/models")
