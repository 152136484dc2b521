"""`t2t export --config R --stage N [--checkpoint DIR] [--out DIR]`: a ZeRO-3 checkpoint → model directory.

    t2t export --config recipes/demo.yaml --stage 1
    t2t export --config recipes/demo.yaml --stage 1 --checkpoint runs/demo/stage1/checkpoints/step00000100 --out m100

Consolidates the fp32 master weights with DeepSpeed's zero_to_fp32 reader (one process, no
GPU), merges LoRA adapters, and writes the `t2t.model.export` format that
`SentenceTransformer(dir)` and `t2t.model.load(dir)` load.
"""

from __future__ import annotations

from t2t.commands import add_config_args, load_recipe


def register(sub) -> None:
    p = sub.add_parser("export", help="consolidate a training checkpoint into a model directory")
    add_config_args(p, required=True)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--checkpoint", help="checkpoints directory (its newest) or one stepNNNNNNNN checkpoint "
                                        "(default: the stage's newest)")
    p.add_argument("--out", help="output directory (default: <run_dir>/stage{N}/model)")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.train import export_checkpoint

    out = export_checkpoint(load_recipe(args), args.stage, args.checkpoint, args.out)
    print(out)
    return 0
