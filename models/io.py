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

Loading reads only the directory (or files) it is given — no download, no cache, no path
taken from the metadata. A member is rebuilt from ``member_KK.json`` and its weights loaded
from ``member_KK.pt`` with ``torch.load(weights_only=True)``, which cannot run code; the
whole-model ``member_KK.model`` is unpickled (``weights_only=False``, which can run code) only
when that is impossible — no metadata or no ``.pt``, or a state dict that does not fit — and a
warning then names the file: load such directories only when you trust them.

Every file is written atomically (:func:`chemgap.common.files.atomic_write`): a full disk leaves
no half-written member, and no file is group or world writable.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import platform
from pathlib import Path
from typing import Any

import torch

from chemgap.common.files import atomic_write, make_dirs

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
    make_dirs(path.parent)
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
    """A model serialised by :func:`model_to_bytes`.

    Unpickles (``weights_only=False``): only for bytes chemgap itself produced in this run
    (members travelling between Ray workers and the driver), never for a file's content.
    """
    import mace  # noqa: F401  (registers the classes the pickle names)

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def save_member(model: torch.nn.Module, directory: Path, k: int, metadata: dict) -> Path:
    """Write ``member_KK.model`` (whole model), ``member_KK.pt`` (state dict) and ``.json``,
    each atomically (a failed write, a full disk among others, leaves no partial file).
    """
    directory = make_dirs(directory)
    stem = member_stem(k)
    model = model.cpu().eval()
    atomic_write(directory / f"{stem}.model", lambda fh: torch.save(model, fh), binary=True)
    atomic_write(
        directory / f"{stem}.pt", lambda fh: torch.save(model.state_dict(), fh), binary=True
    )
    write_json(directory / f"{stem}.json", {"format": FORMAT_VERSION, **metadata})
    return directory / f"{stem}.model"


def unpickle_model(path: Path, device: str | torch.device, why: str) -> torch.nn.Module:
    """Unpickle the whole-model file ``path`` (``weights_only=False``), warning that it must be
    trusted.

    Args:
        path: a ``member_KK.model`` file.
        device: torch device to map the model to.
        why: why the weights-only path could not be taken (for the warning).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    import mace  # noqa: F401  (registers the classes the pickle names)

    if not path.exists():
        raise FileNotFoundError(2, "no such member file", str(path))
    log.warning(
        "%s; unpickling %s instead (weights_only=False: the file can run code, so load it only "
        "if you trust it)",
        why,
        path,
    )
    model = torch.load(path, map_location=device, weights_only=False)
    return model.to(device).eval()


def load_member(
    directory: Path, k: int, rebuild: Any | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load member ``k`` of model directory ``directory`` (nothing outside it is read); see
    :func:`load_member_stem`.
    """
    return load_member_stem(Path(directory) / member_stem(k), rebuild, device)


def load_member_stem(
    stem: Path, rebuild: Any | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load the member whose files are ``STEM.pt`` / ``STEM.model``: rebuild + weights-only
    state dict when possible, else the pickle.

    Args:
        stem: the member's path without suffix (``models/member_03``).
        rebuild: a zero-argument callable returning a fresh model of the right architecture
            (from the metadata). With it and ``STEM.pt`` present, the weights are loaded
            with ``torch.load(weights_only=True)``; without either, or when the ``.pt`` is
            unreadable or does not fit, ``STEM.model`` is unpickled with a warning
            (:func:`unpickle_model`).
        device: torch device for the member.

    Raises:
        ValueError: ``STEM.pt`` holds objects other than tensors (torch refuses it weights-only);
            the ``.model`` is then not unpickled either.
        FileNotFoundError: the member's files are missing.
    """
    import mace  # noqa: F401

    pt, pickled = stem.with_name(stem.name + ".pt"), stem.with_name(stem.name + ".model")
    if rebuild is None or not pt.exists():
        missing = "no metadata (member JSON with stats)" if rebuild is None else f"no {pt.name}"
        return unpickle_model(pickled, device, f"{stem}: cannot load weights-only ({missing})")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # more than tensors in it: never unpickle the rest
        raise ValueError(
            f"{pt} holds more than weights (torch refused to load it weights-only); "
            "not loading this model"
        ) from exc
    except RuntimeError as exc:  # truncated or not a torch file
        return unpickle_model(pickled, device, f"{pt} is unreadable ({_first_line(exc)})")
    try:
        model = rebuild()
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        why = f"{pt} does not fit the member rebuilt from its metadata ({_first_line(exc)})"
        return unpickle_model(pickled, device, why)
    return model.to(device).eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
