"""Why LLM2Vec trails at a CPU budget: how far bidirectional attention moves SmolLM2 from what it was trained
for, and how much of that the study's MNTP steps win back.

    .venv/bin/python bench/quality/smollm2/mntp_loss.py     # after run_study.py; writes mntp_loss.json here

The MNTP loss (t2t's `mntp` objective: 20% of the tokens selected, token i predicted from position i − 1) of
the same masked batch of held-out sentences, for the untrained backbone with causal attention (what it was
pretrained with), the same weights with bidirectional attention (where LLM2Vec's MNTP starts), and every
LLM2Vec arm's MNTP export, masked as recipes/llm2vec.yaml's `train` section says. About 20 s per model on
2 cores.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEXTS = 128


def main() -> int:
    sys.path.insert(0, str(HERE))
    from run_study import LLM2VEC_RECIPE, enter_repo_offline, parse_args

    args = parse_args([])
    enter_repo_offline()
    import torch

    from t2t.config import load_config
    from t2t.data.corpus import iter_texts
    from t2t.model import load
    from t2t.model.embedder import set_attention
    from t2t.train.loss import OBJECTIVES

    work, train = Path(args.work), load_config(LLM2VEC_RECIPE).train
    texts = [t.text for t in itertools.islice(iter_texts(args.corpus), args.texts, args.texts + TEXTS)]
    start = work / "mean-untrained"  # the untrained backbone, causal, no prompt (as MNTP reads texts)
    models = {"start, causal attention": (start, "causal"), "start, bidirectional attention": (start, "bidirectional")}
    for mntp in sorted(work.glob("llm2vec*-seed*/mntp/model")):
        steps = json.loads((mntp / "t2t_train.json").read_text())["steps"]
        models[f"{mntp.parents[1].name} after {steps} MNTP steps"] = (mntp, "bidirectional")

    rows = {}
    for name, (path, attention) in models.items():
        embedder = load(path).eval()
        set_attention(embedder.lm, attention)
        mntp = OBJECTIVES["mntp"](train, 0)  # the recipe's mask token and probability, seed 0: one fixed batch
        mntp.prepare(embedder)
        batch = mntp.prepare_batch(dict(embedder.tokenize(texts), keys=[str(i) for i in range(len(texts))]))
        with torch.no_grad():
            parts = mntp.loss(embedder, batch)
        rows[name] = round(float(parts.total) / parts.count, 3)
        print(f"{name}: {rows[name]:.3f} nats per masked token (perplexity {math.exp(rows[name]):.0f})", flush=True)
    (HERE / "mntp_loss.json").write_text(json.dumps(dict(texts=TEXTS, loss=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
