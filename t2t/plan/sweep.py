"""`t2t plan --grid`: a sweep before it runs — its points, the steps they share, its GPU-hours and wall time.

Each point is planned as `t2t plan` plans a recipe (`make_plan`), on the whole given cluster. A step shared
by several points (same fingerprint, see t2t/sweep/store.py) is counted once; the separate-pipelines figure
counts it per point, and also evaluates each pipeline's start and stage models, as `t2t pipeline` does. The
wall time is given two ways: one step at a time on this cluster, and the longest chain of one point (the
floor when every point gets a cluster of this size at once).
"""

from __future__ import annotations

from t2t.pipeline import step_parts
from t2t.plan.timing import Cluster, make_plan


def plan_sweep(recipe: str, overrides: list[str], grid_flags: list[str], cluster: Cluster, **plan_kw) -> dict:
    from t2t.sweep.grid import parse_grid
    from t2t.sweep.runner import Sweep

    sweep = Sweep(recipe, overrides, parse_grid(grid_flags), check_runnable=False)
    plans = {name: make_plan(point.cfg, cluster, recipe=recipe, **plan_kw) for name, point in sweep.points.items()}

    def seconds(point: str, step: str) -> float:
        if step == "base":
            return 0.0  # converting or checking the backbone: no GPU work modelled
        stage, what = step_parts(step)
        timed = next(s for s in plans[point]["time"]["stages"] if s["name"] == stage)
        return timed["train"]["seconds"] if what == "train" else (timed["targets"]["seconds"] or 0.0)

    def eval_seconds(point: str) -> float:
        evaluation = plans[point]["time"]["eval"]
        return evaluation["seconds"] if evaluation else 0.0

    node_seconds = {key: seconds(node.points[0], node.step) for key, node in sweep.nodes.items()}
    starts = {p.chain[0].key: name for name, p in sweep.points.items()}
    finals = {p.chain[-1].key: name for name, p in sweep.points.items()}
    together = sum(node_seconds.values()) + sum(eval_seconds(n) for n in [*starts.values(), *finals.values()])
    separate = sum(sum(node_seconds[n.key] for n in p.chain) + eval_seconds(name) * (1 + len(p.cfg.stages))
                   for name, p in sweep.points.items())
    longest = max(sum(node_seconds[n.key] for n in p.chain) + 2 * eval_seconds(name)
                  for name, p in sweep.points.items())
    world = cluster.world
    return dict(
        recipe=recipe, grid=sweep.grid, points=list(sweep.points), notes=sweep.notes,
        cluster=dict(nodes=cluster.nodes, gpus_per_node=cluster.gpus_per_node, world=world),
        distinct_steps=len(sweep.nodes), separate_steps=sum(len(p.chain) for p in sweep.points.values()),
        shared=[dict(step=n.step, points=n.points, seconds=node_seconds[k]) for k, n in sweep.nodes.items()
                if len(n.points) > 1],
        evaluated_models=len(starts) + len(finals),
        seconds=together, separate_seconds=separate, longest_chain_seconds=longest,
        gpu_hours=together * world / 3600, separate_gpu_hours=separate * world / 3600,
        not_fitting=[name for name, plan in plans.items()
                     if not plan["memory"][plan["memory"]["recipe_mode"]]["fits"]],
    )
