"""A run's structures for chemiscope.org: errors, uncertainty, features, regions and a SOAP map.

:func:`write_chemiscope` writes one chemiscope input file (``.json.gz``, or ``.json``) of every
test-set structure and every labelled structure of the run, predicted by the run's last trained
ensemble:

- per structure: split, kind, source, iteration, ID/OOD, energy error (meV/atom), force
  MAE (meV/Å), the largest calibrated force spread (eV/Å), the structure-level chemical
  features, and the first two principal components of the SOAP power spectrum averaged over
  each structure's atoms (Bartók et al. 2013; :func:`chemgap.agent.diagnostics.features.
  soap_atoms`, dscribe) — the map chemiscope opens on;
- per atom: force-error norm and calibrated spread (eV/Å), the atom-level chemical features of
  :mod:`chemgap.agent.diagnostics.features` (numeric and flag columns as numbers, categorical
  ones as text) and the failure region of the last diagnosis the atom falls in (``none``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from chemgap.agent.diagnostics.region import Region
from chemgap.agent.errors import BadInput
from chemgap.agent.layout import RunLayout
from chemgap.agent.store import RunStore
from chemgap.common.keys import ISOLATED_ATOM_SPLIT, TEST_SPLIT

log = logging.getLogger(__name__)

__all__ = ["ENVIRONMENT_CUTOFF_A", "check_path", "chemiscope_input", "write_chemiscope"]

ENVIRONMENT_CUTOFF_A = 3.5  # radius of the atom-centred environments chemiscope highlights, Å
NO_REGION = "none"


def _last_models(root: Path) -> Path:
    trained = RunLayout(root).trained_iterations()
    if not trained:
        raise BadInput(f"{root}: no trained ensemble yet, so nothing to export to chemiscope")
    return trained[-1].models


def _structures(store: RunStore) -> list[Atoms]:
    """The test set first, then every other labelled structure, in data.db order."""
    test = store.structures(status="ok", split=TEST_SPLIT)
    rest = [
        a
        for a in store.structures(status="ok")
        if a.info.get("split") not in (TEST_SPLIT, ISOLATED_ATOM_SPLIT)
    ]
    return test + rest


def _errors(structures: list[Atoms], pred: Any) -> dict[str, np.ndarray]:
    """Per atom |ΔF| and σ (eV/Å); per structure energy error (eV/atom), force MAE (eV/Å)."""
    from chemgap.common.keys import ENERGY_KEY, FORCES_KEY

    n_atoms = np.array([len(a) for a in structures])
    ref_f = np.concatenate([np.asarray(a.arrays[FORCES_KEY], dtype=float) for a in structures])
    ref_e = np.array([float(a.info[ENERGY_KEY]) for a in structures])
    df = pred.forces_mean - ref_f
    mae = np.bincount(pred.system_idx, weights=np.abs(df).mean(axis=1)) / n_atoms
    return {
        "atom_error": np.linalg.norm(df, axis=1),
        "atom_sigma": pred.force_std_atom_cal,
        "energy_error": (pred.energy_mean - ref_e) / n_atoms,
        "force_mae": mae,
        "max_sigma": pred.max_force_std_cal,
    }


def _features(store: RunStore, structures: list[Atoms], pred: Any) -> Any:
    """The diagnosis' feature table of ``structures`` (environment classes named as in the last
    diagnosis, the model's charges where it has them, with the per-atom SOAP), as a
    :class:`~chemgap.agent.diagnostics.selector.RegionSelector`, and the last diagnosis'
    regions (none when the run has no readable ``regions.json``).
    """
    from chemgap.agent.diagnostics.selector import RegionSelector
    from chemgap.agent.diagnostics.storage import load_previous

    stored = load_previous(RunLayout(store.root).last_diagnosis.regions_file)
    selector = RegionSelector.rebuild(
        structures,
        store.spec.diagnostics,
        seed=store.spec.seed,
        prediction=pred,
        environment=stored.environment if stored is not None else None,
    )
    return selector, stored.regions if stored is not None else []


def _region_of_atoms(selector: Any, regions: list[Region]) -> list[str]:
    """(n_atoms,) the first region (last diagnosis' order) each atom falls in, or ``none``
    (a region whose rule names a feature these structures' features lack selects no atom).
    """
    out = np.full(selector.features.n_atoms, NO_REGION, dtype=object)
    for r in regions:
        out[selector.select(r) & (out == NO_REGION)] = r.id
    return [str(x) for x in out]


def _soap_map(features: Any) -> np.ndarray:
    """(n_struct, 2) principal components of the structure-averaged SOAP (zeros if constant)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features.soap_structure, dtype=float)
    if len(x) < 2 or not np.ptp(x, axis=0).any():
        return np.zeros((len(x), 2))
    n = min(2, len(x), x.shape[1])
    pcs = PCA(n_components=n).fit_transform(x)
    return np.pad(pcs, ((0, 0), (0, 2 - n)))


def _feature_columns(features: Any) -> dict[str, dict[str, Any]]:
    """Chemiscope properties of the feature table: structure columns on structures, the atom
    columns that are not broadcasts of them on atoms.
    """
    from chemgap.agent.diagnostics.features import PROVENANCE_FEATURES, FeatureKind

    out: dict[str, dict[str, Any]] = {}
    for target, table in (("structure", features.structure), ("atom", features.atom)):
        for name, col in table.items():
            if name in PROVENANCE_FEATURES or (target == "atom" and name in features.structure):
                continue
            kind = features.kinds.get(name, FeatureKind.NUMERIC)
            if kind == FeatureKind.CATEGORICAL:
                values: list[Any] = [str(v) for v in col]
            else:
                values = [float(v) for v in np.asarray(col, dtype=float)]
            out[f"{name}"] = {"target": target, "values": values, "description": f"{kind} feature"}
    return out


def _structure_info(structures: list[Atoms]) -> dict[str, dict[str, Any]]:
    def col(key: str, default: str = "") -> list[str]:
        return [str(a.info.get(key, default)) for a in structures]

    return {
        "split": {"target": "structure", "values": col("split")},
        "kind": {
            "target": "structure",
            "values": [
                str(a.info.get("test_kind") or a.info.get("seed_kind") or a.info.get("source", ""))
                for a in structures
            ],
        },
        "source": {"target": "structure", "values": col("source")},
        "iteration": {
            "target": "structure",
            "values": [float(a.info.get("iteration", 0)) for a in structures],
        },
        "in distribution": {"target": "structure", "values": col("in_distribution", "True")},
    }


def chemiscope_input(run: str | Path) -> dict[str, Any]:
    """The arguments of :func:`chemiscope.write_input` for run ``run`` (see the module docstring).

    Returns:
        ``{"structures", "properties", "environments", "metadata", "settings"}``.

    Raises:
        RunDirError: ``run`` is not a chemgap run; BadInput: it has no trained ensemble or no
            labelled structure yet.
    """
    import chemiscope

    from chemgap.models.ensemble import Ensemble

    store = RunStore.open(run)
    models = _last_models(store.root)
    structures = _structures(store)
    if not structures:
        raise BadInput(f"{run}: no labelled structure yet, so nothing to export to chemiscope")
    pred = Ensemble.load(models).predict(structures)
    err = _errors(structures, pred)
    selector, regions = _features(store, structures, pred)
    features = selector.features
    pcs = _soap_map(features)
    props: dict[str, dict[str, Any]] = {
        "SOAP PC1": {"target": "structure", "values": pcs[:, 0].tolist()},
        "SOAP PC2": {"target": "structure", "values": pcs[:, 1].tolist()},
        "force MAE": {
            "target": "structure",
            "values": (1000 * err["force_mae"]).tolist(),
            "units": "meV/Å",
        },
        "energy error": {
            "target": "structure",
            "values": (1000 * err["energy_error"]).tolist(),
            "units": "meV/atom",
        },
        "max force σ": {
            "target": "structure",
            "values": err["max_sigma"].tolist(),
            "units": "eV/Å",
            "description": "largest calibrated spread of an atom",
        },
        **_structure_info(structures),
        "|ΔF|": {"target": "atom", "values": err["atom_error"].tolist(), "units": "eV/Å"},
        "force σ": {"target": "atom", "values": err["atom_sigma"].tolist(), "units": "eV/Å"},
        "region": {"target": "atom", "values": _region_of_atoms(selector, regions)},
        **_feature_columns(features),
    }
    frames = [Atoms(a.numbers, a.positions, cell=a.cell, pbc=a.pbc) for a in structures]
    name = store.spec.name
    return {
        "structures": frames,
        "properties": props,
        "environments": chemiscope.all_atomic_environments(frames, ENVIRONMENT_CUTOFF_A),
        "metadata": {
            "name": f"chemgap · {name}",
            "description": f"Test set and labels of the chemgap campaign {name} ({store.root}), "
            f"predicted by the ensemble in {models}. SOAP PC1/PC2: principal components of the "
            "structure-averaged SOAP power spectrum.",
        },
        "settings": {
            "map": {
                "x": {"property": "SOAP PC1"},
                "y": {"property": "SOAP PC2"},
                "color": {"property": "force MAE"},
            }
        },
    }


def check_path(path: str | Path) -> Path:
    """``path`` if chemiscope can be written there; BadInput (one sentence) otherwise."""
    path = Path(path)
    if not path.name.endswith((".json", ".json.gz")):
        raise BadInput(f"--chemiscope: {path} must end in .json.gz (or .json)")
    if not path.parent.is_dir():
        raise BadInput(f"--chemiscope: the folder of {path} does not exist")
    return path


def write_chemiscope(run: str | Path, path: str | Path) -> Path:
    """Write the chemiscope input of run ``run`` to ``path`` (gzipped when it ends in ``.gz``).

    Raises:
        BadInput: ``path`` does not end in ``.json`` or ``.json.gz``, its folder is missing, or
            the run has nothing to export yet; RunDirError: ``run`` is not a chemgap run.
    """
    import chemiscope

    path = check_path(path)
    data = chemiscope_input(run)
    chemiscope.write_input(str(path), **data)
    log.info("chemiscope input written to %s", path)
    return path
