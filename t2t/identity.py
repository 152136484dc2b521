"""What decides how a text becomes a vector: one value, written and compared in one way (no torch).

An `EmbeddingIdentity` is the prompt, pooling, attention mode, max length, padding side and compute
dtype of an embedding. Three consumers store or compare it, each over its own fields:

- the exported model's `t2t_config.json` (`t2t.model.io.export` / `load`): the five fields without
  `dtype` (`as_dict(with_dtype=False)`); an export's weights are fp32 whatever dtype it was trained in,
  and whoever loads it picks the compute dtype;
- a stage-2 shard manifest, `params["embedding"]` (`t2t.precompute`): all six fields (`as_dict()`),
  recording how the frozen model that derived the targets embedded;
- the check of such a manifest against the training model (`t2t.data.shards.check_manifest`): the
  `TARGET_FIELDS` only (pooling, prompt, attention, max_length), which must equal how the student
  embeds. `padding_side` and `dtype` are recorded but not compared: pooling reads the same positions on
  either padding side, and a target derived in bf16 is still a target for an fp32 student.

    EmbeddingIdentity.of(cfg.model).as_dict()                      # the manifest's params["embedding"]
    EmbeddingIdentity.from_dict(manifest["params"]["embedding"]).differences(
        EmbeddingIdentity.of(cfg.model), fields=EmbeddingIdentity.TARGET_FIELDS)   # [] when they fit
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Protocol

from t2t.errors import UserError


class ModelSettings(Protocol):
    """What an identity is read from: a recipe's `model:` section (`t2t.config.ModelConfig`, a layer above this
    one, which is why it is not imported here)."""

    pooling: str
    template: str
    attention: str
    max_length: int
    padding_side: str
    dtype: str


@dataclass(frozen=True)
class EmbeddingIdentity:
    """How a text becomes a vector. Field order is the key order of every file it is written to."""

    pooling: str = "mean"
    """A registered pooling mode: `mean`, `last`, `eos` or `echo` (`t2t.pooling`)."""
    prompt: str = "{text}"
    """The template the text is put into, with `{text}`."""
    attention: str = "causal"
    """`causal` or `bidirectional`."""
    max_length: int = 128
    """Tokens per text, prompt included; longer texts are truncated."""
    padding_side: str = "left"
    """The side the tokenizer pads on."""
    dtype: str = "float32"
    """The compute dtype asked for (t2t.dtypes.usable_dtype may still fall back to float32 on a CPU
    without bf16); not saved in `t2t_config.json`."""

    TARGET_FIELDS: ClassVar[tuple[str, ...]] = ("pooling", "prompt", "attention", "max_length")
    """The fields stage-2 targets must share with the model trained on them (the manifest check)."""
    OPTIONAL_FIELDS: ClassVar[tuple[str, ...]] = ("padding_side", "dtype")
    """Fields older files may lack; `from_dict` gives them their defaults."""

    @classmethod
    def of(cls, model_cfg: ModelSettings) -> "EmbeddingIdentity":
        """The identity a recipe's model section asks for (the prompt is the template in effect)."""
        return cls(pooling=model_cfg.pooling, prompt=model_cfg.template, attention=model_cfg.attention,
                   max_length=model_cfg.max_length, padding_side=model_cfg.padding_side, dtype=model_cfg.dtype)

    @classmethod
    def from_dict(cls, d: dict) -> "EmbeddingIdentity":
        """Read a stored identity (t2t_config.json, a manifest's params["embedding"]). A missing `padding_side`
        or `dtype` takes its default; a missing other field or an unknown key is a UserError."""
        if not isinstance(d, dict):
            raise UserError(f"an embedding identity must be a JSON object, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        missing = [n for n in names if n not in d and n not in cls.OPTIONAL_FIELDS]
        if unknown or missing:
            problems = ([f"unknown keys {', '.join(unknown)}"] if unknown else []) + \
                       ([f"missing keys {', '.join(missing)}"] if missing else [])
            raise UserError("invalid embedding identity: " + "; ".join(problems))
        return cls(**d)

    def as_dict(self, with_dtype: bool = True) -> dict:
        """The fields in their order; `with_dtype=False` for `t2t_config.json` (the five keys it has always had)."""
        d = dict(pooling=self.pooling, prompt=self.prompt, attention=self.attention, max_length=self.max_length,
                 padding_side=self.padding_side)
        if with_dtype:
            d["dtype"] = self.dtype
        return d

    def differences(self, other: "EmbeddingIdentity", fields: tuple[str, ...] | None = None) -> list[str]:
        """How `other` differs from this one, a line per field (`"pooling: 'mean' -> 'last'"`), over `fields`
        (default all) in field order; empty when they agree."""
        names = [f.name for f in dataclasses.fields(self)]
        if fields is not None:
            unknown = sorted(set(fields) - set(names))
            assert not unknown, f"no such fields: {unknown}"
            names = [n for n in names if n in fields]
        return [f"{n}: {getattr(self, n)!r} -> {getattr(other, n)!r}"
                for n in names if getattr(self, n) != getattr(other, n)]
