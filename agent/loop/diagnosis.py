"""The loop's diagnosis: failure regions of each iteration's ensemble on data it never saw.

On the fixed test set (without one: on the holdout and this iteration's labels). The same
structures every iteration, so a region's ratio per iteration is a history. ``regions.json`` is
written in ``iterations/NNN`` and at the run's root, with the model's ``quality`` (its regions
are tentative when it misses its in-distribution target). A diagnosis that cannot be made (too
few structures for a statistic, say) is logged and recorded, not fatal.
"""

from __future__ import annotations

import logging
from typing import Any

from chemgap.agent.loop.context import IterationContext
from chemgap.common.keys import HOLDOUT_SPLIT, TEST_SPLIT

log = logging.getLogger(__name__)


def diagnose_iteration(ctx: IterationContext, quality: dict[str, Any] | None) -> dict[str, Any]:
    """Diagnose iteration ``ctx.it``'s ensemble and write its regions.

    Returns:
        The history fields: ``regions``, ``silent_regions``, ``top_region``,
        ``resolved_regions``, ``diagnosed_structures`` (or ``diagnosis_error``).
    """
    from chemgap.agent.diagnostics.diagnose import diagnose, load_previous, write_regions

    loop, it = ctx.loop, ctx.it
    ctx.report("step", step="diagnose")
    unseen = loop.test_set() or [
        a
        for a in loop.labelled()
        if a.info.get("split") == HOLDOUT_SPLIT or a.info.get("iteration") == it
    ]
    test = bool(ctx.store.db.count(split=TEST_SPLIT, status="ok"))
    # the previous iteration's own file: the run-level one may already be this iteration's
    # if a run was killed between writing it and recording the step
    previous = load_previous(loop.layout.iteration(it - 1).regions_file)
    try:
        result = diagnose(
            unseen,
            ctx.ensemble(),
            ctx.spec.diagnostics,
            seed=ctx.spec.seed,
            iteration=it,
            previous=previous,
            source="test set" if test else "holdout and this iteration's labels",
        )
    except Exception as exc:
        log.warning("iteration %d: diagnosis failed: %s", it, exc, exc_info=True)
        return {
            "regions": None,
            "silent_regions": None,
            "diagnosis_error": f"{type(exc).__name__}: {exc}",
        }
    result.quality = quality
    write_regions(result, ctx.dir.path)
    write_regions(result, loop.layout.root)
    regions = result.regions
    top = regions[0] if regions else None
    return {
        "regions": len(regions),
        "silent_regions": sum(bool(getattr(r, "silent", False)) for r in regions),
        "top_region": getattr(top, "rule", None),
        "resolved_regions": len(result.resolved),
        "diagnosed_structures": len(unseen),
    }
