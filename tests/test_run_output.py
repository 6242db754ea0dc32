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
