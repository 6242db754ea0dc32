"""Fuzzing structure files: malformed inputs to every command that reads structures.

A valid three-frame extxyz of EMT-labelled Cu is corrupted: emptied, truncated at a byte
position, followed or replaced by garbage bytes, given NaN/inf positions or labels, a zero,
degenerate or astronomically large cell, two atoms at one place, an unknown element symbol, a
frame of zero atoms; or the path is a directory, or the garbage has another suffix (CIF, POSCAR,
ASE db, trajectory, JSON). Hypothesis draws the corruption and its position.

Outcomes allowed: exit 2 with one sentence and nothing written; for ``label``, which labels per
structure, also exit 0 with every structure in its output and the bad one carrying a failure
category in ``label_status``; ``predict`` may exit 0 where the file is still valid (a truncation
at a frame boundary). Never a traceback, never exit 1. ``train``, ``explore``, ``diagnose`` and
``probe`` run only on the files ``predict`` refuses (on a valid file they would do real work),
and must refuse them too.

``CHEMGAP_FUZZ_EXAMPLES`` sets the number of examples (CI: ``CI_EXAMPLES``);
``tests/fuzz_support.py`` has the other knobs and the tally the benchmark reads.
"""

from __future__ import annotations

import io
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from click.testing import CliRunner
from fuzz_support import Outcome, crash_problems, fuzz_settings, refusal_problems
from hypothesis import given
from hypothesis import strategies as st

from chemgap.agent.cli.main import main
from chemgap.common.keys import OK, STATUS_KEY

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:Ratio of simulation cell size:RuntimeWarning"),
]

CI_EXAMPLES = 28  # 2 per kind


# --------------------------------------------------------------------------- the valid file
def _frames(n: int = 3) -> list:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        a.calc = EMT()
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
        a.calc = None
        out.append(a)
    return out


FRAMES = _frames()


def _extxyz(frames: list) -> bytes:
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    return buf.getvalue().encode()


BASE = _extxyz(FRAMES)


# --------------------------------------------------------------------------- corruptions
@dataclass
class Corrupt:
    """A structure file to feed: its bytes (None: a directory), suffix, how it was made, which
    frame holds a bad geometry (``label`` must record that frame as failed), and whether the
    file is bad input whatever the corruption drew (a truncation at a frame boundary, a symbol
    ASE reads as an element, a large box around isolated atoms are not).
    """

    kind: str
    content: bytes | None
    suffix: str = ".xyz"
    bad_frame: int | None = None
    always_bad: bool = True

    def __repr__(self) -> str:
        return f"Corrupt({self.kind}, {self.suffix}, bad_frame={self.bad_frame}, {self.content!r})"


NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])
SUFFIXES = st.sampled_from([".xyz", ".extxyz", ".cif", ".vasp", ".traj", ".db", ".json", ".pdb"])
FRAME = st.integers(0, len(FRAMES) - 1)


def _edit(draw: st.DrawFn, kind: str) -> Corrupt:
    """A frame of the valid file changed through ASE (values) and written again."""
    frames = [a.copy() for a in FRAMES]
    for a, b in zip(frames, FRAMES, strict=True):
        a.info, a.arrays["REF_forces"] = dict(b.info), b.arrays["REF_forces"].copy()
    i = draw(FRAME)
    a = frames[i]
    atom, comp = draw(st.integers(0, len(a) - 1)), draw(st.integers(0, 2))
    bad: int | None = i
    maybe_valid = False
    match kind:
        case "nonfinite position":
            pos = a.positions
            pos[atom, comp] = draw(NONFINITE)
            a.positions = pos
        case "nonfinite label":
            if draw(st.booleans()):
                a.info["REF_energy"] = draw(NONFINITE)
            else:
                a.arrays["REF_forces"][atom, comp] = draw(NONFINITE)
            bad = None  # labelling replaces the labels
        case "zero cell":
            a.cell = np.zeros((3, 3))
            a.pbc = draw(st.sampled_from([(True, True, True), (True, False, False)]))
        case "thin cell":
            cell = a.cell.array.copy()
            cell[comp] *= 10.0 ** -draw(st.integers(2, 14))
            a.set_cell(cell, scale_atoms=draw(st.booleans()))
        case "huge cell":
            scale = 10.0 ** draw(st.integers(5, 300))
            a.set_cell(a.cell.array * scale, scale_atoms=draw(st.booleans()))
            a.pbc = draw(st.sampled_from([(True, True, True), (False, False, False)]))
            bad = None  # isolated atoms in a large box are a structure too
            maybe_valid = True
        case _:  # overlap: one atom onto another, within a drawn offset
            other = (atom + draw(st.integers(1, len(a) - 1))) % len(a)
            offset = draw(st.sampled_from([0.0, 1e-6, 1e-3, 0.05]))
            pos = a.positions
            pos[atom] = pos[other] + offset
            a.positions = pos
    return Corrupt(kind, _extxyz(frames), bad_frame=bad, always_bad=not maybe_valid)


def _real_elements(content: bytes) -> bool:
    """ASE reads ``content`` into chemical elements (it takes ``cu`` and ``CU`` for Cu)."""
    try:
        frames = ase.io.read(io.StringIO(content.decode()), index=":", format="extxyz")
    except Exception:
        return False
    return all(a.numbers.all() for a in frames)


SYMBOLS = ["Xx", "X", "Q", "cu", "CU", "Cu1", "Uuo", "123", "-", "é", "\x00"]


def _atom_lines(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines()) if line.startswith("Cu ")]


KINDS = [
    "empty", "truncated", "garbage", "garbage tail", "nonfinite position", "nonfinite label",
    "zero cell", "thin cell", "huge cell", "overlap", "unknown element", "zero atoms",
    "directory", "suffix",
]  # fmt: skip
"""Every corruption, each a parametrized case with an equal share of the examples."""


@st.composite
def corruptions(draw: st.DrawFn, kind: str) -> Corrupt:
    """One corrupted structure file of ``kind`` (see the module docstring)."""
    match kind:
        case "empty":  # nothing, or only white space
            blank = draw(st.sampled_from([b"", b"\n", b" ", b"\n\n\n", b" \t\r\n"]))
            return Corrupt(kind, blank, draw(SUFFIXES))
        case "truncated":
            return Corrupt(kind, BASE[: draw(st.integers(1, len(BASE) - 1))], always_bad=False)
        case "garbage":
            return Corrupt(kind, draw(st.binary(min_size=1, max_size=300)))
        case "garbage tail":
            return Corrupt(kind, BASE + draw(st.binary(min_size=1, max_size=100)), always_bad=False)
        case "unknown element":
            lines = BASE.decode().splitlines()
            n = draw(st.sampled_from(_atom_lines(BASE.decode())))
            symbol = draw(st.one_of(st.sampled_from(SYMBOLS), st.text(min_size=1, max_size=4)))
            lines[n] = lines[n].replace("Cu", symbol.replace(" ", "_") or "?", 1)
            content = ("\n".join(lines) + "\n").encode()
            return Corrupt(kind, content, always_bad=not _real_elements(content))
        case "zero atoms":
            empty = (
                b'0\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
            )
            parts = BASE.split(b"4\nLattice")
            at = draw(st.integers(1, len(parts)))
            body = b"4\nLattice".join(parts[:at]) + empty
            if at < len(parts):
                body += b"4\nLattice" + b"4\nLattice".join(parts[at:])
            return Corrupt(kind, body, bad_frame=at - 1)
        case "directory":
            return Corrupt(kind, None, draw(SUFFIXES))
        case "suffix":  # garbage or a valid file's start, read as another format
            content = draw(st.sampled_from([b"", b"\x00\xff", BASE[:50], BASE]))
            suffix = draw(SUFFIXES.filter(lambda s: s not in (".xyz", ".extxyz")))
            return Corrupt(kind, content, suffix, always_bad=content != BASE)
        case _:
            return _edit(draw, kind)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Two untrained tiny MACE members on Cu (every command here needs only a loadable one)."""
    from chemgap.models.build import build_model, compute_stats
    from chemgap.models.config import ModelConfig
    from chemgap.models.ensemble import Ensemble

    cfg = ModelConfig(
        num_channels=8, max_L=1, num_interactions=2, r_max=4.0, radial_mlp=[16], e0="average"
    )
    stats = compute_stats(FRAMES, [29], cfg.r_max)
    members = [build_model(cfg, stats, seed=s) for s in range(2)]
    with torch.no_grad():
        for p in members[1].parameters():
            p.add_(0.01)
    path = tmp_path_factory.mktemp("fuzz_model")
    Ensemble(members, model_cfg=cfg).save(path)
    return path


# --------------------------------------------------------------------------- checks
TINY_TRAIN = [
    "--no-ray", "--members", "1", "--set", "model.num_channels=8", "--set", "model.max_L=1",
    "--set", "model.radial_mlp=[16]", "--set", "ensemble.max_epochs=1",
]  # fmt: skip


def _write(case: Corrupt, root: Path) -> Path:
    path = root / f"in-{uuid.uuid4().hex[:8]}{case.suffix}"
    if case.content is None:
        path.mkdir()
    else:
        path.write_bytes(case.content)
    return path


def _commands(model: Path, src: Path, root: Path) -> dict[str, tuple[list[str], Path]]:
    """The other commands that read ``src``: their arguments and what each would write."""
    m, s = str(model), str(src)
    out = {name: root / f"{name}-{src.stem}" for name in ("train", "explore", "diagnose", "probe")}
    return {
        "train": (["train", s, "-o", str(out["train"]), *TINY_TRAIN], out["train"]),
        "explore": (
            ["explore", m, s, "-o", str(out["explore"]), "--steps", "2", "--budget", "1"],
            out["explore"],
        ),
        "diagnose": (
            ["diagnose", "--models", m, "--data", s, "-o", str(out["diagnose"])],
            out["diagnose"],
        ),
        "probe": (
            [
                "probe",
                m,
                "--system",
                s,
                "--oracle",
                "emt",
                "--probe",
                "eos",
                "-o",
                str(out["probe"]),
            ],
            out["probe"],
        ),
    }


FLAGS = {
    "predict": "IN",
    "label": "IN",
    "train": "DATA",
    "explore": "SEEDS",
    "diagnose": "--data",
    "probe": "--system",
}
"""The argument each command reads the file through: its refusal names it."""


def _refused(outcome: Outcome, res, out: Path) -> None:
    """Exit 2 in one sentence naming the argument, nothing written."""
    outcome.broken += crash_problems(res, (2,))
    outcome.broken += refusal_problems(res.stderr)
    text = res.stderr.strip()
    flag = FLAGS[outcome.command]
    if text.startswith("error:") and not text.startswith(f"error: {flag}: "):
        outcome.broken.append(f"refusal does not start with the argument {flag}")
    if text.startswith("error:") and len(text.splitlines()) != 1:
        outcome.broken.append(f"refusal of {len(text.splitlines())} lines, not one sentence")
    if not text.startswith("error:") and f"'{flag}'" not in text:
        outcome.broken.append(f"usage error does not name the argument {flag}")
    if out.exists():
        outcome.broken.append(f"wrote {out.name} although it refused the input")


def _check_label(case: Corrupt, src: Path, root: Path) -> None:
    out = root / f"label-{src.stem}.xyz"
    res = CliRunner().invoke(main, ["label", str(src), "-o", str(out), "--oracle", "emt"])
    outcome = Outcome.of("structures", case.kind, "label", src, res)
    outcome.broken = crash_problems(res, (0, 2))
    if res.exit_code == 2:
        _refused(outcome, res, out)
    elif res.exit_code == 0:
        frames = ase.io.read(out, index=":")
        given_frames = ase.io.read(src, index=":")
        if len(frames) != len(given_frames):
            outcome.broken.append(f"wrote {len(frames)} of {len(given_frames)} structures")
        statuses = [f.info.get(STATUS_KEY) for f in frames]
        if None in statuses:
            outcome.broken.append(f"a labelled structure has no {STATUS_KEY}")
        if case.bad_frame is not None and statuses[case.bad_frame] == OK:
            outcome.broken.append(f"bad structure {case.bad_frame} labelled ok")
    outcome.record()


def check_structures(case: Corrupt, model: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    src = _write(case, root)
    out = root / f"predict-{src.stem}.xyz"
    res = CliRunner().invoke(main, ["predict", str(model), str(src), "-o", str(out)])
    outcome = Outcome.of("structures", case.kind, "predict", src, res)
    outcome.broken = crash_problems(res, (0, 2))
    refused = res.exit_code == 2
    if refused:
        _refused(outcome, res, out)
    elif case.always_bad:
        outcome.broken.append("accepted a file that is always bad input")
    outcome.record()
    if refused:
        for name, (args, dest) in _commands(model, src, root).items():
            res = CliRunner().invoke(main, args)
            outcome = Outcome.of("structures", case.kind, name, src, res)
            _refused(outcome, res, dest)
            outcome.record()
    _check_label(case, src, root)


@pytest.mark.parametrize("kind", KINDS)
@fuzz_settings(CI_EXAMPLES, share=1 / len(KINDS))
@given(data=st.data())
def test_fuzzed_structure_files_are_refused_or_recorded(
    kind, data, model_dir, ray_session, tmp_path_factory
):
    case = data.draw(corruptions(kind), label="file")
    check_structures(case, model_dir, tmp_path_factory.getbasetemp() / "fuzz-structures")


# --------------------------------------------------------------------------- regressions
def _cu(**changes):
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    for name, value in changes.items():
        setattr(a, name, value)
    return a


def _moved(index: int, to: list[float]):
    a = _cu()
    pos = a.positions
    pos[index] = to
    a.positions = pos
    return a


@pytest.mark.parametrize(
    ("atoms", "needle"),
    [
        (_cu()[[]], "it has no atoms"),
        (_moved(1, [math.nan, 0, 0]), "atom 1 has a non-finite position"),
        (_moved(1, [0, 0, 0]), "atoms 0 (Cu) and 1 (Cu) are 0.000 Å apart"),
        (_cu(cell=np.zeros((3, 3))), "0 Å thick along its periodic axis a"),
        (_cu(cell=np.diag([3.6, 3.6, 1e-9])), "along its periodic axis c"),
        (_moved(2, [1e300, 0, 0]), "beyond the ±1e+08 Å"),
        (_cu(numbers=[29, 29, 0, 29]), "atom 2 has no element (symbol X)"),
    ],
)
def test_structure_problems_are_one_clause(atoms, needle):
    from chemgap.agent.structio import structure_problem

    problem = structure_problem(atoms)
    assert problem is not None and needle in problem
    assert "\n" not in problem


def test_a_non_finite_label_is_refused_and_a_slab_is_not():
    from ase.build import fcc111

    from chemgap.agent.structio import structure_problem

    bad = _cu()
    bad.arrays["REF_forces"] = np.full((4, 3), np.inf)
    assert "forces label is not finite" in structure_problem(bad)
    assert structure_problem(fcc111("Cu", (2, 2, 3))) is None  # pbc (T, T, F), zero c vector


def test_a_thin_cell_is_a_failed_label_not_an_oracle_call():
    from chemgap.oracle.results import FailureCategory
    from chemgap.oracle.triage import check_geometry

    rejection = check_geometry(_cu(cell=np.diag([3.6, 3.6, 1e-7])), 0.5)
    assert rejection is not None
    assert rejection.category == FailureCategory.UNPHYSICAL_GEOMETRY
