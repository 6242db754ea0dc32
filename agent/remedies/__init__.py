"""Remediation experiments: which fix makes the model transfer?

Remedies compared head to head from one base (a run's iteration), at an equal oracle budget
for the data remedies, on the scoring part of the run's fixed test set, over repeats with 95 %
confidence intervals: :mod:`.arms` (the registry), :mod:`.pool` (what the data remedies label),
:mod:`.guidance` (the test set split into the part whose diagnosis guides the region arm and
the part that scores every arm), :mod:`.runner` (arms × repeats as tasks, resumable),
:mod:`.results` (the statistics).
"""

from chemgap.agent.remedies.arms import ARMS, BASELINE, Arm, ArmKind, arms_of, check_arms
from chemgap.agent.remedies.base import Base
from chemgap.agent.remedies.guidance import Guidance, TestSplit, split_test_set
from chemgap.agent.remedies.results import (
    cost_rows,
    probe_rows,
    region_rows,
    source_rows,
    split_caption,
    summarise,
    table_rows,
    unscorable_rows,
)
from chemgap.agent.remedies.runner import (
    Cell,
    Experiment,
    cells_of,
    experiment_config,
    prepare_experiment,
    run_experiment,
)

__all__ = [
    "ARMS",
    "BASELINE",
    "Arm",
    "ArmKind",
    "Base",
    "Cell",
    "Experiment",
    "Guidance",
    "TestSplit",
    "arms_of",
    "cells_of",
    "check_arms",
    "cost_rows",
    "experiment_config",
    "prepare_experiment",
    "probe_rows",
    "region_rows",
    "run_experiment",
    "source_rows",
    "split_caption",
    "split_test_set",
    "summarise",
    "table_rows",
    "unscorable_rows",
]
