"""The campaign spec: one YAML document composed of sections owned by the packages that use them.

``oracle`` is :class:`chemgap.oracle.config.OracleConfig`; ``model`` and ``ensemble`` are
:class:`chemgap.models.config.ModelConfig` and :class:`~chemgap.models.config.EnsembleConfig`. The
sections the agent owns (seed structures, exploration, selection, budget, diagnostics) are defined
here, because ``campaigns`` is the schema and ``agent`` depends on it, not the other way round.

Every model forbids unknown keys. :func:`load_spec` collects *every* problem of a spec into one
:class:`SpecError` whose lines read ``path.to.field: message (got VALUE)``.
"""

from __future__ import annotations

import re
import reprlib
import typing
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from ase.data import chemical_symbols
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from chemgap.models.config import EnsembleConfig, LongRange, ModelConfig
from chemgap.oracle.config import OracleConfig, check_elements

SPEC_VERSION = 1
_ELEMENTS = frozenset(chemical_symbols[1:])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)


# --------------------------------------------------------------------------- seed structures
class _SeedBase(_Section):
    """Options every seed generator shares: copies, and random strain/rattle of each copy."""

    count: int = Field(1, ge=1, description="structures generated from this entry")
    strain: float = Field(0.0, ge=0, lt=0.5, description="max random strain per cell component")
    rattle_A: float = Field(0.0, ge=0, lt=1.0, description="std of Gaussian displacements, Å")
    initial: bool = Field(
        True, description="may be drawn into the initial labelled set (all seeds start walkers)"
    )

    def elements(self, base_dir: Path) -> set[str]:
        raise NotImplementedError


class _CrystalSeed(_SeedBase):
    formula: str = Field(description="chemical formula or element, as ase.build.bulk takes it")
    crystal: Literal["fcc", "bcc", "hcp", "diamond", "zincblende", "rocksalt", "cesiumchloride"]
    a: float | None = Field(None, gt=0, description="lattice constant, Å (default: ASE's)")
    supercell: tuple[int, int, int] = Field((1, 1, 1), description="repetitions of the cell")
    cubic: bool = Field(False, description="use the conventional cubic cell")

    @field_validator("formula")
    @classmethod
    def _known_elements(cls, value: str) -> str:
        _formula_symbols(value)
        return value

    @field_validator("supercell")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError("repetitions must be >= 1")
        return value

    def elements(self, base_dir: Path) -> set[str]:
        return set(_formula_symbols(self.formula))


class BulkSeed(_CrystalSeed):
    """A perfect crystal (supercell), optionally strained and rattled."""

    kind: Literal["bulk"] = "bulk"


class VacancySeed(_CrystalSeed):
    """A supercell with randomly chosen atoms removed (point defects)."""

    kind: Literal["vacancy"] = "vacancy"
    vacancies: int = Field(1, ge=1, description="atoms removed per structure")


class SurfaceSeed(_CrystalSeed):
    """A slab cut along ``miller`` with vacuum on both sides (periodic in-plane)."""

    kind: Literal["surface"] = "surface"
    miller: tuple[int, int, int] = Field((1, 1, 1), description="surface normal (Miller indices)")
    layers: int = Field(4, ge=1)
    vacuum_A: float = Field(8.0, ge=0, description="vacuum on each side, Å")
    size: tuple[int, int] = Field((2, 2), description="in-plane repetitions")


class ClusterSeed(_CrystalSeed):
    """A finite cluster: the atoms of a crystal within ``radius_A`` of a site (non-periodic)."""

    kind: Literal["cluster"] = "cluster"
    radius_A: float = Field(4.0, gt=0, description="cut radius, Å")
    offset_A: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0),
        description="centre = the atom nearest the crystal's middle + this offset, Å "
        "(off an atom, e.g. a/4 (1,1,1) in rocksalt, gives charge-neutral clusters)",
    )


class MoleculeSeed(_SeedBase):
    """A molecule from SMILES (RDKit ETKDG conformers) or from ASE's G2 collection by name."""

    kind: Literal["molecule"] = "molecule"
    smiles: str | None = None
    name: str | None = Field(None, description="G2 name, e.g. 'CH3CH2OH'")
    charge: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> MoleculeSeed:
        if (self.smiles is None) == (self.name is None):
            raise ValueError("give exactly one of 'smiles' or 'name'")
        if self.smiles is not None:
            _smiles_symbols(self.smiles)
        elif self.name is not None:
            from ase.collections import g2

            if self.name not in g2.names:
                raise ValueError(f"name {_short(self.name)} is not in ASE's G2 collection")
        return self

    def elements(self, base_dir: Path) -> set[str]:
        """The molecule's elements (hydrogens included)."""
        if self.smiles is not None:
            return set(_smiles_symbols(self.smiles))
        from ase.build import molecule

        return set(molecule(self.name).get_chemical_symbols())


class DimerSeed(_SeedBase):
    """Two atoms at a range of separations (e.g. an ion pair), non-periodic."""

    kind: Literal["dimer"] = "dimer"
    symbols: tuple[str, str]
    distances_A: list[float] = Field(min_length=1, description="separations, Å")

    @field_validator("symbols")
    @classmethod
    def _known(cls, value: tuple[str, str]) -> tuple[str, str]:
        for s in value:
            if s not in _ELEMENTS:
                raise ValueError(f"unknown element {_short(s)}")
        return value

    @field_validator("distances_A")
    @classmethod
    def _positive_distances(cls, value: list[float]) -> list[float]:
        if min(value) <= 0:
            raise ValueError("distances must be > 0 Å")
        return value

    def elements(self, base_dir: Path) -> set[str]:
        """The two atoms' elements."""
        return set(self.symbols)


class FileSeed(_SeedBase):
    """Structures from a file ASE reads (extxyz, CIF, POSCAR, ...); path relative to the spec."""

    kind: Literal["file"] = "file"
    path: str
    index: str = Field(":", description="ASE index string: ':' all, '0' first, '::10' ...")
    format: str | None = Field(None, description="ASE format name when the suffix is ambiguous")

    def resolve(self, base_dir: Path) -> Path:
        """The file's path; a relative one starts at ``base_dir`` (the spec's folder)."""
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else base_dir / p

    def elements(self, base_dir: Path) -> set[str]:
        """Every element of the structures the file holds (it is read).

        Raises:
            ValueError: the file is missing or ASE cannot read it.
        """
        from ase.io import read

        path = self.resolve(base_dir)
        if not path.is_file():
            raise ValueError(f"file {_short(str(path), 120)} does not exist")
        try:
            images = read(path, index=self.index, format=self.format)
        except Exception as exc:
            raise ValueError(f"ASE cannot read {_short(str(path), 120)}: {_one_line(exc)}") from exc
        images = images if isinstance(images, list) else [images]
        return {s for atoms in images for s in atoms.get_chemical_symbols()}


Seed = Annotated[
    BulkSeed | VacancySeed | SurfaceSeed | ClusterSeed | MoleculeSeed | DimerSeed | FileSeed,
    Field(discriminator="kind"),
]


class SystemConfig(_Section):
    """The region of chemical space: seed structures the campaign starts from."""

    seeds: list[Seed] = Field(min_length=1, description="seed structure generators")
    initial_labels: int = Field(16, ge=2, description="seed structures labelled before iter 1")
    holdout_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="labels kept out of training for early stopping and validation errors",
    )
    calibration_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="labels kept out of training to fit the uncertainty calibration and trust "
        "levels on (never the early-stopping set)",
    )


# --------------------------------------------------------------------------- test set
class TestSetMethod(StrEnum):
    """How test structures are drawn from the seeds at each test temperature."""

    MD = "md"  # short Langevin MD with the oracle itself (cheap oracles: EMT, SW, xTB molecules)
    RATTLE = "rattle"  # thermal Gaussian displacements and strain (any oracle: one call each)


class TestSetConfig(_Section):
    """A fixed labelled test set: labelled once at iteration 0 and never trained on, selected
    from or calibrated on; every iteration is scored on it.

    Generated (``per_kind`` > 0): ``per_kind`` structures from *every* seed entry, also those
    with ``initial: false``, spread over ``temperatures_K`` (default: the exploration ladder).
    A seed entry is one *kind* (its ``kind``, with the formula, SMILES or name when the spec has
    several entries of one kind); kinds with ``initial: true`` are in distribution (ID), the
    others out of distribution (OOD). From a file (``file``): a user's labelled structures
    (extxyz with REF_energy / REF_forces, or energy / forces), used as given; ``info['kind']``
    or ``info['config_type']`` names each structure's kind, and a kind equal to an initial
    seed's kind is ID.
    """

    __test__ = False  # not a pytest class

    per_kind: int = Field(4, ge=0, description="test structures per seed entry (0: none)")
    temperatures_K: list[float] | None = Field(
        None,
        description="temperatures the test structures are drawn at, K (default: exploration's)",
    )
    method: TestSetMethod = Field(
        TestSetMethod.RATTLE,
        description="md: oracle Langevin MD; rattle: thermal displacements and strain",
    )
    md_steps: int = Field(40, ge=1, description="md: oracle MD steps before the frame is taken")
    timestep_fs: float = Field(2.0, gt=0, le=10, description="md: timestep, fs")
    rattle_A: float = Field(
        0.05, ge=0, lt=1, description="rattle: displacement std at 300 K, Å (scales as sqrt(T))"
    )
    strain: float = Field(0.01, ge=0, lt=0.5, description="rattle: max random strain")
    file: str | None = Field(None, description="labelled test structures instead of generated")

    @field_validator("temperatures_K")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or min(value) <= 0):
            raise ValueError("temperatures must be > 0 K (or leave the list out)")
        return value

    def resolve(self, base_dir: Path) -> Path | None:
        """The test file as an absolute path (relative paths are relative to the spec)."""
        if self.file is None:
            return None
        p = Path(self.file).expanduser()
        return p if p.is_absolute() else base_dir / p


# --------------------------------------------------------------------------- exploration
class TrustMode(StrEnum):
    """How the trust window's levels are set."""

    CALIBRATED = "calibrated"  # per-element levels from the calibrated ensemble uncertainty
    FIXED = "fixed"  # DP-GEN-style fixed force-deviation levels (Zhang et al. 2020)


class TrustConfig(_Section):
    """Trust window on the per-atom force uncertainty, eV/Å.

    Below ``lower`` a frame is accurate; above it, a candidate for labelling; above ``upper`` the
    dynamics are no longer trusted and the walker restarts from its last accurate frame.
    ``fixed`` uses the numbers as given (DP-GEN's 0.05/0.15 eV/Å); ``calibrated`` sets, per
    element, ``lower`` to the ``quantile`` of the calibrated uncertainty the current ensemble shows
    on held-out in-distribution data, and ``upper`` to ``upper_ratio`` x ``lower``.
    """

    mode: TrustMode = TrustMode.CALIBRATED
    lower: float = Field(0.05, gt=0, description="fixed mode: accurate below, eV/Å")
    upper: float = Field(0.15, gt=0, description="fixed mode: restart above, eV/Å")
    quantile: float = Field(0.95, gt=0, lt=1, description="calibrated mode: in-distribution level")
    upper_ratio: float = Field(3.0, gt=1, description="calibrated mode: upper / lower")

    @model_validator(mode="after")
    def _ordered(self) -> TrustConfig:
        if self.upper <= self.lower:
            raise ValueError(f"upper ({self.upper}) must exceed lower ({self.lower})")
        return self


class ExplorationConfig(_Section):
    """Batched Langevin MD walkers driven by the ensemble-mean force."""

    walkers: int = Field(16, ge=1, description="MD walkers advanced together")
    steps: int = Field(200, ge=1, description="MD steps per walker per iteration")
    temperatures_K: list[float] = Field([300.0], min_length=1, description="temperature ladder, K")
    timestep_fs: float = Field(1.0, gt=0, le=10, description="MD timestep, fs")
    friction_per_fs: float = Field(0.01, ge=0, description="Langevin friction, 1/fs (0: NVE)")
    neighbour_skin_A: float = Field(0.5, ge=0, description="neighbour-list skin, Å")
    min_distance_factor: float = Field(
        0.5, gt=0, lt=1, description="stop a walker below this x covalent-radius sum"
    )
    trust: TrustConfig = Field(default_factory=TrustConfig)

    @field_validator("temperatures_K")
    @classmethod
    def _positive_temperatures(cls, value: list[float]) -> list[float]:
        if min(value) <= 0:
            raise ValueError("temperatures must be > 0 K")
        return value


# --------------------------------------------------------------------------- selection
class SelectionStrategy(StrEnum):
    """How the labelling batch is chosen from the candidates."""

    UNCERTAINTY = "uncertainty"  # highest calibrated uncertainty first
    DIVERSE = "diverse"  # uncertainty-ranked, farthest-point sampling on descriptors
    RANDOM = "random"  # control


class SelectionConfig(_Section):
    """How many candidates are labelled per iteration, and how they are chosen."""

    strategy: SelectionStrategy = SelectionStrategy.DIVERSE
    batch_size: int = Field(16, ge=1, description="structures labelled per iteration")
    per_element_quota: dict[str, int] = Field(
        default_factory=dict, description="minimum structures containing each element"
    )
    dedup_distance: float = Field(
        1e-3, ge=0, description="descriptor distance below which two structures are duplicates"
    )

    @field_validator("per_element_quota")
    @classmethod
    def _quota_elements(cls, value: dict[str, int]) -> dict[str, int]:
        for element, n in value.items():
            if element not in _ELEMENTS:
                raise ValueError(f"unknown element {_short(element)}")
            if n < 0:
                raise ValueError(f"quota for {element} must be >= 0")
        return value


# --------------------------------------------------------------------------- budget and stop
class ConvergenceConfig(_Section):
    """When the campaign counts as converged: criteria that must hold for ``patience`` iters."""

    accurate_fraction: float = Field(0.95, gt=0, le=1, description="explored frames accurate")
    force_mae_tol: float = Field(0.005, ge=0, description="change of validation force MAE, eV/Å")
    patience: int = Field(2, ge=1, description="iterations the criteria must hold")
    probes: bool = Field(
        False, description="converged only while the last probe run passed (needs probes.every)"
    )


class BudgetConfig(_Section):
    """When the campaign stops: iterations, oracle calls, wall time, convergence."""

    max_iterations: int = Field(5, ge=1)
    max_oracle_calls: int = Field(500, ge=1, description="labels, failures included")
    wall_time_s: float = Field(3600.0, gt=0, description="campaign wall-time budget, s")
    convergence: ConvergenceConfig = Field(default_factory=ConvergenceConfig)


# --------------------------------------------------------------------------- diagnostics
class SplitName(StrEnum):
    """Biased train/test splits that expose out-of-distribution failure."""

    RANDOM = "random"
    CLUSTER = "cluster"
    MAXSEP = "maxsep"
    SIZE = "size"
    ELEMENT = "element"
    GROUP = "group"
    TEMPERATURE = "temperature"


class DiagnosticsConfig(_Section):
    """How failure regions are found and tested, and which biased splits are reported."""

    splits: list[SplitName] = Field(
        [SplitName.RANDOM, SplitName.CLUSTER, SplitName.MAXSEP, SplitName.SIZE]
    )
    n_clusters: int = Field(20, ge=2, description="KMeans clusters for the cluster split")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for CIs")
    alpha: float = Field(0.05, gt=0, lt=1, description="false-discovery rate (Benjamini-Hochberg)")
    min_region_atoms: int = Field(10, ge=1, description="smallest region reported")
    tree_depth: int = Field(3, ge=1, le=6, description="depth of the rule-finding tree")
    min_ratio: float = Field(
        1.2, ge=1, description="smallest error ratio to the baseline a region must show"
    )
    silent_factor: float = Field(
        2.0,
        gt=1,
        description="a region is silent when its error/uncertainty ratio is this x the overall one",
    )
    environment_classes: int = Field(
        8, ge=1, description="KMeans classes of local environments (per-atom SOAP)"
    )
    exemplars: int = Field(3, ge=0, description="exemplar structures saved per region")
    max_regions: int = Field(20, ge=1, description="most regions reported")
    id_force_target: float = Field(
        0.15,
        gt=0,
        le=1,
        description="regions are findings once the in-distribution force MAE is at most this "
        "fraction of the in-distribution test forces' RMS (above it they are tentative)",
    )
    id_fraction: float = Field(
        0.2, gt=0, lt=1, description="split study: train side held out as in-distribution test"
    )
    holdout_element: str | None = Field(None, description="element split: element held out")
    holdout_group: str | None = Field(
        None, description="group split: functional group held out (e.g. nitrile)"
    )

    @field_validator("holdout_element")
    @classmethod
    def _known_holdout_element(cls, value: str | None) -> str | None:
        if value is not None and value not in _ELEMENTS:
            raise ValueError(f"unknown element {_short(value)}")
        return value


# --------------------------------------------------------------------------- probes
class ProbeName(StrEnum):
    """Physical-behaviour probes (``agent/probes/``, one module each)."""

    EOS = "eos"  # E(V) around each row's own minimum, Birch-Murnaghan V0, E0, B0
    ELASTIC = "elastic"  # C_ij from finite strains and stresses at each row's own lattice
    VACANCY = "vacancy"  # vacancy formation energy (relaxed, unrelaxed) against supercell size
    SURFACE = "surface"  # surface energies (relaxed, unrelaxed) of low-index facets
    DIMER = "dimer"  # pair curves with MLIP Arena's / ML-PEG's shape metrics
    VIBRATIONS = "vibrations"  # harmonic frequencies (molecules) or Γ-point phonons (crystals)
    MD_STABILITY = "md_stability"  # NVT until a step cap or a failure (MLIPAudit score)
    NVE_DRIFT = "nve_drift"  # energy drift of NVE dynamics and its ratio to KE fluctuations
    RDF = "rdf"  # radial distribution function of model MD against oracle MD


class Bound(_Section):
    """Thresholds of one metric in ML-PEG's form: ``good`` scores 1, ``bad`` scores 0, linear in
    between and clipped (either may be the larger). A metric passes when its score reaches
    ``probes.pass_score``.
    """

    good: float
    bad: float

    @model_validator(mode="after")
    def _distinct(self) -> Bound:
        if self.good == self.bad:
            raise ValueError(f"good and bad must differ (both {self.good})")
        return self


class BoundOverride(_Section):
    """A change to one metric's default :class:`Bound` (either end, or both)."""

    good: float | None = None
    bad: float | None = None


def _b(good: float, bad: float) -> Bound:
    return Bound(good=good, bad=bad)


# Default bounds per probe and metric, in the units of what is judged (the probe module says
# whether that is the error against the oracle, the relative error, the model's value, or its
# shift from the oracle's value placed on the anchor's scale). Anchors: ML-PEG's metrics.yml
# files (ddmms/ml-peg, ml_peg/analysis/*/metrics.yml), MLIPAudit's scores
# (instadeepai/mlipaudit, docs/source/scores/index.rst) and MLIP Arena's diatomics table.
PROBE_BOUNDS: dict[ProbeName, dict[str, Bound]] = {
    ProbeName.EOS: {
        "V0": _b(0.0, 0.15),  # relative; ~0.2 Å on a 4 Å lattice (ML-PEG lattice_constants)
        "E0": _b(0.0, 0.2),  # eV/atom (ML-PEG energy_volume_curves_metals, 200 meV/atom)
        "B0": _b(2.0, 30.0),  # GPa (ML-PEG elasticity, bulk modulus MAE)
        "curve_rmse": _b(0.0, 0.2),  # eV/atom, minima aligned (ML-PEG EOS Δ)
    },
    ProbeName.ELASTIC: {
        "C11": _b(5.0, 50.0),  # GPa (ML-PEG elasticity tensor MAE)
        "C12": _b(5.0, 50.0),
        "C44": _b(5.0, 50.0),
        "Cij_mae": _b(5.0, 50.0),
        "B_voigt": _b(2.0, 30.0),  # GPa (ML-PEG bulk modulus MAE)
        "G_voigt": _b(2.0, 30.0),  # GPa (ML-PEG shear modulus MAE)
    },
    ProbeName.VACANCY: {
        "E_vac": _b(0.05, 0.5),  # eV (ML-PEG elemental_tm_vacancies MAE)
        "rmsd": _b(0.0, 0.2),  # Å (ML-PEG split_vacancy RMSD)
        "size_spearman": _b(1.0, 0.6),  # (ML-PEG split_vacancy Spearman)
    },
    ProbeName.SURFACE: {
        "gamma": _b(0.0, 0.0169),  # eV/Å²: ML-PEG cleavage_energy 33.8 meV/Å², halved
        "facet_spearman": _b(1.0, 0.6),  # facet order (ML-PEG's Spearman bounds)
    },
    ProbeName.DIMER: {
        # counts judged by |model − oracle|: pass only when equal to the oracle's (one off
        # scores 0); ML-PEG diatomics' anchors (1 flip, 1 minimum) assume a physical oracle
        "force_flips": _b(0.0, 1.0),
        "energy_minima": _b(0.0, 1.0),
        # ρ(E, repulsion / attraction): ML-PEG diatomics' good ends; bad at 0 (chemgap's:
        # ML-PEG's ∓1 ends would pass a missing wall, ρ ≈ 0; MLIP Arena's worst has −0.42)
        "spearman_repulsion": _b(-1.0, 0.0),
        "spearman_attraction": _b(1.0, 0.0),
        "tortuosity": _b(1.0, 5.0),  # MLIP Arena's best is 1 (chemgap's bad)
        "energy_jump": _b(0.0, 1.0),  # eV; MLIP Arena's best models ≲ 0.04 eV (chemgap's bad)
        "conservation_deviation": _b(0.0, 1.0),  # eV/Å (chemgap's)
        "well_depth": _b(0.0, 0.5),  # eV (chemgap's)
        "well_position": _b(0.0, 0.2),  # Å (chemgap's, ML-PEG's lattice-constant scale)
    },
    ProbeName.VIBRATIONS: {
        "freq_mae": _b(0.0, 35.0),  # cm⁻¹ = 50 K (ML-PEG phonons ω MAE)
        "freq_max": _b(0.0, 35.0),  # cm⁻¹ (ML-PEG phonons ω_max)
        "imaginary_modes": _b(0.0, 1.0),  # extra imaginary modes (ML-PEG stability F1)
    },
    ProbeName.MD_STABILITY: {
        "score": _b(1.0, 0.0),  # MLIPAudit stability score: < 0.5 means an explosion
    },
    ProbeName.NVE_DRIFT: {
        "drift_ratio": _b(1.0, 1.5),  # r ≤ 1 scores 1 (MLIPAudit); 0.5 at r = 1.25
    },
    ProbeName.RDF: {
        "overlap": _b(1.0, 0.8),  # Σmin/Σmax of the two g(r) (chemgap's)
        "first_peak": _b(0.0, 0.2),  # Å; passes ≤ 0.1 Å (MLIPAudit's RDF threshold)
    },
}


class RelaxSettings(_Section):
    """Geometry relaxation with ASE's FIRE (Bitzek et al., PRL 97, 170201 (2006))."""

    fmax: float = Field(
        0.05, gt=0, description="converged below this max force, eV/Å (MLIPAudit's 0.05)"
    )
    max_steps: int = Field(200, ge=1, description="optimiser steps before giving up")


class EosProbeConfig(_Section):
    """E(V) of the crystal, isotropically scaled (atoms not relaxed), around each row's own
    equilibrium volume (its lattice relaxed first).
    """

    volume_range: float = Field(
        0.06, gt=0, lt=0.3, description="± fractional volume change around each row's V0"
    )
    points: int = Field(9, ge=5, le=41, description="volumes sampled")


class ElasticProbeConfig(_Section):
    """Clamped-ion C_ij by central differences of the stress over ± each Voigt strain, at each
    row's own relaxed lattice.
    """

    strain: float = Field(0.005, gt=0, le=0.05, description="magnitude of each applied strain")


class VacancyProbeConfig(_Section):
    """Vacancy formation energy, relaxed (fixed cell; judged) and unrelaxed, in n×n×n
    supercells of the unit cell at the system's lattice.
    """

    sizes: list[int] = Field([2], min_length=1, description="supercell repetitions n")
    relax: RelaxSettings = Field(default_factory=RelaxSettings)

    @field_validator("sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if min(value) < 1:
            raise ValueError("sizes must be >= 1")
        return sorted(set(value))


class SurfaceProbeConfig(_Section):
    """Surface energies, relaxed (judged) and unrelaxed, of slabs of the unit cell at the
    system's lattice, one per facet.
    """

    facets: list[tuple[int, int, int]] = Field(
        [(1, 0, 0), (1, 1, 0), (1, 1, 1)], min_length=1, description="Miller indices"
    )
    layers: int = Field(3, ge=1, description="repeats of the unit cell along the normal")
    vacuum_A: float = Field(8.0, gt=0, description="vacuum on each side, Å")
    relax: RelaxSettings = Field(default_factory=RelaxSettings)


class DimerProbeConfig(_Section):
    """Pair curves for every element pair, from ``r_min_A`` to the model cutoff + ``beyond_A``."""

    r_min_A: float = Field(0.5, gt=0, description="shortest separation, Å")
    beyond_A: float = Field(1.0, ge=0, description="how far past the model's cutoff, Å")
    step_A: float = Field(0.02, gt=0, le=0.2, description="spacing of the separations, Å")


class VibrationsProbeConfig(_Section):
    """Harmonic frequencies by central finite differences (ASE's Vibrations scheme)."""

    delta_A: float = Field(0.01, gt=0, le=0.1, description="displacement, Å")
    supercell: int = Field(1, ge=1, le=3, description="crystals: n×n×n cell of the Γ point")
    imaginary_cm: float = Field(
        10.0, ge=0, description="|imaginary| frequencies above this count as unstable, cm⁻¹"
    )
    relax: RelaxSettings = Field(
        default_factory=lambda: RelaxSettings(fmax=1e-3, max_steps=500),
        description="molecules are relaxed with each potential first",
    )


class _MDProbeBase(_Section):
    timestep_fs: float = Field(2.0, gt=0, le=10, description="MD timestep, fs")
    steps: int = Field(250, ge=10, description="MD steps (the cap)")
    min_atoms: int = Field(
        32, ge=1, description="crystals: the smallest n×n×n supercell with this many atoms"
    )
    members: bool = Field(
        False,
        description="also run every member, for a band (each member walker is evaluated by all "
        "K members: about K + 1 times the cost)",
    )


class MDStabilityProbeConfig(_MDProbeBase):
    """BAOAB Langevin NVT at each temperature until the step cap or a failure."""

    temperatures_K: list[float] | None = Field(
        None, description="K (default: the exploration temperatures)"
    )
    friction_per_fs: float = Field(0.01, gt=0, description="Langevin friction, 1/fs")
    oracle: bool = Field(False, description="also run the oracle (its time to failure)")


class NveDriftProbeConfig(_MDProbeBase):
    """Velocity-Verlet NVE from Maxwell-Boltzmann velocities at ``temperature_K``."""

    temperature_K: float = Field(300.0, gt=0, description="initial temperature, K")
    oracle: bool | None = Field(
        None, description="also run the oracle (default: when it is cheap: emt, sw, tersoff)"
    )


class RdfProbeConfig(_MDProbeBase):
    """g(r) of model and oracle NVT runs with common random numbers (cheap oracles only)."""

    temperature_K: float = Field(600.0, gt=0, description="K")
    friction_per_fs: float = Field(0.02, gt=0, description="Langevin friction, 1/fs")
    steps: int = Field(300, ge=10, description="MD steps")
    equilibration: int = Field(100, ge=0, description="steps discarded first")
    stride: int = Field(5, ge=1, description="steps between sampled frames")
    r_max_A: float = Field(6.0, gt=0, description="largest distance, Å")
    bins: int = Field(60, ge=10)
    expensive_oracle: bool = Field(False, description="allow oracles other than emt/sw/tersoff")

    @model_validator(mode="after")
    def _frames_left(self) -> RdfProbeConfig:
        if self.equilibration >= self.steps:
            raise ValueError(
                f"equilibration ({self.equilibration}) must be below steps ({self.steps}), "
                "or no frame is sampled"
            )
        return self


class ProbesConfig(_Section):
    """Physical-behaviour probes against the oracle (off unless ``names`` lists some).

    ``every`` = 0 runs them once, after the last iteration; n > 0 every n iterations (and after
    the last). ``bounds`` overrides default bounds (:data:`PROBE_BOUNDS`) per probe and metric,
    e.g. ``{dimer: {force_flips: {bad: 3}}}``.
    """

    names: list[ProbeName] = Field(default_factory=list, description="probes to run")
    every: int = Field(0, ge=0, description="iterations between runs; 0 = only at the end")
    pass_score: float = Field(0.5, gt=0, le=1, description="score a metric needs to pass")
    candidates_per_probe: int = Field(
        2, ge=0, description="structures each probe proposes for labelling"
    )
    bounds: dict[ProbeName, dict[str, BoundOverride]] = Field(default_factory=dict)
    eos: EosProbeConfig = Field(default_factory=EosProbeConfig)
    elastic: ElasticProbeConfig = Field(default_factory=ElasticProbeConfig)
    vacancy: VacancyProbeConfig = Field(default_factory=VacancyProbeConfig)
    surface: SurfaceProbeConfig = Field(default_factory=SurfaceProbeConfig)
    dimer: DimerProbeConfig = Field(default_factory=DimerProbeConfig)
    vibrations: VibrationsProbeConfig = Field(default_factory=VibrationsProbeConfig)
    md_stability: MDStabilityProbeConfig = Field(default_factory=MDStabilityProbeConfig)
    nve_drift: NveDriftProbeConfig = Field(default_factory=NveDriftProbeConfig)
    rdf: RdfProbeConfig = Field(default_factory=RdfProbeConfig)

    @field_validator("names")
    @classmethod
    def _unique(cls, value: list[ProbeName]) -> list[ProbeName]:
        return list(dict.fromkeys(value))

    @field_validator("bounds")
    @classmethod
    def _known_metrics(
        cls, value: dict[ProbeName, dict[str, BoundOverride]]
    ) -> dict[ProbeName, dict[str, BoundOverride]]:
        for probe, metrics in value.items():
            known = PROBE_BOUNDS[ProbeName(probe)]
            for metric, override in metrics.items():
                if metric not in known:
                    raise ValueError(
                        f"{probe} has no metric {_short(metric)}; it has: {', '.join(known)}"
                    )
                merged = known[metric].model_dump() | override.model_dump(exclude_none=True)
                Bound(**merged)  # good == bad is refused here
        return value

    def bounds_for(self, probe: ProbeName | str) -> dict[str, Bound]:
        """The bounds of ``probe``'s metrics: defaults with this section's overrides applied."""
        name = ProbeName(probe)
        out = dict(PROBE_BOUNDS[name])
        for metric, override in self.bounds.get(name, {}).items():
            out[metric] = Bound(
                **(out[metric].model_dump() | override.model_dump(exclude_none=True))
            )
        return out


# --------------------------------------------------------------------------- remediation
class RemedyName(StrEnum):
    """Remediation strategies a remediation experiment compares (``chemgap.agent.remedies``)."""

    # data remedies: spend the same oracle budget on different structures
    UNCERTAINTY = "uncertainty"  # the loop continued: the most uncertain explored frames
    DIVERSE = "diverse"  # uncertain and spread out in descriptor space
    RANDOM = "random"  # the control: frames drawn uniformly from the same trajectories
    REGION = "region"  # frames whose atoms fall in a flagged failure region
    PROBE = "probe"  # structures from the probes' runs
    CELL_SIZE = "cell_size"  # larger supercells of the periodic seeds
    # model remedies: the same data, a different model or training
    TRANSFER = "transfer"  # members initialised from another model through an element map
    LONG_RANGE = "long_range"  # learned charges (coulomb) and/or D3 added to MACE
    DEEPER = "deeper"  # one more message-passing layer
    OBSERVATIONS = "observations"  # stress/virials fitted as well


class RemediationConfig(_Section):
    """A remediation experiment after the loop (off unless ``remedies`` lists some).

    Every arm starts from the same base (the run's last iteration unless ``iteration`` says
    otherwise), trains with the same settings, and is repeated ``repeats`` times with different
    seeds; data arms spend ``budget`` oracle calls each, against the ``random`` control, model
    arms are compared with the base model retrained on the same data (``baseline``).
    """

    remedies: list[RemedyName] = Field(default_factory=list, description="arms to compare")
    budget: int = Field(24, ge=1, le=10_000, description="oracle calls per data arm and repeat")
    repeats: int = Field(3, ge=1, le=50, description="repeats (seeds) per arm")
    iteration: int | None = Field(
        None, ge=1, description="the base iteration (default: the run's last)"
    )
    members: int | None = Field(
        None, ge=1, le=32, description="ensemble size of every arm (default: ensemble.members)"
    )
    max_epochs: int | None = Field(
        None, ge=1, description="epoch cap of every arm (default: ensemble.max_epochs)"
    )
    sizes: list[int] = Field(
        default_factory=list,
        description="training-set sizes of a data-size sweep of the model arms (empty: all)",
    )
    long_range: LongRange = Field(
        LongRange.COULOMB, description="what the long_range arm adds: coulomb, d3, coulomb+d3"
    )
    transfer_from: str | None = Field(
        None, description="transfer: model directory to start from (default: iteration 1's)"
    )
    element_map: str | None = Field(
        None, description="transfer: source=target elements, e.g. Si=Ge (needed by transfer)"
    )
    stress_weight: float = Field(1.0, gt=0, description="observations: loss weight of stress")
    cell_repeat: int = Field(2, ge=2, le=4, description="cell_size: supercell repetitions")
    probes: list[ProbeName] = Field(
        default_factory=list,
        description="probes every arm's ensemble is scored on (|model − oracle| per metric)",
    )

    @field_validator("probes")
    @classmethod
    def _unique_probes(cls, value: list[ProbeName]) -> list[ProbeName]:
        return list(dict.fromkeys(value))

    @field_validator("remedies")
    @classmethod
    def _unique_remedies(cls, value: list[RemedyName]) -> list[RemedyName]:
        return list(dict.fromkeys(value))

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        if any(n < 2 for n in value):
            raise ValueError("every size must be ≥ 2 structures")
        return sorted(set(value))

    @field_validator("long_range")
    @classmethod
    def _adds_something(cls, value: LongRange) -> LongRange:
        if value == LongRange.NONE:
            raise ValueError("the long_range arm must add a term: coulomb, d3 or coulomb+d3")
        return value

    @field_validator("element_map")
    @classmethod
    def _map(cls, value: str | None) -> str | None:
        if value is None:
            return value
        for part in value.replace("->", "=").split(","):
            src, sep, dst = part.strip().partition("=")
            if not sep or src.strip() not in _ELEMENTS or dst.strip() not in _ELEMENTS:
                raise ValueError("expected SRC=DST pairs of chemical symbols, e.g. Si=Ge")
        return value


# --------------------------------------------------------------------------- the whole spec
class CampaignSpec(_Section):
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


# --------------------------------------------------------------------------- loading
class SpecError(ValueError):
    """Every problem found in a spec, one ``path.to.field: message (got VALUE)`` per line."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = problems
        self.source = source
        n = len(problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


def _formula_symbols(formula: str) -> list[str]:
    from ase.symbols import string2symbols

    try:
        symbols = string2symbols(formula)
    except Exception as exc:
        raise ValueError(f"cannot parse formula {_short(formula)}") from exc
    unknown = sorted(set(symbols) - _ELEMENTS)
    if unknown or not symbols:
        raise ValueError(f"unknown element(s) in formula {_short(formula)}: {', '.join(unknown)}")
    return symbols


def _smiles_symbols(smiles: str) -> list[str]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {_short(smiles)}")
    mol = Chem.AddHs(mol)
    return [a.GetSymbol() for a in mol.GetAtoms()]


def _bounded_repr() -> reprlib.Repr:
    """A ``repr`` that stops early: a spec's value may be an alias bomb (9 levels of 9 aliases,
    a billion items) or refer to itself, and only its first characters are shown.
    """
    out = reprlib.Repr()
    out.maxlevel, out.maxdict, out.maxlist, out.maxtuple, out.maxset = 3, 4, 6, 6, 6
    out.maxstring = out.maxother = out.maxlong = 60
    return out


_REPR = _bounded_repr()


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` in at most ``limit`` characters, in time independent of its size."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that raises: say what it is
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: Any, limit: int = 160) -> str:
    """``str(text)`` on one line, at most ``limit`` characters (a library's error message)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_LONG_LITERAL = re.compile(r"'[^'\n]{57,}'|\"[^\"\n]{57,}\"")


def _clip_message(msg: str, limit: int = 300) -> str:
    """A validator's message with long quoted values shortened (the sentence around them kept),
    on one line, at most ``limit`` characters.
    """
    msg = _LONG_LITERAL.sub(lambda m: m.group(0)[:28] + "..." + m.group(0)[-28:], msg)
    return _one_line(msg, limit)


def _path_part(part: Any) -> str:
    """One component of a problem's path: as given, or as its short repr when it holds a control
    character, a dot, a colon or a space that would break the ``path: message`` line (or is
    longer than 40 characters).
    """
    text = str(part)
    if text and len(text) <= 40 and text.isprintable() and not any(c in text for c in ".: "):
        return text
    return _short(part)


def _format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``path.to.field: message (got VALUE)`` line per pydantic error, under ``prefix``."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = [_path_part(p) for p in err["loc"]]
        # drop the tag pydantic inserts for tagged unions (seeds.0.bulk.a -> seeds.0.a)
        loc = [
            p
            for i, p in enumerate(loc)
            if not (i > 0 and loc[i - 1].isdigit() and p in _SEED_KINDS)
        ]
        path = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        msg = _clip_message(err["msg"].removeprefix("Value error, "))
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{path}: {msg} (got {_short(err.get('input'))})")
    return problems


_SEED_KINDS = {"bulk", "vacancy", "surface", "cluster", "molecule", "dimer", "file"}


def _semantic_problems(spec: CampaignSpec, base_dir: Path) -> list[str]:
    """Checks across sections: elements of the seeds against the oracle and quotas."""
    problems = []
    elements: set[str] = set()
    for i, seed in enumerate(spec.system.seeds):
        try:
            elements |= seed.elements(base_dir)
        except ValueError as exc:
            problems.append(
                f"system.seeds.{i}: {exc} (got {_short(getattr(seed, 'path', seed.kind))})"
            )
    if elements:
        try:
            check_elements(spec.oracle, elements)
        except ValueError as exc:
            problems.append(f"oracle.name: {exc} (got {spec.oracle.name!r})")
    for element in spec.selection.per_element_quota:
        if elements and element not in elements:
            problems.append(
                f"selection.per_element_quota.{_path_part(element)}: no seed structure "
                f"contains {element} (got {_short(element)})"
            )
    return problems + _initial_set_problems(spec) + _test_set_problems(spec, base_dir)


def initial_pool_size(system: SystemConfig) -> int | None:
    """Seed structures that may be drawn into the initial set (None: a file seed's count is
    only known when the file is read).
    """
    total = 0
    for seed in system.seeds:
        if not seed.initial:
            continue
        if seed.kind == "file":
            return None
        n = len(seed.distances_A) if seed.kind == "dimer" else 1
        total += seed.count * n
    return total


def _initial_set_problems(spec: CampaignSpec) -> list[str]:
    """The initial set must leave something to train on and something to calibrate on."""
    system = spec.system
    if not any(seed.initial for seed in system.seeds):
        return [
            "system.seeds: every seed entry has initial: false, so there is nothing to label "
            "before the first training (got no initial seed); mark at least one initial: true"
        ]
    pool = initial_pool_size(system)
    n = system.initial_labels if pool is None else min(system.initial_labels, pool)
    n_hold, n_cal = held_out_counts(system, n)
    if n - n_hold - n_cal < 1:
        return [
            f"system.holdout_fraction: holds out {n_hold} (and calibration_fraction {n_cal}) of "
            f"the {n} initial structures, leaving none to train on (got "
            f"{system.holdout_fraction!r} and {system.calibration_fraction!r}); lower them or "
            "label more"
        ]
    return []


def held_out_counts(system: SystemConfig, n: int) -> tuple[int, int]:
    """Structures of ``n`` initial labels kept for validation and for calibration (≥ 1 each)."""
    return (
        max(1, round(system.holdout_fraction * n)),
        max(1, round(system.calibration_fraction * n)),
    )


def _test_set_problems(spec: CampaignSpec, base_dir: Path) -> list[str]:
    path = spec.test_set.resolve(base_dir)
    if path is not None and not path.is_file():
        return [
            f"test_set.file: file {_short(str(path), 120)} does not exist "
            f"(got {_short(spec.test_set.file)})"
        ]
    return []


# --------------------------------------------------------------------------- overrides
def apply_overrides(
    data: dict[str, Any], overrides: Mapping[str, Any], *, source: str = "--set"
) -> dict[str, Any]:
    """Set ``path.to.field`` in a spec dict from strings, typed by the schema.

    A string whose target field is a string (or a string enum) is kept verbatim; any other string
    is parsed as YAML (``3``, ``2.5``, ``true``, ``[300, 600]``, ``{method: GFN1-xTB}``) and then
    validated by the schema like the file; a value that is not a string is set as it is. List
    items are addressed by index (``system.seeds.0.a``).

    Args:
        data: the spec mapping, changed in place.
        overrides: ``path.to.field`` -> value.
        source: what the problems are reported under (the flag the user typed).

    Returns:
        ``data``.

    Raises:
        SpecError: listing every override that names no place in ``data`` (an item past the end
            of a list, a field below a value).
    """
    problems = _apply_all(data, overrides, lambda parts: _is_string_field(parts, CampaignSpec))
    if problems:
        raise SpecError(problems, source)
    return data


def parse_sections(
    sections: Mapping[str, type[BaseModel]],
    overrides: Mapping[str, Any],
    *,
    source: str = "--set",
    base: Mapping[str, BaseModel | Mapping[str, Any]] | None = None,
) -> dict[str, BaseModel]:
    """Config sections built from ``SECTION.FIELD=VALUE`` overrides, every problem reported.

    Each section starts from ``base[section]`` (a model or a mapping; default: the model's
    defaults), takes the overrides under its name (typed by the schema like
    :func:`apply_overrides`) and is validated by its model.

    Args:
        sections: section name -> its pydantic model, e.g. ``{"model": ModelConfig}``.
        overrides: ``section.field[.sub...]`` -> value (strings typed by the schema).
        source: what the problems are reported under, e.g. the flag the user typed.
        base: starting values per section.

    Returns:
        Section name -> the validated model, in the order of ``sections``.

    Raises:
        SpecError: listing every problem, one ``path.to.field: message (got VALUE)`` per line,
            unknown sections and fields included (``bogus: unknown key (got '1')``).
    """
    base = base or {}
    data: dict[str, Any] = {name: _as_dict(base.get(name)) for name in sections}
    known = {p: v for p, v in overrides.items() if p.partition(".")[0] in sections}
    problems = [
        f"{path}: unknown key (got {_short(value)})"
        for path, value in overrides.items()
        if path not in known
    ]
    problems += _apply_all(
        data, known, lambda parts: _is_string_field(parts[1:], sections[parts[0]])
    )
    out: dict[str, BaseModel] = {}
    for name, cls in sections.items():
        try:
            out[name] = cls.model_validate(data[name])
        except ValidationError as exc:
            problems += _format_errors(exc, prefix=name)
    if problems:
        raise SpecError(problems, source)
    return out


def _as_dict(value: BaseModel | Mapping[str, Any] | None) -> Any:
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump()
    return dict(value)


def _apply_all(
    data: dict[str, Any], overrides: Mapping[str, Any], is_string: Callable[[list[str]], bool]
) -> list[str]:
    """Apply every override it can; the problems of the others."""
    problems = []
    for path, raw in overrides.items():
        parts = path.split(".")
        if not all(parts):
            problems.append(f"{path}: empty path component (got {_short(raw)})")
            continue
        value = _parse_scalar(raw) if isinstance(raw, str) and not is_string(parts) else raw
        problem = _set_path(data, parts, value, path, raw)
        if problem:
            problems.append(problem)
    return problems


def _set_path(data: Any, parts: list[str], value: Any, path: str, raw: Any) -> str | None:
    """Set ``value`` at ``parts`` (sections created as needed); a problem line, or None."""
    node = data
    for depth in range(len(parts) - 1):
        node = _child(node, parts[depth])
        if node is _MISSING:
            where = ".".join(parts[:depth])
            return f"{path}: {where} has no item {parts[depth]} (got {_short(raw)})"
        if not isinstance(node, dict | list):
            where = ".".join(parts[: depth + 1])
            return f"{path}: {where} is not a section or list (got {_short(raw)})"
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            return f"{path}: no list item {last} (got {_short(raw)})"
        node[int(last)] = value
    else:
        node[last] = value
    return None


def _child(node: dict | list, key: str) -> Any:
    """``node[key]``, creating a missing (or null) section; a ``_MISSING`` list item."""
    if isinstance(node, list):
        return node[int(key)] if key.isdigit() and int(key) < len(node) else _MISSING
    child = node.get(key)
    if child is None:
        child = node[key] = {}
    return child


_MISSING = object()


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _field_annotation(parts: list[str], root: Any) -> Any:
    """The annotation of the field at ``parts`` below model ``root``; None when unknown."""
    annotation: Any = root
    for part in parts:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(part)
            if info is None:
                return None
            annotation = info.annotation
        elif typing.get_origin(annotation) in (list, tuple) and part.isdigit():
            annotation = typing.get_args(annotation)[0]
            if typing.get_origin(annotation) is Annotated:  # a tagged union: unknown kind
                return None
        else:
            return None
    return annotation


def _is_string_field(parts: list[str], root: type[BaseModel] | None = None) -> bool:
    """True when the schema (from ``root``, default the whole spec) says ``parts`` holds a str."""
    annotation = _field_annotation(parts, root or CampaignSpec)
    if annotation is None:
        return False
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (list, tuple, dict, set):  # a container of strings is written as YAML
        return False
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    candidates = args or [annotation]
    return all(isinstance(c, type) and issubclass(c, str) for c in candidates)


def parse_spec(
    data: Any,
    *,
    source: str = "spec",
    base_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CampaignSpec:
    """Validate a spec mapping (after ``--set`` overrides).

    Args:
        data: the spec as read from YAML.
        source: what the problems are reported under (the file).
        base_dir: where relative seed file paths start (default: the working directory).
        overrides: ``path.to.field`` -> value, applied first (see :func:`apply_overrides`).

    Returns:
        The validated spec, seed file paths made absolute.

    Raises:
        SpecError: listing every problem, the overrides' included.
    """
    if not isinstance(data, dict):
        raise SpecError(
            [f"(top level): expected a mapping of sections (got {_short(data)})"], source
        )
    problems = []
    if overrides:
        problems = _apply_all(data, overrides, lambda parts: _is_string_field(parts))
    numbers = _number_problems(data)
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        flagged = {line.partition(": ")[0] for line in numbers}
        other = [p for p in _format_errors(exc) if p.partition(": ")[0] not in flagged]
        raise SpecError(problems + numbers + other, source) from None
    problems += numbers
    base = base_dir or Path.cwd()
    problems += _semantic_problems(spec, base)
    if problems:
        raise SpecError(problems, source)
    for seed in spec.system.seeds:  # the spec is copied into run directories: keep files found
        if seed.kind == "file":
            seed.path = str(seed.resolve(base).resolve())
    if spec.test_set.file is not None:
        spec.test_set.file = str(spec.test_set.resolve(base).resolve())
    return spec


MAX_INTEGER = 2**53
"""The largest integer a spec takes anywhere (the largest a float64 holds exactly): no count,
size or seed of a campaign is larger, and beyond int64 numpy and torch overflow."""


def _number_problems(data: Any) -> list[str]:
    """A problem line for each NaN and each integer beyond ±``MAX_INTEGER`` anywhere in
    ``data``; each shared or self-containing container (YAML anchors) is visited once.
    """
    problems, seen, stack = [], set(), [((), data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict | list):
            if id(node) in seen:
                continue
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend(((*path, k), v) for k, v in reversed(list(items)))
            continue
        where = ".".join(_path_part(p) for p in path) or "(top level)"
        if isinstance(node, float) and node != node:
            problems.append(f"{where}: not a number (NaN); give a number (got nan)")
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_INTEGER:
            problems.append(
                f"{where}: integer too large; a spec's integers are at most 2**53 in size "
                f"(got {_short(node)})"
            )
    return problems


def load_spec(path: str | Path, overrides: dict[str, str] | None = None) -> CampaignSpec:
    """Read a spec from a YAML file, or a built-in campaign by name (``cu-defects``)."""
    from chemgap.campaigns.builtin import builtin_path

    p = Path(path)
    if not p.exists():
        builtin = builtin_path(str(path))
        if builtin is None:
            from chemgap.campaigns.builtin import builtin_names

            raise SpecError(
                [
                    f"(file): no such file or directory, and no built-in campaign of that name "
                    f"(built-ins: {', '.join(builtin_names())}) (got {str(path)!r})"
                ],
                str(path),
            )
        p = builtin
    if p.is_dir():
        raise SpecError(
            [f"(file): expected a YAML file, not a directory (got {str(p)!r})"], str(path)
        )
    data = _read_yaml(p, str(path))
    return parse_spec(data, source=str(path), base_dir=p.resolve().parent, overrides=overrides)


def _read_yaml(path: Path, source: str) -> Any:
    """The YAML document in ``path``; a file that is no UTF-8 YAML is a :class:`SpecError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            [f"(file): cannot read it: {exc.strerror} (got {str(path)!r})"], source
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [
                f"(file): not UTF-8 text (byte {exc.start} is {raw[exc.start : exc.start + 1]!r}); "
                f"a spec is a YAML text file (got {str(path)!r})"
            ],
            source,
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SpecError([f"(yaml): not valid YAML at {where}: {problem}"], source) from None
    except RecursionError:
        raise SpecError(
            ["(yaml): nested too deeply to read (more than ~1000 levels of lists or mappings)"],
            source,
        ) from None


def dump_spec(spec: CampaignSpec) -> str:
    """The resolved spec as YAML (every default written out)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict[str, Any]:
    """The JSON schema of a campaign spec (for editors)."""
    return CampaignSpec.model_json_schema()
