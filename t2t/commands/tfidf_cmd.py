"""`t2t tfidf`: fit a TF-IDF baseline on a corpus and save it as a model directory for `t2t eval`.

    t2t tfidf --corpus data/corpus/wiki_sentences_60k.txt.gz --out runs/baselines/tfidf
    t2t eval --model runs/baselines/tfidf all-MiniLM-L6-v2 runs/demo/stage1/model

TF-IDF on the training corpus is the lexical floor and all-MiniLM-L6-v2 (a supervised model) the
ceiling a Text2Token embedder sits between. See t2t/eval/tfidf.py.
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("tfidf", help="fit a TF-IDF baseline model directory on a corpus (for t2t eval)")
    p.add_argument("--corpus", required=True, help="corpus file or directory (.txt, .txt.gz, .jsonl, .jsonl.gz)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write (replaced if a TF-IDF one)")
    p.add_argument("--max-texts", type=int, default=100_000, metavar="N",
                   help="fit on the first N texts (default 100000)")
    p.add_argument("--max-features", type=int, default=16384, metavar="N",
                   help="vocabulary size cap = embedding dimensions (default 16384; mteb embeddings are dense)")
    p.set_defaults(run=run)


def run(args) -> int:
    from t2t.eval.tfidf import TFIDF_CONFIG, fit_tfidf

    out = fit_tfidf(args.corpus, args.out, max_texts=args.max_texts, max_features=args.max_features)
    config = json.loads((out / TFIDF_CONFIG).read_text())
    print(f"TF-IDF baseline in {out}: vocabulary {config['vocabulary_size']} words from {config['texts']} texts")
    return 0
