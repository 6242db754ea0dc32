"""Report captions state what was measured: the split table's caption follows its rows."""

from __future__ import annotations

import re

from chemgap.agent.report.html import _environment


def _caption(rows: list[tuple[str, ...]]) -> str:
    env = _environment()
    html = env.get_template("sections/splits.html").render(
        c={"header": ("split", "model"), "rows": rows}
    )
    caption = re.search(r'<p class="caption">(.*?)</p>', html, re.S)
    assert caption
    return " ".join(caption.group(1).split())


def test_the_in_loop_split_table_does_not_claim_what_training_on_a_split_shows():
    """The campaign's own splits score its ensemble on both sides of the test set (not
    retrained): the caption says so and does not describe biased-split training.

    Broken variant caught: the old fixed caption ("a biased split shows the out-of-distribution
    failure a random one hides") under an in-loop table.
    """
    in_loop = _caption([("random", "this ensemble"), ("cluster", "this ensemble")])
    assert "not retrained" in in_loop and "a biased split shows" not in in_loop
    studied = _caption([("random", "retrained"), ("cluster", "retrained")])
    assert "a biased split shows" in studied and "this ensemble" not in studied
    mixed = _caption([("random", "retrained"), ("size", "this ensemble")])
    assert "a biased split shows" in mixed and "not retrained" in mixed


def test_the_calibration_caption_states_what_was_measured():
    """The caption reads the mean z² measured on data the calibration was not fitted on, and
    says which way it is off; it claims nothing where nothing was measured.

    Broken variant caught: the old fixed sentence ("ensembles are known to be overconfident out
    of distribution") beside a measured under-confident mean z² of 0.22.
    """
    from chemgap.agent.report.sections import confidence_text

    text = confidence_text(
        {
            "fitted_on": {"mean_z2_forces": 1.0},
            "test_id": {"mean_z2_forces": 1.05},
            "test_ood": {"mean_z2_forces": 0.22},
        }
    )
    assert "test ID: mean z² 1.05, about right" in text
    assert "test OOD: mean z² 0.22, under-confident" in text
    assert "fitted on" not in text  # the fitting data says nothing about transfer
    over = confidence_text({"test_ood": {"mean_z2_forces": 3.4}})
    assert "over-confident: the spread understates the error" in over
    assert confidence_text({"fitted_on": {"mean_z2_forces": 1.0}}) is None
