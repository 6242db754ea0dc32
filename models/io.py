"""Model directory layout, member files and metadata.

A model directory holds, per member ``k``:

- ``member_KK.model``: ``torch.save`` of the whole ``ScaleShiftMACE`` (what
  ``mace.calculators.MACECalculator(model_paths=...)`` and MACE's tools, LAMMPS export included,
  load); a member with long-range terms is a
  :class:`~chemgap.models.longrange.LongRangeMACE` (its pickle names chemgap), which
  :class:`~chemgap.models.calculator.ChemgapCalculator` loads;
- ``member_KK.pt``: its ``state_dict`` alone, loaded with ``torch.load(weights_only=True)`` into
  a model rebuilt from the metadata (the safe path; the pickled ``.model`` is the fallback);
- ``member_KK.json``: the spec's model/ensemble sections (``model.long_range``,
  ``charge_width_A`` and ``d3_functional`` among them), data constants, data hash, metrics and
  versions;

and ``ensemble.json`` (configs, element list, data hash, member files, calibration).
"""

from __future__ import annotations

import io
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch

from chemgap.common.files import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENSEMBLE_FILE = "ensemble.json"


def member_stem(k: int) -> str:
    """File stem of member ``k`` (``member_03``)."""
    return f"member_{k:02d}"


def versions() -> dict[str, str]:
    """Versions of the packages a model depends on."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("mace", "e3nn", "ase", "numpy"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except ImportError:  # pragma: no cover
            out[name] = "missing"
    try:
        from importlib.metadata import version

        out["mace-torch"] = version("mace-torch")
        out["chemgap"] = version("chemgap")
    except Exception:  # pragma: no cover - metadata lookups are best effort
        pass
    return out


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (:func:`chemgap.common.files.atomic_write`: temp file, fsync,
    rename, fsync of the directory).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
    )


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer | np.floating):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> dict:
    """The JSON object in ``path``."""
    with open(path) as fh:
        return json.load(fh)


def model_to_bytes(model: torch.nn.Module) -> bytes:
    """Whole-model pickle (for moving members between Ray workers)."""
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def model_from_bytes(data: bytes) -> torch.nn.Module:
    """A model serialised by :func:`model_to_bytes`."""
    import mace  # noqa: F401  (registers the classes the pickle names)

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def save_member(model: torch.nn.Module, directory: Path, k: int, metadata: dict) -> Path:
    """Write ``member_KK.model`` (whole model), ``member_KK.pt`` (state dict) and ``.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = member_stem(k)
    model = model.cpu().eval()
    torch.save(model, directory / f"{stem}.model")
    torch.save(model.state_dict(), directory / f"{stem}.pt")
    write_json(directory / f"{stem}.json", {"format": FORMAT_VERSION, **metadata})
    return directory / f"{stem}.model"


def load_member(
    directory: Path, k: int, rebuild: Any | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load member ``k``: rebuild + weights-only state dict when possible, else the pickle.

    ``rebuild``: a zero-argument callable returning a fresh model of the right architecture
    (from the metadata); without it, or if the state dict does not fit, the whole-model file is
    unpickled (``weights_only=False``: only load model directories you trust).
    """
    import mace  # noqa: F401

    directory = Path(directory)
    stem = member_stem(k)
    pt = directory / f"{stem}.pt"
    if rebuild is not None and pt.exists():
        try:
            model = rebuild()
            state = torch.load(pt, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            return model.to(device).eval()
        except (RuntimeError, KeyError, ValueError) as exc:
            log.warning("%s: weights-only load failed (%s); unpickling the model file", pt, exc)
    path = directory / f"{stem}.model"
    if not path.exists():
        raise FileNotFoundError(2, "no such member file", str(path))
    model = torch.load(path, map_location=device, weights_only=False)
    return model.to(device).eval()
