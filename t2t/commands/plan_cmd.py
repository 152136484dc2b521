"""`t2t plan`: memory per GPU and wall time of a recipe on a cluster, before renting it.

    t2t plan --config recipes/mistral-7b.yaml                  # the recipe's layout (1 node x 8 GPUs)
    t2t plan --config recipes/mistral-7b.yaml --nodes 2 --gpus-per-node 8
    t2t plan --config recipes/llama3-8b.yaml --gpu-mem 80 --mfu 0.35 --json
    t2t plan --config recipes/mistral-7b.yaml --nodes 2 --grid stages.stage2.targets.tau=1e-4,1e-5
    t2t plan --config recipes/mistral-7b.yaml --mfu-from runs/probe/stage1/metrics.jsonl

The cluster is the recipe's `layout` (nodes, gpus_per_node), each half replaced by --nodes / --gpus-per-node
when given; a recipe without one needs both flags. The total counts one evaluation per model `t2t pipeline`
evaluates: the start model and each stage's export. The model behind the numbers is described in `t2t.plan`.
"""

from __future__ import annotations

import json

from t2t.commands import add_config_args, load_recipe

GiB = 1024**3


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory per GPU and wall time of a cluster run (no weights needed)")
    add_config_args(p, required=True)
    p.add_argument("--nodes", type=int, help="nodes in the allocation (default: the recipe's layout.nodes)")
    p.add_argument("--gpus-per-node", type=int,
                   help="GPUs per node (default: the recipe's layout.gpus_per_node)")
    p.add_argument("--gpu-mem", type=float, default=80.0, metavar="GiB", help="memory per GPU (default 80)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed (default 0.4)")
    p.add_argument("--mfu-from", metavar="METRICS", default=None,
                   help="use the MFU a run measured instead of --mfu: a stage's metrics.jsonl (e.g. of a short run "
                        "on one node of the cluster)")
    p.add_argument("--gpu-tflops", type=float, default=989.0,
                   help="peak dense bf16 TFLOP/s per GPU (default 989, H100 SXM)")
    p.add_argument("--link-gbps", type=float, default=None,
                   help="Gbit/s per GPU for ZeRO-3 collectives (default 400 across nodes, 3600 NVLink within one)")
    p.add_argument("--tokens-per-text", type=int, default=None,
                   help="tokens per training / target text (default model.max_length, the padded upper bound)")
    p.add_argument("--stage-texts", action="append", default=[], metavar="NAME=N",
                   help="texts of stage NAME's targets, for a target kind that runs the model (repeatable; "
                        "default: counted in the stage's corpus if present, else its targets.max_texts or "
                        "data.max_texts, else the texts its training reads)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="plan a sweep (as `t2t sweep --grid`): its points, shared steps, GPU-hours and wall time")
    p.add_argument("--no-eval", action="store_true", help="skip the MTEB estimate (it imports mteb)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=run)


def parse_stage_texts(items: list[str]) -> dict[str, int]:
    """`--stage-texts NAME=N` (repeated) as {stage name: texts}."""
    from t2t.errors import UserError

    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--stage-texts {item!r} must look like NAME=N (e.g. stage2=1000000)")
        try:
            n = int(value)
        except ValueError:
            raise UserError(f"--stage-texts {item!r}: N must be an integer, got {value!r}") from None
        if n < 0:
            raise UserError(f"--stage-texts {item!r}: N must be >= 0")
        if name in out and out[name] != n:
            raise UserError(f"--stage-texts gives stage {name} two counts: {out[name]} and {n}")
        out[name] = n
    return out


def measured_mfu(path: str) -> float:
    """The MFU a training run measured, from its metrics.jsonl (t2t.report.measured)."""
    from pathlib import Path

    from t2t.errors import UserError
    from t2t.report import measured, read_metrics

    if not Path(path).is_file():
        raise UserError(f"--mfu-from: {path} does not exist (give a stage's metrics.jsonl)")
    try:
        m = measured(read_metrics(Path(path)))
    except (UserError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--mfu-from: {path} is not a t2t metrics file ({type(e).__name__}: {e})") from None
    if m is None or m["mfu"] is None:
        raise UserError(f"--mfu-from: {path} records no MFU (written by an older t2t, or its matmul peak was "
                        "unknown); give --mfu instead")
    return m["mfu"]


def cluster_size(args, cfg) -> tuple[int, int, str]:
    """Nodes and GPUs per node: the flags where given, else the recipe's `layout`; and where they came from."""
    from t2t.errors import UserError

    layout = cfg.layout
    nodes = args.nodes if args.nodes is not None else layout and layout.nodes
    gpus = args.gpus_per_node if args.gpus_per_node is not None else layout and layout.gpus_per_node
    if layout is None and (nodes is None or gpus is None):
        missing = " and ".join(f for f, v in (("--nodes", nodes), ("--gpus-per-node", gpus)) if v is None)
        raise UserError(f"{args.config} sets no layout and {missing} is not given: give --nodes N --gpus-per-node G, "
                        "or set layout.nodes and layout.gpus_per_node in the recipe")
    flags = [f for f, v in (("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node)) if v is not None]
    source = "the recipe's layout" if not flags else " ".join(flags) + ("" if len(flags) == 2 else
                                                                        " and the recipe's layout")
    return nodes, gpus, source


def run(args) -> int:
    from t2t.plan import Cluster, make_plan

    stage_texts = parse_stage_texts(args.stage_texts)
    mfu = measured_mfu(args.mfu_from) if args.mfu_from else args.mfu
    cfg = load_recipe(args)
    nodes, gpus, source = cluster_size(args, cfg)
    cluster = Cluster(nodes, gpus, args.gpu_mem, args.gpu_tflops, mfu, args.link_gbps)
    options = dict(tokens_per_text=args.tokens_per_text, stage_texts=stage_texts, with_eval=not args.no_eval)
    if args.grid:
        from t2t.plan.sweep import plan_sweep

        plan = plan_sweep(args.config, args.overrides, args.grid, cluster, **options)
        plan["cluster"]["source"] = source
        print(json.dumps(plan, indent=2) if args.json else format_sweep_plan(plan))
        return 0
    plan = make_plan(cfg, cluster, recipe=args.config, **options)
    plan["cluster"]["source"] = source
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def format_plan(plan: dict) -> str:
    """The plan as a table for people."""
    from t2t.plan import ITEM_LABELS, MODES, USABLE_GPU_FRACTION

    a, z, c, b, m, t, n = (plan[k] for k in ("arch", "zero", "cluster", "batch", "memory", "time", "params"))
    frozen = f"{_count(n['frozen'])} frozen: {n['frozen_what']}" if n["frozen"] else \
        "none frozen: train.train_embeddings"
    lines = [
        f"t2t plan  {plan['recipe']}  on {c['nodes']} node{'s' if c['nodes'] > 1 else ''} x "
        f"{c['gpus_per_node']} GPUs = {c['world']} ranks" + f" ({c['source']})",
        f"backbone  {a['model_type']}, {_count(a['n_params'])} parameters: {a['num_layers']} layers, "
        f"d {a['hidden_size']}, {a['num_heads']} heads ({a['num_kv_heads']} kv), MLP {a['intermediate_size']}, "
        f"vocab {a['vocab_size']}  [{a['source']}]",
        f"params    {_count(n['total'])} ({_count(n['trainable'])} trainable, {frozen}); "
        "gradients and optimizer states only for trainable ones",
        f"zero-3    {z['source']}: {8 * z['param_bytes']}-bit params, {8 * z['grad_bytes']}-bit grads, "
        f"prefetch {z['prefetch_bucket_size']:.0e}, reduce bucket {z['reduce_bucket_size']:.0e}, "
        f"persistence {z['param_persistence_threshold']:.0e}",
        f"batch     {b['micro_batch']} texts x {b['grad_accum']} micro-steps x {c['world']} ranks = "
        f"{b['global_batch']} texts per step; {b['tokens_per_text']} tokens per text ({b['tokens_per_text_source']})",
        "",
        f"{'memory per GPU, GiB':44s}" + "".join(f"{h:>14s}" for h in ("no offload", "offload opt", "opt+params")),
    ]
    for key, label in ITEM_LABELS.items():
        cells = ["cpu" if key in m[mode]["on_cpu"] else _gib(m["items"][key]) for mode in MODES]
        lines.append(f"  {label:42s}" + "".join(f"{x:>14s}" for x in cells))
    lines.append(f"  {'peak (step and working set never overlap)':42s}"
                 + "".join(f"{_gib(m[mode]['gpu_peak']):>14s}" for mode in MODES))
    lines.append(f"  {'fits in %g GiB (%d%% usable)' % (c['gpu_mem_gib'], 100 * USABLE_GPU_FRACTION):42s}"
                 + "".join(f"{'yes' if m[mode]['fits'] else 'NO':>14s}" for mode in MODES))
    lines.append(f"  {'CPU RAM per node for offloaded states':42s}"
                 + "".join(f"{_gib(m[mode]['cpu_per_node']):>14s}" for mode in MODES))
    lines.append(f"  the recipe's ds_config runs: {m['recipe_mode'].replace('_', ' ')}")
    lines += ["", f"time      MFU {c['mfu']:g} of {c['gpu_tflops']:g} TFLOP/s per GPU; "
                  f"ZeRO-3 collectives at {c['link_gbps']:g} Gbit/s per GPU",
              f"  train FLOPs per token      {t['train_flops_per_token']:.3g}  (6N + 12 L S d_attn, "
              f"N = {_count(a['matmul_params'])} layer matmul params; LM head 6|V|d once per text)"]
    for stage in t["stages"]:
        s, g = stage["train"], stage["targets"]
        name = stage["name"]
        lines.append(f"  {name}  starts from {stage['start']}, {stage['objective']} objective, {stage['kind']} targets")
        if g["runs_model"]:
            lines.append(f"    {'targets':25s}{_count(g['texts'])} texts ({g['texts_source']}) x {g['passes']} "
                         f"forward passes ({', '.join(g['pass_names'])})  = {_duration(g['seconds'])}")
        else:
            lines.append(f"    {'targets':25s}{_count(g['texts'])} texts read by training: {g['what']}")
        lines.append(f"    {'training':25s}{s['steps']} steps x {s['global_batch']} texts: "
                     f"{s['step_compute_s']:.3g} s compute, {s['step_comm_s']:.3g} s communication per step "
                     f"({s['bound']}-bound), {_count(s['tokens_per_s'])} tokens/s  = {_duration(s['seconds'])}")
    model_targets = [x["name"] for x in t["stages"] if x["targets"]["runs_model"]]
    lines.append(f"  each target actor and eval worker holds the whole model: {_gib(m['inference_weights'])} GiB "
                 f"of weights on one GPU")
    e = t["eval"]
    if e is not None:
        lines.append(f"  evaluation                 {e['benchmark']}: {e['tasks']} tasks, {_count(e['texts'])} texts, "
                     f"{_count(e['tokens'])} tokens, forward only  = {_duration(e['seconds'])} per model x "
                     f"{e['evaluations']} models ({', '.join(e['models'])}) = "
                     f"{_duration(e['evaluations'] * e['seconds'])}")
        if e["not_counted"]:
            lines.append(f"    not counted (no mteb statistics): {', '.join(e['not_counted'])}")
    parts = [f"training of {', '.join(x['name'] for x in t['stages'])}"]
    if model_targets:
        parts.append(f"targets of {', '.join(model_targets)}")
    if e is not None:
        parts.append(f"{e['evaluations']} evaluation{'s' if e['evaluations'] > 1 else ''}")
    lines.append(f"  total                      {_duration(t['total'])} ({'; '.join(parts)})")
    lines += ["", "assumptions:"] + [f"  - {x}" for x in plan["assumptions"]]
    return "\n".join(lines)


def format_sweep_plan(plan: dict) -> str:
    c = plan["cluster"]
    lines = [f"t2t plan  {plan['recipe']}  sweep of {len(plan['points'])} points on {c['nodes']} node(s) x "
             f"{c['gpus_per_node']} GPUs = {c['world']} GPUs" + f" ({c['source']})",
             *[f"  {note}" for note in plan["notes"]],
             f"points    {', '.join(plan['points'])}",
             f"steps     {plan['distinct_steps']} distinct (separate pipelines: {plan['separate_steps']}); "
             f"{plan['evaluated_models']} models evaluated"]
    for s in plan["shared"]:
        who = "all points" if len(s["points"]) == len(plan["points"]) else ", ".join(s["points"])
        lines.append(f"  shared  {s['step']:16s} {_duration(s['seconds']):>8s} once, by {who}")
    lines += [f"GPU-hours {plan['gpu_hours']:.1f} (separate pipelines: {plan['separate_gpu_hours']:.1f})",
              f"wall time {_duration(plan['seconds'])} one step at a time on this cluster; "
              f"{_duration(plan['longest_chain_seconds'])} with one such cluster per point"]
    if plan["not_fitting"]:
        lines.append(f"memory    the recipe's ds_config does not fit for: {', '.join(plan['not_fitting'])} "
                     "(run `t2t plan --config R --set ...` on one of them for the table)")
    return "\n".join(lines)
