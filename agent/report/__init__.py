"""The HTML report of a run, and its chemiscope export.

One self-contained HTML file per run (``RUN/report.html``; every script, style, figure and
structure inline, so it opens offline): :mod:`.gather` reads the run directory into plain dicts,
:mod:`.sections` decides what each section shows, :mod:`.figures` builds the plotly figures,
:mod:`.structures` the 3Dmol viewer's structures, :mod:`.html` renders and writes the page;
:mod:`.chemiscope` exports the test set and the labels for chemiscope.org.
"""

from chemgap.agent.report.html import REPORT_FILE, render, try_write_report, write_report

__all__ = ["REPORT_FILE", "render", "try_write_report", "write_report"]
