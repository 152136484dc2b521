"""The `t2t` command line: one verb per job.

    t2t pipeline [--config R]                 the whole recipe end to end, resumable (default: recipes/demo.yaml)
    t2t sweep --config R --grid KEY=V1,V2     a grid of pipelines on Ray, identical steps shared, one table
    t2t targets --config R --stage NAME       precompute a stage's sparse targets into WebDataset shards (Ray)
    t2t train --config R --stage NAME         one rank of DeepSpeed ZeRO-3 training (under torchrun/deepspeed)
    t2t export --config R --stage NAME        consolidate the newest checkpoint into a model directory
    t2t eval --model DIR [DIR...]             mteb tasks in parallel on Ray workers
    t2t tfidf --corpus C --out DIR            a TF-IDF baseline model directory for `t2t eval`
    t2t plan --config R --nodes N --gpus-per-node G   memory and time of a cluster run
    t2t inspect --model DIR "a text" ...      tokens an embedding points to
    t2t import FILE.gguf --out DIR            a pretrained GGUF backbone → a Hugging Face directory
    t2t config --config recipes/demo.yaml     print the validated recipe (--explain [SECTION]: what each field means)

Each verb lives in its own module under `t2t.commands` and registers its parser there; heavy
imports (torch, ray, deepspeed) happen only inside the verb that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from t2t.process import run_verb
from t2t.registry import Registry

VERBS = Registry[str]("verb")
"""A verb's name → the module under `t2t.commands` that registers its parser (imported when the parser is built)."""
for _verb in ("config", "inspect", "import", "eval", "tfidf", "targets", "train", "export", "plan", "pipeline",
              "sweep"):
    VERBS.register(_verb, f"t2t.commands.{_verb}_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2t", description="Text2Token: decoder LLMs into text embedders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in VERBS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb is not None and verb not in VERBS:  # argparse would list the verbs without a did-you-mean
        print(f"t2t: error: {VERBS.unknown(verb)}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    return run_verb(args.verb, lambda: args.run(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
