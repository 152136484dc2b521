"""`t2t export --config R --stage NAME [--checkpoint DIR] [--out DIR]`: a ZeRO-3 checkpoint → model directory.

    t2t export --config recipes/demo.yaml --stage base      # the untrained start M0 → runs/demo/base_export
    t2t export --config recipes/demo.yaml --stage stage1    # its newest checkpoint → runs/demo/stage1/model
    t2t export --config recipes/demo.yaml --stage stage1 --checkpoint runs/demo/stage1/checkpoints/step00000100 --out m100
    t2t export --config recipes/demo.yaml --stage stage1 --best SciFact   # the best step of `t2t eval --checkpoints`

Consolidates the fp32 master weights with DeepSpeed's zero_to_fp32 reader (one process, no
GPU), merges LoRA adapters, and writes the `t2t.model.export` format that
`SentenceTransformer(dir)` and `t2t.model.load(dir)` load. The weights that did not train come from the
model the stage starts from. `--stage base` (or `0`) exports the recipe's backbone itself with the recipe's
pooling, prompt and attention: the starting point to evaluate beside the stages' models. A number N names
the recipe's Nth stage.
"""

from __future__ import annotations

from t2t.commands import add_config_args, load_recipe, stage_name

BASE_NAMES = ("base", "0")
"""`--stage` values that export the recipe's backbone (M0) instead of a stage's checkpoint."""


def register(sub) -> None:
    p = sub.add_parser("export", help="consolidate a training checkpoint into a model directory")
    add_config_args(p, required=True)
    p.add_argument("--stage", required=True, metavar="NAME",
                   help="a stage of the recipe by name (N = its Nth stage), or base (also 0): the recipe's "
                        "backbone as it is, no checkpoint")
    p.add_argument("--checkpoint", help="checkpoints directory (its newest) or one stepNNNNNNNN checkpoint "
                                        "(default: the stage's newest)")
    p.add_argument("--best", metavar="TASK",
                   help="export the stage's best checkpoint on TASK (or `mean`) from its checkpoint series "
                        "(`t2t eval --checkpoints`); default --out: <run_dir>/<stage>/best-<TASK>")
    p.add_argument("--series", metavar="DIR", help="with --best: the series' directory (default <run_dir>/<stage>/series)")
    p.add_argument("--out", help="output directory (default: <run_dir>/<stage>/model, <run_dir>/base_export for "
                                 "base)")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.errors import UserError
    from t2t.model import export, from_config
    from t2t.run_paths import base_export_dir
    from t2t.train import export_checkpoint

    cfg = load_recipe(args)
    if args.stage in BASE_NAMES:
        if args.checkpoint or args.best:
            flag = "--checkpoint" if args.checkpoint else "--best"
            raise UserError(f"{flag} belongs to a training stage; --stage base exports the recipe's backbone")
        out = export(from_config(cfg.model, dtype="float32"), args.out or base_export_dir(cfg))
    elif args.best:
        from t2t.eval.series import best_checkpoint
        from t2t.run_paths import stage_dir

        if args.checkpoint:
            raise UserError("--best picks the checkpoint itself; give --checkpoint or --best, not both")
        stage = stage_name(cfg, args.stage)
        checkpoint, step = best_checkpoint(cfg, stage, args.best, args.series)
        out = export_checkpoint(cfg, stage, checkpoint, args.out or stage_dir(cfg, stage) / f"best-{args.best}")
        print(f"best on {args.best}: step {step}")
    else:
        out = export_checkpoint(cfg, stage_name(cfg, args.stage), args.checkpoint, args.out)
    print(out)
    return 0
