"""`t2t targets`: precompute a stage's target shards with Ray (see t2t/jobs/targets.py).

    t2t targets --config recipes/demo.yaml --stage stage1
    t2t targets --config recipes/demo.yaml --stage stage2 --corpus data/corpus/wiki_sentences_60k.txt.gz \\
        --out shards/demo/stage2 --ray-address 10.0.0.1:6379

A stage whose targets the model derives computes them with the model the stage starts from (for Text2Token's
stage2: stage1's export, `<run_dir>/stage1/model`).
"""

from __future__ import annotations

from t2t.commands import add_config_args, add_stage_arg, load_recipe, stage_name


def register(sub) -> None:
    p = sub.add_parser("targets", help="precompute a stage's target shards (data-driven, model-derived, ...)")
    add_config_args(p, required=True)
    add_stage_arg(p)
    p.add_argument("--corpus", help="corpus file or directory (default: the stage's targets.corpus, else data.corpus)")
    p.add_argument("--out", help="shard directory (default: <data.shards_dir>/<stage>)")
    p.add_argument("--ray-address", help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--overwrite", action="store_true", help="replace shards of a different job in --out")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.jobs.targets import run_targets

    cfg = load_recipe(args)
    manifest = run_targets(cfg, stage_name(cfg, args.stage), corpus=args.corpus, out=args.out,
                           ray_address=args.ray_address, overwrite=args.overwrite)
    c = manifest["corpus"]["counters"]
    print(f"{manifest['stage']}: {manifest['samples']} samples in {len(manifest['shards'])} shards "
          f"({manifest['empty_targets']} with an empty target)")
    print(f"corpus {manifest['corpus']['path']}: read {c['read']}, skipped empty {c['skipped_empty']}, "
          f"invalid UTF-8 replaced {c['invalid_utf8']}, truncated {c['truncated']}")
    if manifest.get("dropped_mass"):
        d = manifest["dropped_mass"]
        print(f"dropped target mass: max {d['bound']:.3g}, mean {d['mean']:.3g}, "
              f"texts cut by top_k {d['texts_cut_by_top_k']}")
    return 0
