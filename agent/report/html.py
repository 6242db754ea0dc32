"""The report as one self-contained HTML file: every script, style, figure and structure inline.

The page is rendered with Jinja2 from the templates shipped in ``templates/``; plotly.js (basic
bundle) and 3Dmol.js are read from the vendored copies in ``vendor/`` (their versions in
``vendor/README.md``) and inlined, so the file opens offline and nothing is fetched at run
time. Figures and viewer structures travel as one JSON block the page's own script reads.

:func:`write_report` writes it (``RUN/report.html`` unless told otherwise);
:func:`try_write_report` is what the campaign calls after each iteration and experiment: a
report that cannot be written is logged as a warning and never stops the campaign.
"""

from __future__ import annotations

import json
import logging
import math
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from chemgap.agent.layout import REPORT_FILE
from chemgap.agent.report.gather import gather
from chemgap.agent.report.sections import Report, build_sections
from chemgap.common.files import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["REPORT_FILE", "VENDOR_FILES", "json_safe", "render", "try_write_report", "write_report"]

VENDOR_FILES = {"plotly": "plotly-basic.min.js", "threedmol": "3Dmol-min.js"}


@cache
def _vendor(name: str) -> str:
    """A vendored script's text (package data, read once)."""
    return (files("chemgap.agent.report") / "vendor" / name).read_text(encoding="utf-8")


@cache
def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("chemgap.agent.report", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None, numpy arrays and scalars as Python lists and
    numbers.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return json_safe(obj.tolist())
    return obj


def _script_json(payload: Any) -> str:
    """JSON for a ``<script type="application/json">`` block: no NaN, no ``<`` (so no
    ``</script>`` can end the block early).
    """
    text = json.dumps(json_safe(payload), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chemgap")
    except PackageNotFoundError:  # a source tree
        return "0+unknown"


def render(report: Report) -> str:
    """The HTML text of ``report`` (:func:`chemgap.agent.report.sections.build_sections`)."""
    template = _environment().get_template("report.html")
    return template.render(
        report=report,
        version=_version(),
        data_json=_script_json({"figures": report.figures, "views": report.views}),
        plotly_js=_vendor(VENDOR_FILES["plotly"]),
        threedmol_js=_vendor(VENDOR_FILES["threedmol"]),
    )


def write_report(
    run: str | Path,
    out: str | Path | None = None,
    *,
    chemiscope: str | Path | None = None,
    remedies: str | Path | None = None,
) -> dict[str, Path]:
    """Write the HTML report of ``run`` (and, when asked, its chemiscope export).

    Args:
        run: a campaign's run directory.
        out: the HTML file (default ``RUN/report.html``).
        chemiscope: a ``.json.gz`` (or ``.json``) file for chemiscope.org, or None.
        remedies: the experiment directory when not ``RUN/remedies``.

    Returns:
        ``{"report": path}`` and ``{"chemiscope": path}`` when written.

    Raises:
        RunDirError: ``run`` is not a readable chemgap run.
        BadInput: ``out`` or ``chemiscope`` cannot be written where asked.
    """
    from chemgap.agent.errors import BadInput

    run = Path(run)
    out = Path(out) if out is not None else run / REPORT_FILE
    data = gather(run, remedies)  # RunDirError first: a non-run directory writes nothing
    if not out.parent.is_dir():
        raise BadInput(f"-o: the folder of {out} does not exist")
    if chemiscope is not None:
        from chemgap.agent.report.chemiscope import check_path

        check_path(chemiscope)
    written = {"report": out}
    atomic_write_text(out, render(build_sections(data)))
    out.chmod(0o644)  # a report is for sharing (atomic writes create 0600 files)
    log.info("report written to %s", out)
    if chemiscope is not None:
        from chemgap.agent.report.chemiscope import write_chemiscope

        written["chemiscope"] = write_chemiscope(run, chemiscope)
    return written


def try_write_report(run: str | Path, *, remedies: str | Path | None = None) -> Path | None:
    """Write ``RUN/report.html``; on any failure log a warning and return None (never raises:
    the campaign calls this after each iteration and experiment).
    """
    try:
        return write_report(run, remedies=remedies)["report"]
    except Exception as exc:
        log.warning("the report of %s could not be written: %s", run, exc, exc_info=True)
        return None
