"""What chemgap run prints fits an 80-column terminal and says what was found."""

from __future__ import annotations

from rich.console import Console

from chemgap.agent.cli import run as run_cli

ROW = {
    "iteration": 1,
    "labels_ok": 42,
    "labels_failed": 0,
    "oracle_calls": 18,
    "oracle_calls_test": 24,
    "force_mae": 0.0512,
    "test_force_mae_id": 0.0511,
    "test_force_mae_ood": 0.0613,
    "test_energy_mae_ood": 0.0725,
    "spearman_atom": 0.35,
    "accurate": 0.37,
    "candidate": 0.63,
    "failed": 0.0,
    "regions": 3,
    "silent_regions": 0,
}
SUMMARY = {
    "regions": [
        {
            "rule": "environment = env7",
            "ratio": 1.68,
            "ratio_ci": [1.5, 1.9],
            "q_value": 0.0033,
            "silent": True,
            "first_seen": 1,
            "last_seen": 2,
            "enriched": ["coordination ≤ 11 (100% vs 25%)"],
        },
        {
            "rule": "defect_distance_A ≤ 1.18 and coordination_deficit ≤ 2 and environment = env3",
            "ratio": 1.23,
            "ratio_ci": [1.07, 1.39],
            "q_value": 0.04,
            "silent": False,
            "first_seen": 2,
            "last_seen": 2,
            "enriched": [],
        },
    ],
    "resolved": [{"id": "R1234abcd", "rule": "density_g_cm3 ≤ 8.9", "resolved_at": 2}],
    "test_by_kind": [
        {
            "kind": "vacancy",
            "first_iteration": 1,
            "last_iteration": 2,
            "force_mae_first": 0.07,
            "force_mae_last": 0.05,
            "n_structures": 8,
        },
    ],
    "time": {"elapsed_s": 203.0, "overhead_s": 14.0, "overhead_fraction": 0.069},
}


def _render(monkeypatch, draw) -> list[str]:
    console = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(run_cli, "console", console)
    draw(console)
    return console.export_text().splitlines()


def test_iteration_table_and_summary_fit_80_columns(monkeypatch, tmp_path):
    lines = _render(monkeypatch, lambda c: c.print(run_cli._iteration_table(ROW)))
    lines += _render(monkeypatch, lambda c: run_cli.print_summary(SUMMARY, tmp_path))
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in text  # nothing cut off
    for needle in ("61", "coordination ≤ 11", "1.68", "resolved at iteration 2", "6.9 %"):
        assert needle in text, needle


def test_summary_without_regions_says_where_to_look(monkeypatch, tmp_path):
    empty = {**SUMMARY, "regions": [], "resolved": [], "test_by_kind": []}
    text = "\n".join(_render(monkeypatch, lambda c: run_cli.print_summary(empty, tmp_path)))
    assert "no failure region found" in text and "chemgap inspect" in text


def test_summary_shows_readable_rules_folded_counts_and_the_sampling_check(monkeypatch, tmp_path):
    """Readable rules (an environment class by its chemistry), how many regions were folded
    under one, and the flagged provenance apart from the regions table, within 80 columns.

    Broken variants caught: the old environment hint appended to a named class (``(mostly
    ...)`` after its description), and the sampling check left out of the summary.
    """
    readable = {
        **SUMMARY["regions"][0],
        "rule": "environment = Au, 12-fold, 8–11 Au + 1–4 Cu neighbours (env7)",
        "machine_rule": "environment = env7",
        "folded": 2,
    }
    walker = (
        "error differs between walker values (Kruskal-Wallis over 4 values, 36 structures, "
        "q = 0.001); walker = 14: 1.97× the mean error over 8 structures. Possibly a sampling "
        "artefact, not a failure region: check how these structures were made."
    )
    summary = {
        **SUMMARY,
        "regions": [readable, SUMMARY["regions"][1]],
        "provenance": [
            {"feature": "walker", "flagged": True, "message": walker},
            {"feature": "iteration", "flagged": False},
        ],
    }
    lines = _render(monkeypatch, lambda c: run_cli.print_summary(summary, tmp_path))
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    flat = " ".join(text.split())
    assert "Au + 1–4 Cu neighbours (env7) (+2" in flat and "folded)" in flat
    assert "mostly" not in flat
    head = next(i for i, line in enumerate(lines) if line.startswith("sampling check"))
    assert "walker = 14" in " ".join(lines[head:]).replace("\n", " ")
    assert not any("walker" in line for line in lines[:head])
