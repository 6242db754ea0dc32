"""Resources the machine may lack: a full disk, a read-only run directory, a permissive umask.

The disk and read-only tests mount a small tmpfs (root with CAP_SYS_ADMIN, as in the dev
container); where mounting is not permitted they skip, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from test_campaign import rows, tiny_spec

from chemgap.agent.cli import main
from chemgap.agent.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, environment_failure
from chemgap.common.files import atomic_write, atomic_write_text

TESTS = str(Path(__file__).resolve().parent)
# the tiny run's spec, state and data.db (~100 KiB with tmpfs's 4 KiB pages) fit; its first
# member file (~390 KiB) does not: the disk fills when the first models are saved
SMALL_DISK_K = 300


# ---------------------------------------------------------------------- mounts
def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(proc.stderr.strip() or f"mount {' '.join(args)} failed")


@contextlib.contextmanager
def tmpfs(path: Path, size_k: int, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size_k`` KiB mounted at ``path`` (skip where mounting is not permitted);
    always unmounted on the way out.
    """
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_k}k,mode=0755" + (",ro" if read_only else "")
    try:
        _mount("-t", "tmpfs", "-o", options, "tmpfs", str(path))
    except OSError as exc:
        pytest.skip(f"mounting a tmpfs needs CAP_SYS_ADMIN (mount said: {exc})")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only_bind(source: Path, path: Path) -> Iterator[Path]:
    """``source`` bind-mounted read-only at ``path`` (a per-mount flag: it never waits for the
    writers of ``source``); always unmounted on the way out.
    """
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str, wait_s: float = 30.0) -> None:
    """Remount ``path`` with ``options``; "busy" (a file still open for writing, e.g. a Ray
    worker of the run finishing on a loaded machine) is retried for up to ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            _mount("-o", f"remount,{options}", str(path))
            return
        except OSError as exc:
            if "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise OSError(f"{exc}; open there: {holders(path)}") from exc
            time.sleep(0.5)


def holders(path: Path) -> list[str]:
    """Processes with a file under ``path`` open: 'pid cmdline -> file' (for a busy remount)."""
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target.startswith(str(path)):
                    pid = fd_dir.parent.name
                    cmd = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                    found.append(f"{pid} {cmd.decode(errors='replace')[:80]} -> {target}")
    return found


# ---------------------------------------------------------------------- what a run holds
def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and directory under ``root``: mode, mtime and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return out


def integrity(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*.tmp")]


def one_line(text: str) -> str:
    return " ".join(text.split())


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), terminal_width=200)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------------- the full-disk run
@dataclass
class DiskStory:
    """A tiny run that filled its disk, was looked at read-only, then resumed to the end."""

    root: Path
    failed: subprocess.CompletedProcess | None = None
    state_failed: dict[str, Any] = field(default_factory=dict)
    integrity_failed: str = ""
    rows_failed: list[tuple[int, str, str]] = field(default_factory=list)
    temp_failed: list[str] = field(default_factory=list)
    models_failed: list[str] = field(default_factory=list)
    ro_partial: dict[str, Result] = field(default_factory=dict)
    ro_partial_unchanged: bool = False
    resumed: Result | None = None
    rows_done: list[tuple[int, str, str]] = field(default_factory=list)
    ro_done: dict[str, Result] = field(default_factory=dict)
    ro_done_unchanged: bool = False
    elsewhere: Path | None = None
    view: Path | None = None  # the run seen through a read-only bind mount


def _fail_on_small_disk(story: DiskStory, spec: Path, address: str) -> None:
    """``chemgap run`` in a subprocess with umask 000 on the small disk (on the test session's
    Ray instance at ``address``: no second instance to start); record what is left.
    """
    command = ["run", str(spec), "--out", str(story.root), "--address", address]
    story.failed = subprocess.run(
        [sys.executable, "-m", "chemgap.agent.cli.main", *command],
        capture_output=True,
        text=True,
        timeout=300,
        umask=0o000,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"},
    )
    story.state_failed = json.loads((story.root / "state.json").read_text())
    story.integrity_failed = integrity(story.root / "data.db")
    story.rows_failed = rows(story.root / "data.db")
    story.temp_failed = temp_files(story.root)
    story.models_failed = [p.name for p in story.root.glob("iterations/*/models/*")]


def _look_read_only(view: Path, commands: dict[str, list[str]]) -> tuple[dict, bool]:
    """Run ``commands`` (in this process) on the read-only ``view``; whether nothing changed."""
    before = snapshot(view)
    results = {name: invoke(*args) for name, args in commands.items()}
    return results, snapshot(view) == before


@pytest.fixture(scope="module")
def disk_story(tmp_path_factory, ray_session) -> Iterator[DiskStory]:
    """The run fills its small tmpfs; a read-only bind of it is looked at; the tmpfs is enlarged
    and the run resumed to the end; the read-only bind is looked at again.

    A read-only *bind* (as a user meets a run directory on a read-only mount) rather than a
    read-only remount of the tmpfs: a remount waits for every writer of the file system,
    including a Ray worker of the session still closing a file, and CI once found it busy.
    """
    base = tmp_path_factory.mktemp("disk")
    data = tiny_spec(max_iterations=1)
    data["ensemble"]["max_epochs"] = 1
    spec = base / "tiny.yaml"
    spec.write_text(yaml.safe_dump(data))
    with tmpfs(base / "mnt", SMALL_DISK_K) as mnt:
        story = DiskStory(root=mnt / "run", elsewhere=base / "elsewhere.html")
        _fail_on_small_disk(story, spec, ray_session.get_runtime_context().gcs_address)
        with read_only_bind(mnt, base / "view") as view:
            story.view = view / "run"
            run = str(story.view)
            story.ro_partial, story.ro_partial_unchanged = _look_read_only(
                story.view, {"resume": ["resume", run], "status": ["status", "--json", run]}
            )
            remount(mnt, "rw,size=64m")
            with umask(0o000):
                story.resumed = invoke("resume", str(story.root))
            story.rows_done = rows(story.root / "data.db")
            story.ro_done, story.ro_done_unchanged = _look_read_only(
                story.view,
                {
                    "status": ["status", "--json", run],
                    "inspect": ["inspect", run],
                    "report_elsewhere": ["report", run, "-o", str(story.elsewhere)],
                    "report_inside": ["report", run],
                    "resume": ["resume", run],
                },
            )
        yield story


@pytest.mark.slow
def test_a_full_disk_exits_1_with_one_sentence_saying_so(disk_story):
    """``chemgap run`` whose disk fills while the first models are saved: exit 1 (a runtime
    failure of the environment, not the user's input), one sentence naming the full disk and
    'chemgap resume RUN', no traceback.
    """
    failed = disk_story.failed
    assert failed.returncode == EXIT_FAILURE, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr + failed.stdout
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, failed.stderr
    text = errors[0]
    assert "the disk is full" in text and "member_00.model" in text
    assert f"free some space, then continue with 'chemgap resume {disk_story.root}'" in text


@pytest.mark.slow
def test_a_full_disk_leaves_state_and_labels_whole(disk_story):
    """After the failure: state.json parses (marked failed, with the cause), data.db passes
    SQLite's integrity check and holds every label written before (8 initial + 4 test + the
    isolated atom of the reference energy), and no temp file or half-written member is left
    behind.
    """
    state = disk_story.state_failed
    assert state["status"] == "failed" and "No space left" in state["stop_reason"]
    assert disk_story.integrity_failed == "ok"
    assert len(disk_story.rows_failed) == 12 + 1
    assert {status for _, _, status in disk_story.rows_failed} == {"ok"}
    assert disk_story.temp_failed == []
    assert "member_00.model" not in disk_story.models_failed  # no half-written member


@pytest.mark.slow
def test_resume_on_a_read_only_partial_run_exits_2_and_changes_nothing(disk_story):
    resume, status = disk_story.ro_partial["resume"], disk_story.ro_partial["status"]
    assert resume.exit_code == EXIT_BAD_INPUT, resume.output
    text = one_line(resume.stderr)
    assert f"{disk_story.view} is read-only" in text and "Traceback" not in resume.output
    assert status.exit_code == 0 and json.loads(status.stdout)["labels"]["ok"] == 13
    assert disk_story.ro_partial_unchanged


@pytest.mark.slow
def test_resume_after_freeing_space_finishes_with_every_label_kept(disk_story):
    resumed = disk_story.resumed
    assert resumed.exit_code == 0, resumed.output
    assert "done after" in resumed.stdout
    state = json.loads((disk_story.root / "state.json").read_text())
    assert state["status"] == "done" and state["iteration"] == 1
    assert set(disk_story.rows_failed) <= set(disk_story.rows_done)
    batch = json.loads((disk_story.root / "iterations/001/selection.json").read_text())
    assert len(disk_story.rows_done) == 13 + batch["selected"] >= 13 + 1  # one batch more
    assert integrity(disk_story.root / "data.db") == "ok"


@pytest.mark.slow
def test_a_read_only_finished_run_can_still_be_read(disk_story):
    """status, inspect and ``report -o elsewhere`` work on a read-only run; ``report`` into the
    run says the directory is read-only (exit 2); ``resume`` says it is done; nothing changes.
    """
    results = disk_story.ro_done
    for name in ("status", "inspect", "report_elsewhere", "resume"):
        assert results[name].exit_code == 0, (name, results[name].output)
    assert json.loads(results["status"].stdout)["state"] == "done"
    assert disk_story.elsewhere.stat().st_size > 0
    assert "is already done" in results["resume"].stdout
    inside = results["report_inside"]
    assert inside.exit_code == EXIT_BAD_INPUT, inside.output
    text = one_line(inside.stderr)
    assert "report.html cannot be written: it is on a read-only file system" in text
    assert disk_story.ro_done_unchanged


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")}


@pytest.mark.slow
def test_a_run_made_under_umask_000_has_nothing_group_or_world_writable(disk_story):
    """The run (a CLI subprocess under umask 000, then a resume in this process under umask 000)
    wrote models, data.db, state.json, reports ... none group/world writable, every file still
    readable by group and others.
    """
    modes = _modes(disk_story.root)
    assert len(modes) > 20 and "iterations/001/models/member_00.model" in modes
    writable = {p: oct(m) for p, m in modes.items() if m & 0o022}
    assert not writable
    files = {p for p in modes if (disk_story.root / p).is_file()}
    unreadable = {p: oct(modes[p]) for p in files if modes[p] & 0o044 != 0o044}
    assert not unreadable


@pytest.mark.slow
def test_a_run_made_under_umask_000_has_directories_others_can_read(disk_story):
    dirs = {p: m for p, m in _modes(disk_story.root).items() if (disk_story.root / p).is_dir()}
    assert {p: oct(m) for p, m in dirs.items() if m & 0o055 != 0o055} == {}


# ---------------------------------------------------------------------- small and quick
def test_run_into_a_read_only_directory_exits_2_before_writing(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(max_iterations=1)))
    with tmpfs(tmp_path / "ro", 64, read_only=True) as ro:
        result = invoke("run", str(spec), "--out", str(ro / "run"))
        assert result.exit_code == EXIT_BAD_INPUT, result.output
        text = one_line(result.stderr)
        assert f"cannot write the run directory {ro / 'run'}" in text and "read-only" in text
        assert list(ro.iterdir()) == []


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp_file(tmp_path):
    """A text write and a ``torch.save`` (whose C++ writer buries the errno) that do not fit:
    both raise ``OSError(ENOSPC)`` naming the target; the old content stays, no temp file.
    """
    with tmpfs(tmp_path / "small", 64) as small:
        target = small / "state.json"
        atomic_write_text(target, "old\n")
        with pytest.raises(OSError) as text_err:
            atomic_write_text(target, "x" * 200_000)
        model = small / "member_00.model"
        with pytest.raises(OSError) as torch_err:
            atomic_write(model, lambda fh: torch.save(torch.zeros(50_000), fh), binary=True)
        assert target.read_text() == "old\n"
        assert not model.exists() and temp_files(small) == []
    for err, path in ((text_err.value, target), (torch_err.value, model)):
        assert err.errno == errno.ENOSPC and err.filename == str(path)


def test_a_run_directory_that_does_not_fit_is_not_left_half_made(tmp_path):
    """``chemgap run --out`` on a disk too small for a new run's data.db: exit 1 saying the
    disk is full and to run the command again, and nothing left behind (so it can be).
    """
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(max_iterations=1)))
    with tmpfs(tmp_path / "tiny", 24) as small:
        result = invoke("run", str(spec), "--out", str(small / "run"))
        assert result.exit_code == EXIT_FAILURE, result.output
        text = one_line(result.stderr)
        assert "the disk is full" in text and "run the command again" in text
        assert list(small.iterdir()) == []


def test_atomic_write_gives_group_read_and_never_group_write(tmp_path):
    with umask(0o000):
        atomic_write_text(tmp_path / "open.txt", "x")
    with umask(0o077):
        atomic_write_text(tmp_path / "private.txt", "x")
    assert stat.S_IMODE((tmp_path / "open.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600


def test_environment_failures_map_to_their_exit_codes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text("{}")
    full = sqlite3.OperationalError("database or disk is full")
    message, code = environment_failure(full, resumable=True)
    assert code == EXIT_FAILURE and "free some space and run the command again" in message
    nospace = OSError(errno.ENOSPC, "No space left on device", str(run / "iterations/x.npz"))
    message, code = environment_failure(RuntimeError("wrapped"), resumable=True) or ("", 0)
    assert code == 0  # not an environment failure
    try:
        raise RuntimeError("torch: unexpected pos") from nospace
    except RuntimeError as exc:
        message, code = environment_failure(exc, resumable=True)
    assert code == EXIT_FAILURE and f"'chemgap resume {run}'" in message
    rofs = OSError(errno.EROFS, "Read-only file system", str(run / "report.html"))
    assert environment_failure(rofs)[1] == EXIT_BAD_INPUT


def test_ray_workers_started_after_the_store_write_without_group_write(tmp_path):
    """A subprocess under umask 000 creates a run (the store tightens the umask) and then starts
    a local Ray instance, whose task writes a directory and a file into the run: nothing in the
    run is group/world writable, and everything stays readable.
    """
    root = tmp_path / "run"
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {TESTS!r})
        import ray
        from test_campaign import tiny_spec
        from chemgap.agent.runtime import ray_runtime
        from chemgap.agent.store import RunStore
        from chemgap.campaigns.spec import parse_spec
        os.umask(0)
        store = RunStore.create({str(root)!r}, parse_spec(tiny_spec()))

        def write(path):
            os.makedirs(os.path.dirname(path))
            with open(path, "w") as fh:
                fh.write("from a worker")

        with ray_runtime(num_cpus=1, dashboard=False):
            ray.get(ray.remote(write).remote({str(root / "remedies/cell/out.txt")!r}))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, umask=0
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modes = _modes(root)
    assert {"spec.yaml", "state.json", "data.db", "iterations", "remedies/cell/out.txt"} <= set(
        modes
    )
    assert {p: oct(m) for p, m in modes.items() if m & 0o022} == {}
    assert {p: oct(m) for p, m in modes.items() if m & 0o044 != 0o044} == {}


def test_when_the_failure_record_does_not_fit_the_cause_is_what_propagates(
    tmp_path, monkeypatch, caplog
):
    """The campaign fails on a full disk and marking it failed does not fit either: the disk's
    ``OSError`` (not the state write's) propagates, state.json is the one written before,
    whole, with no temp file beside it, and a warning says the record was not written.
    """
    from chemgap.agent.loop import Campaign, run_campaign
    from chemgap.agent.store import RunStore
    from chemgap.campaigns.spec import parse_spec

    with tmpfs(tmp_path / "small", 400) as small:
        store = RunStore.create(small / "run", parse_spec(tiny_spec()))
        before = (store.root / "state.json").read_bytes()
        cause = OSError(errno.ENOSPC, "No space left on device", str(store.root / "x.npz"))

        def fill_then_fail(self):
            with contextlib.suppress(OSError), open(small / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            raise cause

        monkeypatch.setattr(Campaign, "run", fill_then_fail)
        with pytest.raises(OSError) as raised:
            run_campaign(store)
        assert raised.value is cause
        assert (store.root / "state.json").read_bytes() == before
        assert temp_files(store.root) == []
    assert "could not record failed" in caplog.text
