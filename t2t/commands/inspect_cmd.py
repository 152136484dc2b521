"""`t2t inspect --model DIR TEXT...`: the tokens each text's embedding points to through the LM head.

    t2t inspect --model runs/demo/stage2/model "The Eiffel Tower is in Paris."
    t2t inspect --model models/smollm2 --config recipes/demo.yaml --top-k 3 "The Eiffel Tower is in Paris."

This is the token-alignment view Text2Token rests on: after training, a text's embedding
should put its mass on the text's key tokens (stage 1) and related ones (stage 2).

A t2t export embeds as its `t2t_config.json` says. A plain Hugging Face directory (from `t2t import`,
or a download) has no such file: it embeds with the model settings of the recipe `--config` names
(pooling, prompt, attention, max_length, after `--set`), as that recipe's untrained start model would.
"""

from __future__ import annotations

import math
import sys

from t2t.commands import add_config_args


def register(sub) -> None:
    p = sub.add_parser("inspect", help="top-k LM-head tokens of each text's embedding")
    p.add_argument("--model", required=True,
                   help="a t2t export, or a plain Hugging Face directory (then --config is needed)")
    p.add_argument("--top-k", type=int, default=10, help="tokens to show per text (default 10)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    add_config_args(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.commands import load_recipe
    from t2t.errors import UserError
    from t2t.identity import EmbeddingIdentity
    from t2t.model import load

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.overrides and not args.config:
        raise UserError("--set needs the recipe it overrides: --config R")
    # Only a directory without t2t_config.json uses them; an export keeps its own.
    settings = EmbeddingIdentity.of(load_recipe(args).model) if args.config else None
    embedder = load(args.model, settings=settings)
    broken = 0
    for text, tokens in zip(args.texts, embedder.top_tokens(args.texts, k=args.top_k)):
        print(text)
        if not all(math.isfinite(prob) for _, prob in tokens):
            broken += 1
            print("  (the embedding is NaN or infinite: the model's weights are broken)")
            continue
        for token, prob in tokens:
            shown = embedder.tokenizer.convert_tokens_to_string([token]).strip() or repr(token)
            print(f"  {prob:8.4f}  {shown}")
    if broken:
        print(f"t2t inspect: {args.model} gives NaN or infinite embeddings for {broken} of {len(args.texts)} "
              f"texts; it is not usable (a diverged training run?)", file=sys.stderr)
        return 1
    return 0
