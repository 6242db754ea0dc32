"""Probe payloads whose rows lie on their own x (the EOS around each row's own volume), as the
report draws them: the oracle at its volumes, the model at its own, the members' band on the
model's.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential

from chemgap.agent.probes import ProbesConfig, ProbeSystem, run_probes
from chemgap.agent.report.figures import probe_figure
from chemgap.models.reference import ReferenceModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_eos_figure_draws_each_row_on_its_own_volumes():
    """A Morse model (lattice 3.72 Å) against EMT (3.59 Å): the payload carries the oracle's
    and the members' volumes, and the figure puts each curve at its own.
    """
    model = ReferenceModel(
        MorsePotential(epsilon=0.3429, r0=2.946, rho0=3.894), elements=["Cu"], n_members=2
    )
    system = ProbeSystem.from_structures([bulk("Cu", "fcc", a=3.59, cubic=True)])
    cfg = ProbesConfig(eos={"points": 7})
    eos = run_probes(model, EMT(), system, cfg, names=["eos"])["eos"].to_dict()
    (curve,) = eos["payload"]["curves"]
    assert len(curve["x"]) == len(curve["oracle_x"]) == 7
    assert curve["members_x"] == [curve["x"], curve["x"]]
    assert np.median(curve["x"]) > max(curve["oracle_x"])  # the model's V0 is above EMT's grid
    figure = probe_figure(eos)
    traces = {t.get("name"): t for t in figure["data"]}
    assert traces["oracle Cu4"]["x"] == curve["oracle_x"]
    assert traces["oracle Cu4"]["y"] == curve["oracle"]
    assert traces["model Cu4"]["x"] == curve["x"]
    band = traces["members ±σ Cu4"]
    assert band["x"] == curve["x"]
    assert np.allclose(band["y"], traces["model Cu4"]["y"])  # identical members: zero width
