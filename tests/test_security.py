"""Security: code named by a spec runs only when the user says so; model files are loaded
weights-only where they can be; the local dashboard is on 127.0.0.1 behind Ray's token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from click.testing import CliRunner
from test_campaign import tiny_spec

from chemgap.agent.cli.main import main


def test_a_spec_naming_an_ase_oracle_needs_trust_code(tmp_path):
    """``chemgap run`` on a spec whose oracle is ``ase``: exit 2 naming --trust-code, the module
    never imported, no run directory written.
    """
    (tmp_path / "planted.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\n"
        "from ase.calculators.emt import EMT as Calc\n"
    )
    oracle = {
        "name": "ase",
        "params": {"calculator": "planted:Calc", "python_path": [str(tmp_path)]},
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(oracle, max_iterations=1)))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--trust-code" in text and "planted:Calc" in text and "Traceback" not in text
    assert not (tmp_path / "imported").exists()
    assert not out.exists()


# ---------------------------------------------------------------------- model files
class Planted:
    """Unpickling this creates ``marker``: the sign that a model file's pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """One tiny member (2 epochs on six EMT Cu cells), trained in this process."""
    from chemgap.models.config import EnsembleConfig, ModelConfig
    from chemgap.models.ensemble import train_ensemble

    cells = []
    for seed in range(6):
        atoms = bulk("Cu", cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        cells.append(atoms)
    model = ModelConfig(num_channels=8, max_L=1, num_interactions=1, r_max=4.0, e0="average")
    cfg = EnsembleConfig(members=1, max_epochs=2, batch_size=3)
    out = tmp_path_factory.mktemp("model") / "models"
    train_ensemble(cells, model, cfg, out, seed=0)
    return out


def planted_copy(trained: Path, where: Path, suffix: str) -> tuple[Path, Path]:
    """A copy of ``trained`` whose ``member_00`` + ``suffix`` file is a code-running pickle."""
    copy = where / "planted"
    shutil.copytree(trained, copy)
    marker = where / f"ran-{suffix.strip('.')}"
    torch.save(Planted(marker), copy / f"member_00{suffix}")
    return copy, marker


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_loading_a_model_directory_never_unpickles_its_model_file(trained_dir, tmp_path):
    """A malicious ``member_00.model`` beside a valid ``member_00.pt``: Ensemble.load, the
    calculator on the directory and on either member file load the weights only (the marker
    is never made). Control: without the ``.pt`` the pickle is unpickled, with a warning
    saying it must be trusted, and the marker appears.
    """
    from chemgap.models.calculator import ChemgapCalculator
    from chemgap.models.ensemble import Ensemble

    copy, marker = planted_copy(trained_dir, tmp_path, ".model")
    for calc in (
        ChemgapCalculator(Ensemble.load(copy)),
        ChemgapCalculator(copy),
        ChemgapCalculator([copy / "member_00.model"]),
        ChemgapCalculator([copy / "member_00.pt"]),
    ):
        atoms = bulk("Cu", cubic=True)
        atoms.calc = calc
        assert np.isfinite(atoms.get_potential_energy())
    assert not marker.exists()


def test_a_model_file_is_unpickled_only_with_a_warning(trained_dir, tmp_path, caplog):
    from chemgap.models.ensemble import Ensemble

    copy, marker = planted_copy(trained_dir, tmp_path, ".model")
    (copy / "member_00.pt").unlink()
    with pytest.raises(AttributeError):  # the "model" the pickle gives is an open file
        Ensemble.load(copy)
    assert marker.exists()  # the control: this pickle does run code when unpickled
    text = " ".join(caplog.messages)
    assert "unpickling" in text and "member_00.model" in text and "trust" in text


def test_a_weights_file_holding_code_stops_the_load(trained_dir, tmp_path):
    """A ``member_00.pt`` that is not weights alone: torch refuses it weights-only, and the
    load stops there instead of unpickling the ``.model`` beside it.
    """
    from chemgap.models.ensemble import Ensemble

    copy, marker = planted_copy(trained_dir, tmp_path, ".pt")
    with pytest.raises(ValueError, match="holds more than weights"):
        Ensemble.load(copy)
    assert not marker.exists()


# ---------------------------------------------------------------------- the dashboard
DASHBOARD_PROBE = """
import json, os, urllib.error, urllib.request
from pathlib import Path
from urllib.parse import urlparse

import psutil

from chemgap.agent.runtime import ray_runtime


def code(url, headers=None):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                      timeout=20).status
    except urllib.error.HTTPError as exc:
        return exc.code


def token():
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).read_text().strip()


with ray_runtime(dashboard=True, num_cpus=1) as info:
    url = urlparse(info.dashboard_url)
    listening = sorted({c.laddr.ip for c in psutil.net_connections("tcp")
                        if c.status == psutil.CONN_LISTEN and c.laddr.port == url.port})
    base = info.dashboard_url.rstrip("/")
    print(json.dumps(dict(
        host=url.hostname,
        listening=listening,
        without_token={p: code(base + p) for p in ("/api/version", "/nodes?view=summary")},
        with_token=code(base + "/api/version", {"Authorization": f"Bearer {token()}"}),
    )))
"""


def probe_dashboard(env: dict[str, str]) -> dict:
    """Start chemgap's local runtime with its dashboard in a fresh interpreter (this one has a
    Ray instance without one already) and report what it listens on and answers.
    """
    proc = subprocess.run(
        [sys.executable, "-c", DASHBOARD_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_dashboard(out: dict) -> None:
    assert out["host"] == "127.0.0.1"
    assert out["listening"] == ["127.0.0.1"]  # not 0.0.0.0, not the node's address
    assert set(out["without_token"].values()) <= {401, 403}, out
    assert out["with_token"] == 200  # the API is up: the refusals are the token's


def test_the_dashboard_binds_localhost_and_wants_the_token():
    """The dashboard of chemgap's local instance: URL host 127.0.0.1, its port bound to
    127.0.0.1 only, the HTTP API refusing a request without Ray's token (401) and answering
    one with it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    _check_dashboard(probe_dashboard(env))


def test_token_authentication_stays_on_when_the_environment_disables_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    _check_dashboard(probe_dashboard({**env, "RAY_AUTH_MODE": "disabled"}))
