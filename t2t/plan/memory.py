"""The memory model of `t2t plan`: a backbone's architecture and a ZeRO-3 config → bytes per GPU (no weights).

The architecture comes from `<model.path>/config.json`, else `model.arch_config`, else `model.tiny`.
The ZeRO-3 settings (precision, buckets, persistence threshold, offload) come from the recipe's
`train.ds_config`, parsed with DeepSpeed's own config model so its defaults apply.

Trainable and frozen parameters: full-parameter training freezes the input embeddings and the LM head (one
tensor when tied) unless `train.train_embeddings` (t2t.train.engine.apply_trainable_policy). ZeRO-3 shards a
frozen parameter like any other but gives it no gradient, no fp32 master copy and no Adam state.

Memory, per GPU, W ranks, every parameter tensor of n elements sharded as ceil(n / W) (DeepSpeed's padding):
- model states: bf16 parameter shard (all parameters), parameters under the persistence threshold kept
  whole; of the trainable parameters only, the gradient shard (grad-accum dtype), fp32 master shard, Adam
  m and v (fp32) and, during the step, the fp32 gradient of one optimizer sub-group. tests/test_plan.py
  checks these against a real 2-rank ZeRO-3 run with the embeddings and head frozen.
- working set of forward/backward: the largest parameter tensor gathered plus one prefetch bucket, the
  largest trainable tensor's full gradient plus the reduce bucket; activations; the LM head's fp32 weight
  copy (`Fp32Head` casts W to fp32 and autograd keeps it for backward: the gradient of the pooled vector
  needs it even when the head is frozen); the fp32 logits (z, its softmax in backward, its grad).
- activations without recomputation, bf16, SDPA (no score matrix kept), Llama/Mistral/Qwen2 modules of the
  pinned transformers, per token and layer: two RMSNorms (fp32 input copy, fp32 rstd, bf16 normalised
  input and output), q, k, v (k, v repeated to all heads under a padding mask), attention output and its
  fp32 log-sum-exp, and four MLP tensors of width `intermediate_size`. tests/test_plan.py checks this
  against the bytes autograd saves on a tiny model.
Offload moves the optimizer states and gradients (and with params, the parameter shard) to CPU RAM.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from t2t.config import ModelConfig
from t2t.errors import UserError

GiB = 1024**3
CHARS_PER_TOKEN = 4.0
"""English text per token for 32k-128k BPE vocabularies; used only where token counts are unknown."""
USABLE_GPU_FRACTION = 0.9
"""Share of --gpu-mem a run may plan on; the rest is CUDA context and allocator fragmentation."""
QKV_BIAS = {"llama": False, "mistral": False, "qwen2": True}
"""Supported `model_type`s and whether their q/k/v projections carry a bias."""
MODES = ("no_offload", "offload_optimizer", "offload_optimizer_params")
ON_CPU = {  # which items each mode keeps in CPU RAM instead of GPU memory
    "no_offload": set(),
    "offload_optimizer": {"grads_shard", "fp32_master", "adam_m_v", "fp32_grads_step"},
    "offload_optimizer_params": {"grads_shard", "fp32_master", "adam_m_v", "fp32_grads_step", "params_shard"},
}
STEP_ITEMS = {"fp32_grads_step"}
WORKING_ITEMS = {"gathered_params", "module_grads", "activations", "lm_head_fp32", "logits"}


@dataclass(frozen=True)
class Arch:
    """The sizes of a Llama-family decoder, as in its Hugging Face config.json."""

    source: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool

    @classmethod
    def from_hf(cls, d: dict, source: str) -> Arch:
        model_type = d.get("model_type")
        if model_type not in QKV_BIAS:
            raise UserError(f"{source}: model_type {model_type!r} is not supported by t2t plan "
                             f"(supported: {', '.join(QKV_BIAS)})")

        def size(key: str, default: int | None = None) -> int:
            value = d.get(key, default)
            if value is None and default is not None:
                value = default
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{source}: {key} must be a positive integer, got {value!r}")
            return value

        hidden, heads = size("hidden_size"), size("num_attention_heads")
        return cls(source=source, model_type=model_type, hidden_size=hidden, num_layers=size("num_hidden_layers"),
                   num_heads=heads, num_kv_heads=size("num_key_value_heads", heads),
                   head_dim=size("head_dim", hidden // heads), intermediate_size=size("intermediate_size"),
                   vocab_size=size("vocab_size"), tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                   qkv_bias=QKV_BIAS[model_type] or bool(d.get("attention_bias", False)))

    def param_numels(self, embeddings: bool = True) -> list[int]:
        """Element count of every parameter tensor, in module order; without the input embeddings and the
        LM head when `embeddings` is false (what trains when they are frozen)."""
        d, q, kv, f = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        layer = [d * q, d * kv, d * kv, q * d, d * f, d * f, f * d, d, d] + ([q, kv, kv] if self.qkv_bias else [])
        body = layer * self.num_layers + [d]
        if not embeddings:
            return body
        head = [] if self.tie_word_embeddings else [self.vocab_size * d]
        return [self.vocab_size * d] + body + head

    @property
    def n_params(self) -> int:
        return sum(self.param_numels())

    def n_trainable(self, train_embeddings: bool) -> int:
        """Parameters full-parameter training updates: all, or all but the embeddings and head."""
        return sum(self.param_numels(embeddings=train_embeddings))

    @property
    def attn_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def matmul_params(self) -> int:
        """Parameters multiplied once per token: the decoder layers' projections."""
        d, q, kv = self.hidden_size, self.attn_width, self.num_kv_heads * self.head_dim
        return self.num_layers * (2 * d * q + 2 * d * kv + 3 * d * self.intermediate_size)

    def forward_flops_per_token(self, seq_len: int) -> float:
        """2 N for the projections plus 4 L S d_attn for QK^T and AV (causal masking not subtracted)."""
        return 2 * self.matmul_params + 4 * self.num_layers * seq_len * self.attn_width

    @property
    def head_flops_per_text(self) -> float:
        return 2 * self.vocab_size * self.hidden_size


def load_arch(m: ModelConfig) -> Arch:
    """The backbone's sizes: `<path>/config.json`, else `arch_config`, else the tiny model's spec."""
    candidates = [Path(m.path) / "config.json"] + ([Path(m.arch_config)] if m.arch_config else [])
    for p in candidates:
        if p.is_file():
            try:
                return Arch.from_hf(json.loads(p.read_text()), str(p))
            except json.JSONDecodeError as e:
                raise UserError(f"{p}: not valid JSON ({e})") from None
    if m.arch_config:
        raise UserError(f"model.arch_config {m.arch_config} does not exist")
    if m.tiny is not None:
        t = m.tiny
        return Arch("model.tiny (vocab: the tokenizer's target size)", "llama", t.hidden_size, t.num_layers,
                    t.num_heads, t.num_heads, t.hidden_size // t.num_heads, t.intermediate_size, t.vocab_size,
                    False, False)
    raise UserError(f"model.path {m.path} has no config.json and model.arch_config is not set: "
                     "t2t plan needs the backbone's sizes")


@dataclass(frozen=True)
class ZeroSettings:
    """What the memory model needs from a DeepSpeed JSON."""

    source: str
    param_bytes: int
    grad_bytes: int
    prefetch_bucket_size: int
    reduce_bucket_size: int
    param_persistence_threshold: int
    model_persistence_threshold: int
    sub_group_size: int
    offload_optimizer: bool
    offload_param: bool


def read_ds_config(path: str | Path) -> ZeroSettings:
    """Parse a ZeRO-3 DeepSpeed JSON with DeepSpeed's config model (its defaults fill what is unset)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from t2t.train.ds_config import resolve_ds_config_path

    p = resolve_ds_config_path(str(path))  # as training finds it: as given, else in t2t's own ds_configs/
    try:
        raw = json.loads(p.read_text())
        zero = DeepSpeedZeroConfig(**raw.get("zero_optimization", {}))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None
    except Exception as e:  # pydantic's ValidationError names the offending key
        raise UserError(f"{p}: invalid zero_optimization section: {e}") from None
    if int(zero.stage) != 3:
        raise UserError(f"{p}: zero_optimization.stage is {int(zero.stage)}; t2t plan models ZeRO stage 3")
    half = any(raw.get(k, {}).get("enabled", False) is True for k in ("bf16", "fp16", "bfloat16"))
    param_bytes = 2 if half else 4
    accum = raw.get("data_types", {}).get("grad_accum_dtype")
    grad_bytes = {None: param_bytes, "fp32": 4, "bf16": 2, "fp16": 2}.get(accum)
    if grad_bytes is None:
        raise UserError(f"{p}: data_types.grad_accum_dtype must be fp32, bf16 or fp16, got {accum!r}")
    return ZeroSettings(str(p), param_bytes, grad_bytes, int(zero.prefetch_bucket_size),
                        int(zero.reduce_bucket_size), int(zero.param_persistence_threshold),
                        int(zero.model_persistence_threshold), int(zero.sub_group_size),
                        _offloaded(zero.offload_optimizer, p, "offload_optimizer"),
                        _offloaded(zero.offload_param, p, "offload_param"))


def _offloaded(section, path: Path, key: str) -> bool:
    device = "none" if section is None else str(getattr(section.device, "value", section.device))
    if device not in ("none", "cpu"):
        raise UserError(f"{path}: zero_optimization.{key}.device={device} is not modelled by t2t plan (none or cpu)")
    return device == "cpu"


# --------------------------------------------------------------------------- memory


def activation_bytes(arch: Arch, batch: int, seq_len: int, compute_bytes: int = 2) -> int:
    """Bytes autograd keeps from forward to backward for one micro-batch (see the module docstring)."""
    h, c = arch.hidden_size, compute_bytes
    norm = 4 * h + 4 + 2 * c * h
    per_layer = 2 * norm + 4 * c * arch.attn_width + 4 * arch.num_heads + 4 * c * arch.intermediate_size
    per_model = 8 + norm + c * seq_len + c  # token ids, final norm, 4-D padding mask, pooling mask
    return batch * seq_len * (arch.num_layers * per_layer + per_model)


def state_items(arch: Arch, zero: ZeroSettings, world: int, batch: int, seq_len: int,
                train_embeddings: bool = False) -> dict[str, int]:
    """Bytes per rank of every memory item, wherever it lives. Gradients and optimizer states exist only for
    trainable parameters: without `train_embeddings` the embeddings and LM head are frozen."""
    numels = arch.param_numels()
    trainable = arch.param_numels(embeddings=train_embeddings)
    shard = sum(math.ceil(n / world) for n in numels)
    trainable_shard = sum(math.ceil(n / world) for n in trainable)
    persistent, kept = 0, 0
    for n in numels:  # DeepSpeed keeps small tensors whole, in module order, up to the model-wide cap
        if n <= zero.param_persistence_threshold and kept + n <= zero.model_persistence_threshold:
            persistent, kept = persistent + n, kept + n
    largest = max(numels)
    bp = zero.param_bytes
    return {
        "params_shard": bp * shard,
        "params_persistent": bp * persistent,
        "grads_shard": zero.grad_bytes * trainable_shard,
        "fp32_master": 4 * trainable_shard,
        "adam_m_v": 8 * trainable_shard,
        "fp32_grads_step": 4 * min(trainable_shard, zero.sub_group_size),
        "gathered_params": bp * (largest + zero.prefetch_bucket_size),
        "module_grads": bp * (max(trainable) + zero.reduce_bucket_size),
        "activations": activation_bytes(arch, batch, seq_len, bp),
        "lm_head_fp32": 4 * arch.vocab_size * arch.hidden_size,
        "logits": 3 * 4 * batch * arch.vocab_size,
    }


ITEM_LABELS = {
    "params_shard": "parameters, shard",
    "params_persistent": "parameters kept whole (small)",
    "grads_shard": "gradients, shard",
    "fp32_master": "fp32 master parameters, shard",
    "adam_m_v": "Adam m + v (fp32), shard",
    "fp32_grads_step": "fp32 gradients during the step",
    "gathered_params": "gathered parameters (largest + prefetch)",
    "module_grads": "full grads (largest trainable + bucket)",
    "activations": "activations",
    "lm_head_fp32": "LM head fp32 copy",
    "logits": "fp32 logits (z, softmax, grad)",
}


def memory_plan(arch: Arch, zero: ZeroSettings, world: int, gpus_per_node: int, batch: int, seq_len: int,
                gpu_mem_gib: float, train_embeddings: bool = False) -> dict:
    """Per GPU, for each offload mode: where each item lives, the peak, whether it fits, CPU RAM per node."""
    items = state_items(arch, zero, world, batch, seq_len, train_embeddings)
    out = {"items": items}
    for mode in MODES:
        cpu = ON_CPU[mode]
        gpu = {k: v for k, v in items.items() if k not in cpu}
        static = sum(v for k, v in gpu.items() if k not in STEP_ITEMS | WORKING_ITEMS)
        working = sum(v for k, v in gpu.items() if k in WORKING_ITEMS)
        step = sum(v for k, v in gpu.items() if k in STEP_ITEMS)
        peak = static + max(working, step)  # activations are freed before the optimizer step
        out[mode] = {
            "on_cpu": sorted(cpu),
            "gpu_peak": peak,
            "fits": peak <= USABLE_GPU_FRACTION * gpu_mem_gib * GiB,
            "cpu_per_node": gpus_per_node * sum(items[k] for k in cpu),
        }
    out["recipe_mode"] = ("offload_optimizer_params" if zero.offload_param else
                          "offload_optimizer" if zero.offload_optimizer else "no_offload")
    return out
