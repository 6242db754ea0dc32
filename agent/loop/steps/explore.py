"""Explore: batched MD of the walkers through the iteration's ensemble, within trust levels.

Writes ``candidates.extxyz`` (frames between the trust levels, with their uncertainty),
``md_failures.extxyz`` (each failed walker's last frames) and ``exploration.json``
(:class:`chemgap.agent.records.ExplorationRecord`). The walkers start from the spec's seeds in
a seeded order, at the spec's temperatures in turn (:func:`chemgap.agent.explore.explore_groups`).
"""

from __future__ import annotations

from chemgap.agent.loop.context import IterationContext
from chemgap.agent.records import ExplorationRecord
from chemgap.agent.structio import write_extxyz


def run(ctx: IterationContext) -> None:
    """Run the walkers; store candidates, md_failures and the summary."""
    from chemgap.agent.explore import explore_groups

    loop, it = ctx.loop, ctx.it
    cfg = ctx.spec.exploration
    seeds = loop.seeds()
    order = ctx.rng(2).permutation(len(seeds))
    starts = [seeds[order[i % len(seeds)]].copy() for i in range(cfg.walkers)]
    temps = [cfg.temperatures_K[i % len(cfg.temperatures_K)] for i in range(cfg.walkers)]
    groups = [f"{a.info['seed_kind']} {t:g} K" for a, t in zip(starts, temps, strict=True)]
    ctx.begin("explore", n=cfg.walkers)
    result = explore_groups(
        ctx.ensemble(),
        starts,
        cfg,
        n_tasks=min(loop.num_cpus, cfg.walkers),
        task_tag=f"iter {it}",
        temperatures_K=temps,
        groups=groups,
        levels=ctx.levels(),
        seed=ctx.seed,
        executor=loop.executor,
    )
    for frame in (*result.candidates, *result.visited):
        frame.info.update(iteration=it, source="explore")
    failures = []
    for f in result.failures:
        for k, frame in enumerate(f.frames):
            frame.info.update(iteration=it, md_failure=f.reason, failure_step=f.step, frame=k)
            failures.append(frame)
    write_extxyz(ctx.dir.candidates, result.candidates)
    write_extxyz(ctx.dir.visited, result.visited)
    write_extxyz(ctx.dir.md_failures, failures)
    total = {
        k: sum(c[k] for c in result.counts.values()) for k in ("accurate", "candidate", "failed")
    }
    n = max(sum(total.values()), 1)
    ExplorationRecord(
        walkers=cfg.walkers,
        steps=cfg.steps,
        walker_steps=result.steps,
        graph_builds=result.rebuilds,
        candidates=len(result.candidates),
        visited=len(result.visited),
        md_failures=len(result.failures),
        counts=result.counts,
        fractions=result.fractions(),
        overall={k: v / n for k, v in total.items()},
    ).write(ctx.dir.exploration)
    ctx.finish("explore")
