"""RESULTS.md, results.json and scores.png of study v2 (called by run_study.py after every arm).

    .venv/bin/python bench/quality/smollm2/report.py     # re-render from results.json, e.g. after editing DISCUSSION.md

Arms with several seeds show the mean over seeds and the spread (max − min) in brackets. The issue's three goals
are read off the same numbers; an arm not measured yet leaves its goal open, never met.
"""

from __future__ import annotations

import json
from pathlib import Path

from summary import _cell, arms_in, plot, relative_paths, summarise  # bench/quality/smollm2/summary.py

from t2t.eval.report import to_markdown

HERE = Path(__file__).resolve().parent

ARMS = [("mean-untrained", "(1) training-free, mean pooling"),
        ("prompteol-untrained", "(2) training-free, PromptEOL (last token)"),
        ("t2t-s1", "(3) Text2Token stage 1 (PromptEOL)"),
        ("t2t-s12", "(4) Text2Token stage 1 → 2"),
        ("t2t-s12-tau1e-4", "(4) with stage-2 τ 1e-4"),
        ("t2t-s12-tau1e-6", "(4) with stage-2 τ 1e-6"),
        ("t2t-s1-mean", "(5) Text2Token stage 1, mean pooling"),
        ("t2t-s1-bidir", "(5) Text2Token stage 1, mean pooling, bidirectional"),
        ("simcse", "(6) SimCSE alone (bidirectional, mean)"),
        ("llm2vec", "(7) LLM2Vec-unsupervised (MNTP → SimCSE)"),
        ("t2t-s1-long", "(3) at twice the budget"),
        ("llm2vec-long", "(7) at twice the budget"),
        ("llm2vec-long-mntp", "(7) at twice the budget, MNTP only (before SimCSE)"),
        ("tfidf", "TF-IDF (lexical floor)"),
        ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2 (supervised ceiling)")]


def goals(summary: dict) -> list[str]:
    """The issue's goals, each read off the summary: met, missed (with the numbers), or not measured yet."""
    def overall(arm):
        return summary[arm]["overall"] if arm in summary else (None, None)

    def beyond_spread(diff: float, spreads: tuple) -> tuple[str, str]:
        """(verdict, how the spread reads): a difference counts only beyond the seed spread of both arms, which
        needs at least two seeds of each."""
        if any(s is None for s in spreads):
            return ("not established (one seed)" if diff > 0 else "missed"), "one seed, no spread yet"
        margin = max(spreads)
        verdict = "met" if diff > margin else ("within the seed spread" if diff >= -margin else "missed")
        return verdict, f"larger seed spread {margin:.2f}"

    lines = []
    t2t = [(arm, *overall(arm)) for arm in ("t2t-s1", "t2t-s12") if overall(arm)[0] is not None]
    llm2vec, llm2vec_spread = overall("llm2vec")
    if t2t and llm2vec is not None:
        arm, mean, spread = max(t2t, key=lambda r: r[1])
        verdict, spread_text = beyond_spread(mean - llm2vec, (spread, llm2vec_spread))
        lines.append(f"- Text2Token (best: {arm}) {mean:.2f} vs LLM2Vec-unsupervised {llm2vec:.2f} on the six-task "
                     f"mean; difference {mean - llm2vec:+.2f}, {spread_text}: **{verdict}**.")
    else:
        lines.append("- Text2Token vs LLM2Vec-unsupervised on the six-task mean: not measured yet.")
    s1 = summary.get("t2t-s1", {}).get("tasks", {}).get("STSBenchmark", (None, None))[0]
    free = summary.get("prompteol-untrained", {}).get("tasks", {}).get("STSBenchmark", (None, None))[0]
    if s1 is not None and free is not None:
        lines.append(f"- Text2Token stage 1 on STSBenchmark {s1:.2f} vs the training-free PromptEOL {free:.2f}: "
                     f"{s1 - free:+.2f} points (goal +3): **{'met' if s1 - free >= 3 else 'missed'}**.")
    else:
        lines.append("- Text2Token stage 1 vs training-free PromptEOL on STSBenchmark: not measured yet.")
    (s12, s12_spread), (s1_mean, s1_spread) = overall("t2t-s12"), overall("t2t-s1")
    if s12 is not None and s1_mean is not None:
        verdict, spread_text = beyond_spread(s12 - s1_mean, (s12_spread, s1_spread))
        lines.append(f"- Stage 2 on top of stage 1, six-task mean: {s12:.2f} vs {s1_mean:.2f} ({s12 - s1_mean:+.2f}, "
                     f"{spread_text}): **{verdict}**.")
    else:
        lines.append("- Stage 2 adds to stage 1: not measured yet.")
    return lines


def timings(state: dict) -> list[str]:
    rows = ["| run | stage | steps | seconds | load (1/5/15 min) before → after |", "|---|---|---:|---:|---|"]
    for key, v in state.items():
        if key.startswith("seconds/"):
            _, run, stage = key.split("/")
            rows.append(f"| {run} | {stage} | {v['steps']} | {v['seconds']:.0f} | {v['load_before']} → "
                        f"{v['load_after']} |")
    for key, v in state.items():
        if key.startswith("targets_seconds/"):
            rows.append(f"| {key.split('/')[1]} | stage-2 targets | — | {v['seconds']:.0f} | {v['load_before']} → "
                        f"{v['load_after']} |")
    return rows


def write_results(out_dir: Path, table: dict, alignment: dict, state: dict, meta: dict) -> None:
    table = relative_paths(table)
    summary = summarise(table, alignment, ARMS)
    categories = list(dict.fromkeys(t["category"] for t in table["tasks"]))
    tasks = [t["name"] for t in table["tasks"]]
    done = {m["name"] for m in table["models"]}
    missing = [n for n in meta["planned"] if n not in done]
    steps, long = meta["steps"], meta["steps_long"]
    per_step = {k.split("/")[1]: v for k, v in state.items() if k.startswith("seconds_per_step/")}
    lines = [
        "# Study v2: Text2Token vs LLM2Vec-unsupervised from the same pretrained SmolLM2-135M", "",
        "Reproduce: `.venv/bin/python bench/quality/smollm2/run_study.py` (resumable; its last run took "
        f"{meta['session_minutes']:.0f} min). Generated by bench/quality/smollm2/report.py; the discussion is "
        "bench/quality/smollm2/DISCUSSION.md.", "",
        "## Setup", "",
        "- Backbone: SmolLM2-135M-Instruct (the packaged Q4_1 GGUF, dequantised to fp32), the same start for every "
        "arm. Every trained arm trains LoRA adapters (r 16, alpha 32, dropout 0.05, every decoder projection; "
        "merged at export), DeepSpeed ZeRO-3 on 2 CPU ranks × 16 texts of at most 64 tokens, fp32 (this CPU has no "
        "native bf16).",
        f"- Corpus: `{meta['corpus']}`, the first {meta['texts']} sentences; the next {meta['heldout']} are held out "
        "for token alignment.",
        f"- Budget: {meta['minutes']:g} min of training per arm, turned into steps by a timing probe per objective "
        "(s/step: " + ", ".join(f"{k} {v:.1f}" for k, v in per_step.items()) + f"): Text2Token {steps['t2t']} steps; "
        f"(4) = (3)'s checkpoint at step {steps['t2t_stage1_part']} + {steps['t2t_stage2']} stage-2 steps (computing "
        f"its targets is timed apart, below); SimCSE {steps['simcse']} steps; LLM2Vec {steps['llm2vec_each']} MNTP + "
        f"{steps['llm2vec_each']} SimCSE steps. Twice the budget: Text2Token {long['t2t']}, LLM2Vec "
        f"{long['llm2vec_each']} + {long['llm2vec_each']}.",
        "- Settings: Text2Token as bench/quality/smollm2/text2token.yaml (lr 5e-5, τ 1e-5 for stage 2); LLM2Vec as "
        "recipes/llm2vec.yaml (MNTP lr 5e-5, mask `_` with probability 0.2; SimCSE lr 3e-5, dropout 0.3, τ 0.05).",
        f"- Evaluation: STSBenchmark and BIOSSES in full; the other four tasks on a seeded sample of {meta['eval_cap']} "
        "rows per split (cost: about 23 texts/s per model on 2 cores). Seeds: "
        f"{', '.join(map(str, meta['seeds']))} for (3), (4), (7); one for the others. `m [s]`: mean over seeds "
        "[spread, max − min].", "",
        "## Progress", "",
        f"Measured {len(done - {'tfidf', 'all-MiniLM-L6-v2'})} of the {len(meta['planned'])} planned models."
        + (f" Not yet run: {', '.join(missing)}." if missing else " Every planned arm is in."), "",
        "## Goals (measured, not promised)", "", *goals(summary), "",
        "## Summary", "",
        "| arm | " + " | ".join(categories) + " | mean (task) | hit@10 |", "|---|" + "---:|" * (len(categories) + 2)]
    for arm, label in arms_in(table, ARMS):
        s = summary[arm]
        lines.append(f"| {label} | " + " | ".join(_cell(*s["categories"][c]) for c in categories)
                     + f" | {_cell(*s['overall'])} | {_cell(*s['hit@10'], scale=100)} |")
    lines += ["", "hit@10 (x100): share of held-out sentences where one of the embedding's 10 most probable LM-head "
              "tokens is one of the sentence's own content tokens.", "", "![scores](scores.png)", "",
              "## Per task (mean over seeds [spread])", "",
              "| arm | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for arm, label in arms_in(table, ARMS):
        lines.append(f"| {label} | " + " | ".join(_cell(*summary[arm]["tasks"][t]) for t in tasks) + " |")
    lines += ["", "## Measured wall times", "", *timings(state)]
    discussion = out_dir / "DISCUSSION.md"
    if discussion.exists():
        lines += ["", discussion.read_text().strip()]
    lines += ["", "## Every model", "", to_markdown(table)]
    (out_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(
        dict(meta=meta, state=state, summary=summary, table=table, alignment=alignment), indent=2) + "\n")
    plot(summary, out_dir / "scores.png", title="Study v2 on SmolLM2-135M: category means")


if __name__ == "__main__":
    saved = json.loads((HERE / "results.json").read_text())
    write_results(HERE, saved["table"], saved["alignment"], saved["state"], saved["meta"])
    print(f"wrote {HERE / 'RESULTS.md'}")
