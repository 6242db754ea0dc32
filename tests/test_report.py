"""The HTML report of a real (tiny) campaign: written by the campaign itself, self-contained,
every section in order (or "not run"), opened in a real headless Chromium where every figure
and the structure viewer must draw without a console error or a network request; the
chemiscope export loaded back through chemiscope; the ``chemgap report`` command's exit codes.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from click.testing import CliRunner
from test_campaign_probes import probe_spec

from chemgap.agent.cli import main
from chemgap.agent.layout import TEST_RESIDUALS
from chemgap.agent.loop import run_campaign
from chemgap.agent.report import REPORT_FILE, try_write_report, write_report
from chemgap.agent.report.gather import TEST_RESIDUALS as REPORT_TEST_RESIDUALS
from chemgap.agent.report.gather import gather
from chemgap.agent.report.sections import SECTIONS, build_sections
from chemgap.agent.runtime import RayExecutor
from chemgap.agent.store import RunStore
from chemgap.campaigns.spec import parse_spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
SECTION_IDS = [name for name, _ in SECTIONS]
MAX_BYTES = 5 * 1024**2
PROBES = ["eos", "vacancy", "dimer", "vibrations"]


def report_spec() -> dict:
    """The tiny Cu campaign (bulk in distribution; vacancies and (111) slabs out of it) with
    fast probes, a lenient diagnosis (so the tiny test set yields a region with exemplars)
    and a one-arm remediation experiment.
    """
    spec = probe_spec()
    spec["probes"]["names"] = PROBES
    spec["system"]["seeds"].append(
        {"kind": "surface", "formula": "Cu", "crystal": "fcc", "a": 3.6, "miller": [1, 1, 1],
         "layers": 3, "size": [2, 2], "vacuum_A": 5.0, "count": 2, "rattle_A": 0.03,
         "initial": False}
    )  # fmt: skip
    spec["test_set"]["per_kind"] = 4  # the experiment needs 2 per kind on each side
    spec["diagnostics"] = {"bootstrap": 100, "alpha": 0.9, "min_region_atoms": 4,
                           "exemplars": 2, "splits": ["random", "size"]}  # fmt: skip
    spec["remediation"] = {"remedies": ["deeper"], "repeats": 2, "members": 1, "max_epochs": 2}
    return spec


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_session):
    """A finished two-iteration campaign with probes and its remediation experiment, its tasks
    on the session's Ray; the campaign writes its own report.
    """
    store = RunStore.create(tmp_path_factory.mktemp("report") / "run", parse_spec(report_spec()))
    assert run_campaign(store, num_cpus=2, executor=RayExecutor()) == "iteration cap (2)"
    return store.root


@pytest.fixture(scope="module")
def html(run_dir) -> str:
    return (run_dir / REPORT_FILE).read_text()


def _report_data(text: str) -> dict:
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text,
                      re.S)  # fmt: skip
    assert block is not None
    return json.loads(block.group(1))


class _References(HTMLParser):
    """Every src/href attribute and every style text of a page (scripts' text is not markup)."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.styles: list[str] = []
        self.tags: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action") and value:
                self.links.append(value)
            if name == "style" and value:
                self.styles.append(value)

    def handle_endtag(self, tag):
        self._in_style = False if tag == "style" else self._in_style

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def test_the_campaign_writes_its_report_after_the_experiment(run_dir, html):
    """The hook: RUN/report.html exists, is newer than the experiment's results and shows them;
    the report module reads the same residuals file the campaign writes.
    """
    report = run_dir / REPORT_FILE
    results = run_dir / "remedies" / "results.json"
    assert report.stat().st_mtime >= results.stat().st_mtime
    assert 'id="remediation" data-available="true"' in html and "deeper" in html
    assert REPORT_TEST_RESIDUALS == TEST_RESIDUALS


def test_the_report_references_nothing_outside_itself(html):
    """No src/href/@import/url() points outside the file: no <link>, no external <script>."""
    refs = _References()
    refs.feed(html)
    external = [x for x in refs.links if re.match(r"\s*(https?:)?//", x, re.I)]
    assert external == [] and "link" not in refs.tags
    assert all(not x.startswith(("file:", "/")) for x in refs.links)  # anchors only
    for style in refs.styles:
        assert "@import" not in style
        assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", style, re.I)
    assert not re.search(r"<script[^>]*\ssrc=", html, re.I)


def test_size_sections_in_order_and_the_data_behind_them(run_dir, html):
    """Under 5 MB; every section once, in order, all with data for this run; the learning curve
    is the history's, the parity plot covers every test force component and names structure,
    kind and atom on hover, the viewer highlights exactly the region's atoms.
    """
    assert len(html.encode()) < MAX_BYTES
    positions = [html.index(f'<section id="{sid}" data-available="true"') for sid in SECTION_IDS]
    assert positions == sorted(positions) and "not run:" not in html
    data = _report_data(html)
    history = RunStore.open(run_dir).state.history
    assert data["figures"]["learning"]["data"][0]["x"] == [h["oracle_calls"] for h in history]
    test = RunStore.open(run_dir).structures(status="ok", split="test")
    forces = [t for t in data["figures"]["parity"]["data"] if t.get("xaxis") is None
              and t.get("mode") == "markers"]  # fmt: skip
    assert sum(len(t["x"]) for t in forces) == 3 * sum(len(a) for a in test)
    assert re.fullmatch(r"structure \d+ \(row \d+, \w+, (ID|OOD)\) · atom \d+ Cu · F[xyz]",
                        forces[0]["text"][0])  # fmt: skip
    regions = json.loads((run_dir / "regions.json").read_text())["regions"]
    if regions:  # the viewer shows each region's exemplars, its atoms highlighted
        first = read(run_dir / "regions" / f"{regions[0]['id']}.extxyz", index=0)
        view = data["views"][0]
        assert view["region"] == regions[0]["id"]
        assert view["highlight"] == np.flatnonzero(first.arrays["in_region"]).tolist()
    else:  # none found: the worst test structures instead
        assert data["views"] and data["views"][0]["region"] is None


def test_a_run_without_results_says_not_run(tmp_path):
    """A run created but not started: every section but the summary and the metadata says
    "not run"; the report draws no figure and no viewer.
    """
    from test_campaign import tiny_spec

    store = RunStore.create(tmp_path / "run", parse_spec(tiny_spec()))
    text = write_report(store.root)["report"].read_text()
    for sid in SECTION_IDS:
        available = sid in ("summary", "metadata")
        assert f'<section id="{sid}" data-available="{str(available).lower()}"' in text
    assert text.count('<p class="not-run">not run: ') == len(SECTION_IDS) - 2
    data = _report_data(text)
    assert data == {"figures": {}, "views": []}


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium "
    "(.ci/run installs it)",
)
def test_the_report_draws_in_a_headless_browser(run_dir, tmp_path):
    """Real Chromium, offline: no console error, no request leaves the file, every section is
    there, every figure div holds a drawn plotly plot, and the 3Dmol viewer has its canvas
    (also after choosing another structure). A screenshot is kept (and copied to
    $CHEMGAP_ARTIFACTS when set).
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    expected = len(build_sections(gather(run_dir)).figures)
    assert expected >= 9  # learning, parity, calibration ×2, 4 probes, remediation (+ regions)
    errors: list[str] = []
    outside: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))

            def guard(route):
                if route.request.url.startswith(("file:", "data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", guard)
            page.goto((run_dir / REPORT_FILE).as_uri())
            page.wait_for_function("window.chemgapReport && window.chemgapReport.done",
                                   timeout=60_000)  # fmt: skip
            state = page.evaluate("window.chemgapReport")
            for sid in SECTION_IDS:
                assert page.locator(f"section#{sid}").is_visible()
            assert page.locator("div.plot[data-figure]").count() == expected
            assert page.locator(".js-plotly-plot").count() == expected
            assert page.locator(".js-plotly-plot .main-svg").count() >= expected
            assert state["plots"] == state["expected"] == expected and state["errors"] == []
            assert state["viewer"] and page.locator("#viewer canvas").count() >= 1
            options = page.locator("#viewer-select option").count()
            if options > 1:
                page.select_option("#viewer-select", "1")
                page.wait_for_timeout(300)
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == [] and outside == []
    assert shot.stat().st_size > 10_000
    if os.environ.get("CHEMGAP_ARTIFACTS"):
        folder = Path(os.environ["CHEMGAP_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, folder / "report.png")


def test_chemiscope_export_loads_back(run_dir, tmp_path):
    """``chemgap report RUN -o … --chemiscope ….json.gz``: both written (exit 0); the export
    holds every test and labelled structure with errors, uncertainty, region membership and
    the SOAP map, and chemiscope itself accepts it again (its own validation, and its loader).
    """
    import chemiscope

    out, cs = tmp_path / "x.html", tmp_path / "x.json.gz"
    result = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(out),
                                       "--chemiscope", str(cs)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.exists() and str(cs) in result.output
    with gzip.open(cs, "rt") as f:
        data = json.load(f)
    store = RunStore.open(run_dir)
    # the test set and every label; not the isolated atoms of the reference energies (E0)
    structures = [
        a for a in store.structures(status="ok") if a.info.get("split") != "isolated_atom"
    ]
    assert len(structures) < len(store.structures(status="ok"))
    n_atoms = sum(len(a) for a in structures)
    assert len(data["structures"]) == len(structures)
    props = data["properties"]
    structure_props = {"SOAP PC1", "SOAP PC2", "force MAE", "energy error", "max force σ",
                       "split", "kind", "source", "iteration", "in distribution"}  # fmt: skip
    atom_props = {"|ΔF|", "force σ", "region", "coordination"}
    assert structure_props | atom_props <= set(props)
    for name in structure_props:
        assert props[name]["target"] == "structure"
        assert len(props[name]["values"]) == len(structures)
    for name in atom_props:
        assert props[name]["target"] == "atom" and len(props[name]["values"]) == n_atoms
    assert sorted(set(props["split"]["values"])) == sorted(
        {str(a.info["split"]) for a in structures}
    )
    assert np.ptp(props["SOAP PC1"]["values"]) > 0
    regions = json.loads((run_dir / "regions.json").read_text())["regions"]
    assert set(props["region"]["values"]) <= {"none", *(r["id"] for r in regions)}
    again = chemiscope.create_input(
        structures=data["structures"], metadata=data["meta"], properties=props,
        environments=[(e["structure"], e["center"], e["cutoff"]) for e in data["environments"]],
        settings=data["settings"],
    )  # fmt: skip
    assert len(again["structures"]) == len(structures) and set(again["properties"]) == set(props)
    widget = chemiscope.show_input(str(cs))
    assert widget is not None


def test_the_report_command_refuses_what_is_not_a_run(tmp_path):
    """Exit 2 with one sentence: an empty folder, a folder without state.json, a missing path,
    an output folder that does not exist; nothing is written.
    """
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    cases = {
        tmp_path / "empty": "not a chemgap run",
        tmp_path / "other": "not a chemgap run",
        tmp_path / "missing": "does not exist",
    }
    for path, words in cases.items():
        result = runner.invoke(main, ["report", str(path)])
        assert result.exit_code == 2, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.rglob(REPORT_FILE))


def test_the_report_command_writes_where_asked(run_dir, tmp_path):
    out = tmp_path / "here.html"
    result = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!DOCTYPE html>") and str(out) in result.output
    bad = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(tmp_path / "no" / "x.html")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_a_report_failure_is_a_warning(tmp_path, caplog):
    """What the campaign calls never raises: a broken run logs a warning and returns None."""
    assert try_write_report(tmp_path / "missing") is None
    assert any(r.levelname == "WARNING" and "report" in r.getMessage() for r in caplog.records)
