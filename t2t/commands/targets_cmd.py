"""`t2t targets`: precompute stage-1 or stage-2 target shards with Ray (see t2t/precompute.py).

    t2t targets --config recipes/demo.yaml --stage 1
    t2t targets --config recipes/demo.yaml --stage 2 --corpus data/corpus/wiki_sentences_60k.txt.gz \\
        --out shards/demo/stage2 --ray-address 10.0.0.1:6379
"""

from __future__ import annotations

from t2t.commands import add_config_args, load_recipe


def register(sub) -> None:
    p = sub.add_parser("targets", help="precompute target shards (stage 1: data-driven, stage 2: model-derived)")
    add_config_args(p, required=True)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True, help="1: data-driven, 2: model-derived")
    p.add_argument("--corpus", help="corpus file or directory (default: data.stageN_corpus of the recipe)")
    p.add_argument("--out", help="shard directory (default: <data.shards_dir>/stageN)")
    p.add_argument("--ray-address", help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--overwrite", action="store_true", help="replace shards of a different job in --out")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.precompute import run_targets

    manifest = run_targets(load_recipe(args), args.stage, corpus=args.corpus, out=args.out,
                           ray_address=args.ray_address, overwrite=args.overwrite)
    c = manifest["corpus"]["counters"]
    print(f"stage {manifest['stage']}: {manifest['samples']} samples in {len(manifest['shards'])} shards "
          f"({manifest['empty_targets']} with an empty target)")
    print(f"corpus {manifest['corpus']['path']}: read {c['read']}, skipped empty {c['skipped_empty']}, "
          f"invalid UTF-8 replaced {c['invalid_utf8']}, truncated {c['truncated']}")
    if manifest["dropped_mass"]:
        d = manifest["dropped_mass"]
        print(f"dropped target mass: max {d['bound']:.3g}, mean {d['mean']:.3g}, "
              f"texts cut by top_k {d['texts_cut_by_top_k']}")
    return 0
