"""The whole spec (:class:`CampaignSpec`): the sections of this package plus those the leaf
packages own (``oracle``: :class:`~chemgap.oracle.config.OracleConfig`; ``model`` and
``ensemble``: :class:`~chemgap.models.config.ModelConfig`,
:class:`~chemgap.models.config.EnsembleConfig`), in the order a dumped spec lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from chemgap.models.config import EnsembleConfig, ModelConfig
from chemgap.oracle.config import OracleConfig

from .base import SPEC_VERSION, Section
from .diagnostics import DiagnosticsConfig
from .loop import BudgetConfig, ExplorationConfig, SelectionConfig
from .probes.registry import ProbesConfig
from .remediation import RemediationConfig
from .system import SystemConfig, TestSetConfig

__all__ = ["CampaignSpec"]


class CampaignSpec(Section):
    """A campaign, one YAML document.

    Where to look (system), who tells the truth (oracle), what learns (model, ensemble), how to
    look (exploration, selection), when to stop (budget), what to report (diagnostics).
    """

    spec_version: Literal[1] = SPEC_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="campaign name")
    description: str = ""
    seed: int = Field(0, ge=0, description="master RNG seed")
    system: SystemConfig
    oracle: OracleConfig = Field(default_factory=OracleConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    test_set: TestSetConfig = Field(default_factory=TestSetConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)

    @model_validator(mode="after")
    def _probes_for_convergence(self) -> CampaignSpec:
        if self.budget.convergence.probes and not (self.probes.names and self.probes.every):
            raise ValueError(
                "budget.convergence.probes needs probes that run during the loop: set "
                f"probes.names (got {[str(n) for n in self.probes.names]}) and probes.every ≥ 1 "
                f"(got {self.probes.every})"
            )
        return self

    def elements(self, base_dir: Path | None = None) -> set[str]:
        """Every element the seed structures contain."""
        base = base_dir or Path.cwd()
        return set().union(*(seed.elements(base) for seed in self.system.seeds))

    def summary(self) -> str:
        """One line a user reads to see what the campaign will do."""
        m, e, x = self.model, self.ensemble, self.exploration
        temps = "/".join(f"{t:g}" for t in x.temperatures_K)
        return (
            f"{self.name}: oracle {self.oracle.name} · {len(self.system.seeds)} seed sets · "
            f"{e.members}×MACE({m.num_channels}ch L{m.max_L}, r_max {m.r_max:g} Å, {e.mode}) · "
            f"{x.walkers} walkers × {x.steps} steps at {temps} K · "
            f"{self.selection.batch_size} labels/iter, ≤{self.budget.max_iterations} iterations, "
            f"≤{self.budget.max_oracle_calls} oracle calls"
        )
