"""The time model of `t2t plan`, and the plan of a whole recipe (`make_plan`): per stage, training and targets;
then evaluation.

Time: training FLOPs per token 6 N + 12 L S d_attn (N = decoder-layer matmul parameters; the embedding
is a lookup and the LM head runs once per text: 6 |V| d per text); forward-only passes 2 N + 4 L S d_attn.
Freezing the embeddings changes no term that matters: N never held them, and a frozen head saves only its
weight-gradient matmul, 2 |V| d per text against 6 N S per text, so the 6 |V| d stays (an upper bound).
Throughput = GPUs x peak x MFU. ZeRO-3 moves (2 bytes in bf16) x (W-1)/W x (2 x params + trainable params)
per GPU per micro-step (every parameter all-gathered forward and backward, only trainable gradients
reduce-scattered); a step takes the longer of compute and communication.

Stages: the recipe's `stages` in order, each timed the same way: its training (steps x global batch texts)
and its targets. A target kind that runs the model (`runs_model` in t2t.targets.kinds, e.g. model-derived)
costs (corpus passes + 1) forward passes with the LM head per text of the stage's corpus; any other kind is
CPU tokenization, not timed. The total is every stage's training and model-run targets plus one evaluation per
model `t2t pipeline` evaluates (its eval step): the start model (base) and each stage's export.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from t2t.config import Config, StageConfig
from t2t.errors import UserError
from t2t.plan.memory import (CHARS_PER_TOKEN, USABLE_GPU_FRACTION, Arch, ZeroSettings, load_arch, memory_plan,
                             read_ds_config)
from t2t.run_paths import corpus_of, texts_limit
from t2t.targets.kinds import TARGET_KINDS


# --------------------------------------------------------------------------- time


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_mem_gib: float = 80.0
    gpu_tflops: float = 989.0
    mfu: float = 0.4
    link_gbps: float | None = None

    def __post_init__(self):
        for name, value in (("--nodes", self.nodes), ("--gpus-per-node", self.gpus_per_node)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("--gpu-mem", self.gpu_mem_gib), ("--gpu-tflops", self.gpu_tflops),
                            ("--link-gbps", self.link_gbps if self.link_gbps is not None else 1.0)):
            if not value > 0:
                raise UserError(f"{name} must be positive, got {value}")
        if not 0 < self.mfu <= 1:
            raise UserError(f"--mfu must be in (0, 1], got {self.mfu}")

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def link(self) -> float:
        """Gbit/s per GPU of the slowest link a collective crosses: InfiniBand NDR across nodes, NVLink 4 within."""
        if self.link_gbps is not None:
            return self.link_gbps
        return 400.0 if self.nodes > 1 else 3600.0

    @property
    def flops(self) -> float:
        """Sustained FLOP/s of the whole allocation."""
        return self.world * self.gpu_tflops * 1e12 * self.mfu


def train_stage_time(arch: Arch, zero: ZeroSettings, cluster: Cluster, steps: int, micro_batch: int,
                     grad_accum: int, seq_len: int, train_embeddings: bool = False) -> dict:
    global_batch = micro_batch * grad_accum * cluster.world
    step_flops = global_batch * (3 * seq_len * arch.forward_flops_per_token(seq_len) + 3 * arch.head_flops_per_text)
    compute = step_flops / cluster.flops
    # Every parameter is gathered for forward and backward; only trainable gradients are reduce-scattered.
    moved = 2 * arch.n_params + arch.n_trainable(train_embeddings)
    comm_bytes = grad_accum * zero.param_bytes * moved * (cluster.world - 1) / cluster.world
    comm = comm_bytes * 8 / (cluster.link * 1e9)
    step = max(compute, comm)
    return {"steps": steps, "global_batch": global_batch, "step_compute_s": compute, "step_comm_s": comm,
            "bound": "compute" if compute >= comm else "communication", "seconds": steps * step,
            "tokens_per_s": global_batch * seq_len / step}


def forward_time(arch: Arch, cluster: Cluster, groups: list[tuple[float, int]], with_head: bool) -> float:
    """Seconds of forward passes over (texts, tokens per text) groups on the whole allocation."""
    flops = sum(n * (t * arch.forward_flops_per_token(t) + (arch.head_flops_per_text if with_head else 0))
                for n, t in groups)
    return flops / cluster.flops


def mteb_text_groups(cfg: Config, tokens_of) -> tuple[list[dict], list[str]]:
    """Texts mteb encodes for the recipe's evaluation, from the descriptive statistics mteb ships.

    Every `*_statistics` block with a total and an average length is one group of texts (queries,
    documents, sentence pairs ...) of the evaluated splits and subsets. Classification train samples
    (at most 8 per label x 10 experiments) are not counted.
    """
    import mteb

    if cfg.eval.benchmark:
        try:
            tasks = list(mteb.get_benchmark(cfg.eval.benchmark).tasks)
        except Exception as e:
            raise UserError(f"eval.benchmark {cfg.eval.benchmark!r} is not an mteb benchmark: {e}") from None
    else:
        tasks = []
        for name in cfg.eval.tasks:
            try:
                tasks.append(mteb.get_task(name))
            except Exception:
                tasks.append(name)
    rows, missing = [], []
    for task in tasks:
        stats = None if isinstance(task, str) else task.metadata.descriptive_stats
        if not stats:
            missing.append(task if isinstance(task, str) else task.metadata.name)
            continue
        texts = chars = tokens = 0.0
        for split in task.eval_splits:
            s = stats.get(split, {})
            per_subset = s.get("hf_subset_descriptive_stats", {})
            parts = [per_subset[x] for x in task.hf_subsets if x in per_subset] or [s]
            for part in parts:
                for group in part.values():
                    if isinstance(group, dict) and group.get("average_text_length"):
                        n = group["total_text_length"] / group["average_text_length"]
                        texts, chars = texts + n, chars + group["total_text_length"]
                        tokens += n * tokens_of(group["average_text_length"])
        rows.append({"task": task.metadata.name, "texts": round(texts), "chars": int(chars), "tokens": tokens})
    return rows, missing


def count_corpus(path: str, limit: int) -> int | None:
    """Texts in a corpus, or None when it is not on this machine."""
    from t2t.data.corpus import iter_texts

    if not path or not Path(path).exists():
        return None
    return sum(1 for _ in iter_texts(path, limit=limit))


def stage_targets_time(cfg: Config, stage: StageConfig, arch: Arch, cluster: Cluster, seq_len: int,
                       training_texts: int, given_texts: int | None = None) -> dict:
    """What a stage's targets cost. A kind whose workers run the start model: forward passes with the LM head,
    one per corpus pass (e.g. model-derived's background θ) plus the targets pass, over the stage's texts: given
    (`--stage-texts`), else counted in its corpus when present, else its text cap, else the texts its training
    reads. Any other kind: CPU tokenization of the texts its training reads (no GPU time modelled)."""
    kind = TARGET_KINDS[stage.targets.kind]
    if not kind.runs_model:
        return {"runs_model": False, "texts": training_texts, "texts_source": "texts the stage's training reads",
                "passes": None, "pass_names": [p.name for p in kind.corpus_passes(stage.targets)],
                "seconds": None, "what": "CPU tokenization"}
    corpus, limit = corpus_of(cfg, stage.name), texts_limit(cfg, stage.name)
    if given_texts is not None:
        texts, source = given_texts, "--stage-texts"
    elif (counted := count_corpus(corpus, limit)) is not None:
        texts, source = counted, f"counted in {corpus}"
    elif limit:
        texts, source = limit, f"stages.{stage.name}.targets.max_texts or data.max_texts"
    else:
        texts, source = training_texts, f"{corpus or 'the corpus'} is absent: texts the stage's training reads"
    pass_names = [p.name for p in kind.corpus_passes(stage.targets)]
    passes = len(pass_names) + 1
    return {"runs_model": True, "texts": texts, "texts_source": source, "passes": passes,
            "pass_names": pass_names + ["targets"],
            "seconds": forward_time(arch, cluster, [(passes * texts, seq_len)], with_head=True),
            "what": "forward passes of the start model with the LM head"}


def make_plan(cfg: Config, cluster: Cluster, recipe: str = "", tokens_per_text: int | None = None,
              stage_texts: dict[str, int] | None = None, with_eval: bool = True) -> dict:
    """The whole plan as plain data (what `--json` prints). `stage_texts`: texts of a stage's targets by stage
    name (`--stage-texts NAME=N`), for stages whose target kind runs the model."""
    t = cfg.train
    if t.lora is not None:
        raise UserError("t2t plan models full-parameter training; this recipe sets train.lora")
    for s in cfg.stages:
        if s.objective.name != "t2t":
            raise UserError(f"t2t plan models the t2t objective; this recipe sets "
                            f"stages.{s.name}.objective.name={s.objective.name}")
    if tokens_per_text is not None and tokens_per_text < 1:
        raise UserError(f"--tokens-per-text must be at least 1, got {tokens_per_text}")
    stage_texts = dict(stage_texts or {})
    for name, n in stage_texts.items():
        if name not in cfg.stage_names:
            raise UserError(f"--stage-texts {name}={n}: no stage {name!r} in this recipe "
                            f"(stages: {', '.join(cfg.stage_names)})")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"--stage-texts {name}={n}: the texts must be an integer >= 0")
        kind = cfg.stage(name).targets.kind
        if not TARGET_KINDS[kind].runs_model:
            raise UserError(f"--stage-texts {name}={n}: stage {name}'s targets ({kind}) do not run the model; "
                            "t2t plan counts them as CPU tokenization of the texts its training reads")
    arch = load_arch(cfg.model)
    zero = read_ds_config(cfg.train.ds_config)
    seq = tokens_per_text or cfg.model.max_length
    memory = memory_plan(arch, zero, cluster.world, cluster.gpus_per_node, t.micro_batch_size, seq,
                         cluster.gpu_mem_gib, t.train_embeddings)
    # Target actors and eval workers each hold the whole model on one GPU, in model.dtype, without ZeRO.
    memory["inference_weights"] = arch.n_params * (4 if cfg.model.dtype == "float32" else 2)

    stages = []
    for s in cfg.stages:
        train = train_stage_time(arch, zero, cluster, s.steps, t.micro_batch_size, t.grad_accum_steps, seq,
                                 t.train_embeddings)
        targets = stage_targets_time(cfg, s, arch, cluster, seq, train["steps"] * train["global_batch"],
                                     stage_texts.get(s.name))
        stages.append({"name": s.name, "start": s.start, "objective": s.objective.name, "kind": s.targets.kind,
                       "train": train, "targets": targets})

    prompt_chars = len(cfg.model.template.replace("{text}", ""))

    def tokens_of(chars: float) -> int:  # prompt and BOS included, truncated like the embedder does
        return min(math.ceil((chars + prompt_chars) / CHARS_PER_TOKEN) + 1, cfg.model.max_length)

    evaluation = None
    evaluated = ["base", *cfg.stage_names]  # what t2t.pipeline's eval step evaluates: M0 and every stage's export
    if with_eval:
        rows, missing = mteb_text_groups(cfg, tokens_of)
        # Per task, the mean tokens per text: exact for the 2N term, the attention term uses the mean length.
        groups = [(r["texts"], r["tokens"] / r["texts"]) for r in rows if r["texts"]]
        evaluation = {
            "benchmark": cfg.eval.benchmark or ", ".join(cfg.eval.tasks), "tasks": len(rows),
            "texts": sum(r["texts"] for r in rows), "tokens": sum(r["tokens"] for r in rows),
            "seconds": forward_time(arch, cluster, groups, with_head=False),  # per model
            "models": evaluated, "evaluations": len(evaluated),
            "not_counted": missing, "per_task": rows,
        }
    total = sum(s["train"]["seconds"] + (s["targets"]["seconds"] or 0) for s in stages) \
        + (evaluation["evaluations"] * evaluation["seconds"] if evaluation else 0)
    cpu_targets = [s["name"] for s in stages if not s["targets"]["runs_model"]]
    trainable = arch.n_trainable(t.train_embeddings)
    return {
        "recipe": recipe, "arch": asdict(arch) | {"n_params": arch.n_params, "matmul_params": arch.matmul_params},
        "params": {"total": arch.n_params, "trainable": trainable, "frozen": arch.n_params - trainable,
                   "frozen_what": "" if t.train_embeddings else
                   "tied input embeddings / LM head" if arch.tie_word_embeddings else "input embeddings, LM head",
                   "train_embeddings": t.train_embeddings},
        "zero": asdict(zero), "cluster": asdict(cluster) | {"world": cluster.world, "link_gbps": cluster.link},
        "batch": {"micro_batch": t.micro_batch_size, "grad_accum": t.grad_accum_steps,
                  "global_batch": t.micro_batch_size * t.grad_accum_steps * cluster.world, "tokens_per_text": seq,
                  "tokens_per_text_source": "--tokens-per-text" if tokens_per_text else
                  "model.max_length, the padded upper bound"},
        "memory": memory,
        "time": {"train_flops_per_token": 3 * arch.forward_flops_per_token(seq),
                 "stages": stages,
                 "eval": evaluation,
                 "total": total},
        "assumptions": [
            f"MFU {cluster.mfu:g} of {cluster.gpu_tflops:g} TFLOP/s per GPU for training and forward passes",
            f"{cluster.link:g} Gbit/s per GPU for ZeRO-3 collectives; a step takes max(compute, communication)",
            f"a plan fits when its peak is at most {USABLE_GPU_FRACTION:.0%} of --gpu-mem",
            f"MTEB texts from mteb's descriptive statistics; {CHARS_PER_TOKEN:g} characters per token plus the "
            f"prompt and BOS, truncated at model.max_length; encoder compute only (mteb's scoring not counted)",
            "targets that run the model: one forward pass with the LM head per text for each corpus pass and for "
            "the targets themselves",
        ] + ([f"targets of {', '.join(cpu_targets)} are CPU tokenization (no GPU time modelled)"]
             if cpu_targets else []),
    }
