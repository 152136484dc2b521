"""`t2t export --config R --stage N [--checkpoint DIR] [--out DIR]`: a ZeRO-3 checkpoint → model directory.

    t2t export --config recipes/demo.yaml --stage 0 --out runs/demo/base_export   # the untrained start M0
    t2t export --config recipes/demo.yaml --stage 1
    t2t export --config recipes/demo.yaml --stage 1 --checkpoint runs/demo/stage1/checkpoints/step00000100 --out m100

Consolidates the fp32 master weights with DeepSpeed's zero_to_fp32 reader (one process, no
GPU), merges LoRA adapters, and writes the `t2t.model.export` format that
`SentenceTransformer(dir)` and `t2t.model.load(dir)` load. Stage 0 exports the recipe's backbone
itself with the recipe's pooling, prompt and attention: the starting point to evaluate beside M1, M2.
"""

from __future__ import annotations

from t2t.commands import add_config_args, load_recipe


def register(sub) -> None:
    p = sub.add_parser("export", help="consolidate a training checkpoint into a model directory")
    add_config_args(p, required=True)
    p.add_argument("--stage", type=int, choices=(0, 1, 2), required=True,
                   help="0: the recipe's backbone as it is (no checkpoint); 1, 2: a training stage")
    p.add_argument("--checkpoint", help="checkpoints directory (its newest) or one stepNNNNNNNN checkpoint "
                                        "(default: the stage's newest)")
    p.add_argument("--out", help="output directory (default: <run_dir>/stage{N}/model, <run_dir>/base_export for 0)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from t2t.model import export, from_config
    from t2t.train import export_checkpoint

    cfg = load_recipe(args)
    if args.stage == 0:
        if args.checkpoint:
            raise ValueError("--checkpoint belongs to stages 1 and 2; stage 0 exports the recipe's backbone")
        out = export(from_config(cfg.model, dtype="float32"), args.out or Path(cfg.run_dir) / "base_export")
    else:
        out = export_checkpoint(cfg, args.stage, args.checkpoint, args.out)
    print(out)
    return 0
