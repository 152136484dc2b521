"""`t2t inspect --model DIR TEXT...`: the tokens each text's embedding points to through the LM head.

This is the token-alignment view Text2Token rests on: after training, a text's embedding
should put its mass on the text's key tokens (stage 1) and related ones (stage 2).
"""

from __future__ import annotations

import math
import sys


def register(sub) -> None:
    p = sub.add_parser("inspect", help="top-k LM-head tokens of each text's embedding")
    p.add_argument("--model", required=True, help="exported t2t model directory")
    p.add_argument("--top-k", type=int, default=10, help="tokens to show per text (default 10)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.errors import UserError
    from t2t.model import load

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    embedder = load(args.model)
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
