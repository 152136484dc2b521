"""Loading a recipe: YAML → overrides → typed `Config` → cross-field validation.

`load_config(path, overrides)` reads a YAML recipe, applies `--set key=value` overrides, builds the dataclasses
of `t2t.config.schema` type-checking every value, and validates the whole. Every error is a `ConfigError` naming
the key. A key of the layout before stages were a list (`OLD_LAYOUT`) is refused, naming where it lives now.

Overrides address a stage by its name: `--set stages.stage2.lr=1e-5`, `--set stages.stage1.targets.weighting=idf`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from t2t.config.schema import Config, StageConfig, field_type
from t2t.errors import ConfigError
from t2t.objectives import OBJECTIVES
from t2t.pooling import POOLINGS
from t2t.targets.kinds import TARGET_KINDS

STAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
"""A stage name is a directory name and an override path segment."""

OLD_LAYOUT = {"train.stage1": "stages.stage1", "train.stage2": "stages.stage2",
              "train.objective": "stages.<stage>.objective", "data.stage1_corpus": "data.corpus",
              "data.stage2_corpus": "stages.stage2.targets.corpus",
              "data.stage2_max_texts": "stages.stage2.targets.max_texts",
              **{f"targets.{k}": f"stages.<stage>.targets.{k}"  # the two kinds' parameters, then under `targets`
                 for k in ("stopwords", "max_target_tokens", "weighting", "tau", "delta", "top_k")}}
"""Keys of the layout before stages were a list → where each lives now. They are no longer read, and named
so rather than by the generic unknown-key error, whose did-you-mean would point at the wrong key."""


OLD_OBJECTIVE_KEYS = {"train.simcse_temperature": "stages.<stage>.objective.temperature",
                      "train.simcse_dropout": "stages.<stage>.objective.dropout",
                      "train.mntp_probability": "stages.<stage>.objective.probability",
                      "train.mntp_mask_token": "stages.<stage>.objective.mask_token"}
"""An objective's settings before each objective had its own section (`objective: {name: simcse, temperature: ...}`)
→ where each lives now; refused the same way."""


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
    try:
        check_old_layout(raw)
        for item in overrides:
            _apply_override(raw, item)
        cfg = from_dict(Config, raw, prefix="")
        derive_paths(cfg)
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def derive_paths(cfg: Config) -> None:
    """The recipe's own directories where it names none: `shards/<name>` and `<run_dir>/eval`."""
    cfg.data.shards_dir = cfg.data.shards_dir or f"shards/{cfg.name}"
    cfg.eval.out_dir = cfg.eval.out_dir or str(Path(cfg.run_dir) / "eval")


def check_old_layout(raw: dict, override: str | None = None) -> None:
    """Refuse a key of `OLD_LAYOUT` in the recipe `raw`, or in `override` (`key=value`), naming its new key."""
    for old, new in {**OLD_LAYOUT, **OLD_OBJECTIVE_KEYS}.items():
        section, _, name = old.partition(".")
        if override is not None:
            key = override.split("=", 1)[0].strip()
            if key != old and not key.startswith(old + "."):
                continue
            where, tail = f"override {override!r}: ", key[len(old):]  # train.stage2.lr → stages.stage2.lr
        elif isinstance(raw.get(section), dict) and name in raw[section]:
            value = raw[section][name]  # train.stage2: {steps, lr} → stages.stage2.steps/lr
            where, tail = "", "." + "/".join(map(str, value)) if isinstance(value, dict) and value else ""
        else:
            continue
        topic = ("stages.targets" if ".targets." in new else "stages.objective" if ".objective." in new
                 else "stages" if new.startswith("stages.") else new)
        era = "before objectives had their own sections" if old in OLD_OBJECTIVE_KEYS else "before stages were a list"
        raise ConfigError(f"{where}{old} is the layout {era}; use {new}{tail} (see t2t config --explain {topic})")


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    check_old_layout(raw, item)
    dotted, value = item.split("=", 1)
    keys = dotted.strip().split(".")
    node: Any = raw
    for i, k in enumerate(keys[:-1]):
        if k == "stages" and i == 0:
            node = _stage_node(raw, keys[1] if len(keys) > 2 else "", item)
            keys_left = keys[2:]
            defaults = {"targets": {"kind": StageConfig().targets.kind}, "objective": {"name": StageConfig().objective.name}}
            for kk in keys_left[:-1]:  # a stage without `targets:` or `objective:` has the default kind's
                node = node.setdefault(kk, dict(defaults.get(kk, {})))
                if not isinstance(node, dict):
                    raise ConfigError(f"override {item!r}: {kk} is not a section")
            node[keys_left[-1]] = _value(value)
            return
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {k} is not a section")
    node[keys[-1]] = _value(value)


def _value(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def _stage_node(raw: dict, name: str, item: str) -> dict:
    """The raw mapping of stage `name` (the default Text2Token stages when the recipe lists none)."""
    if "stages" not in raw:
        raw["stages"] = [dataclasses.asdict(s) for s in Config().stages]
    stages = raw["stages"]
    if not isinstance(stages, list):
        raise ConfigError(f"stages must be a list of stages, got {type(stages).__name__}")
    for stage in stages:
        if isinstance(stage, dict) and stage.get("name") == name:
            return stage
    names = [s.get("name") for s in stages if isinstance(s, dict)]
    raise ConfigError(f"override {item!r}: no stage named {name!r} (stages: {', '.join(map(str, names))}); "
                      "address one as stages.NAME.key=value")


def _stage_label(value: Any, index: int) -> str:
    return value["name"] if isinstance(value, dict) and isinstance(value.get("name"), str) else f"[{index}]"


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
    kind, arg = field_type(tp)
    if kind == "optional":
        return None if value is None else _coerce(arg, value, key)
    if kind == "named":  # the kind (targets) or name (objective) in it decides the fields
        return arg.build(value, from_dict, key)
    if kind == "section":
        return from_dict(arg, value if value is not None else {}, prefix=f"{key}.")
    if kind == "choice":
        if value not in arg:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, arg))}; got {value!r}")
        return value
    if kind == "list":
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        if arg is StageConfig:  # named by the stage, as overrides address them
            return [_coerce(StageConfig, v, f"{key}.{_stage_label(v, i)}") for i, v in enumerate(value)]
        return [_coerce(arg, v, f"{key}[{i}]") for i, v in enumerate(value)]
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
    if not isinstance(value, str):  # str: the last scalar type
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def validate(cfg: Config) -> None:
    """Cross-field checks; each error names the keys involved."""
    m = cfg.model
    if not m.path:
        raise ConfigError("model.path is required (a local model directory, or where to build model.tiny)")
    pooling = POOLINGS.get(m.pooling, "model.pooling")
    if "{text}" not in m.template:
        raise ConfigError(f"model.prompt must contain {{text}}; got {m.template!r}")
    copies = m.template.count("{text}")
    if pooling.text_copies is not None and copies != pooling.text_copies:
        raise ConfigError(f"model.prompt must contain {{text}} exactly {pooling.text_copies} times for "
                          f"model.pooling {m.pooling} (it pools over the last copy); got {copies} in {m.template!r}")
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
    for key, value in (
        ("targets.shard_size", cfg.targets.shard_size),
        ("targets.batch_size", cfg.targets.batch_size),
        ("train.micro_batch_size", cfg.train.micro_batch_size),
        ("train.grad_accum_steps", cfg.train.grad_accum_steps),
        ("train.save_every", cfg.train.save_every),
        ("train.keep_checkpoints", cfg.train.keep_checkpoints),
        ("eval.batch_size", cfg.eval.batch_size),
        ("data.length_group", cfg.data.length_group),
    ):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    seeds = [("seed", cfg.seed)] + ([("model.tiny.seed", m.tiny.seed)] if m.tiny is not None else [])
    for key, value in seeds:
        if not 0 <= value < 2 ** 32:  # numpy's and the loader workers' seeds take no more
            raise ConfigError(f"{key} must be an integer in [0, 2**32), got {value}")
    if cfg.data.max_texts < 0:
        raise ConfigError(f"data.max_texts must be >= 0 (0 = all texts), got {cfg.data.max_texts}")
    if cfg.train.stop_after_zero_grad_steps < 0:
        raise ConfigError(f"train.stop_after_zero_grad_steps must be >= 0 (0 = never), "
                          f"got {cfg.train.stop_after_zero_grad_steps}")
    if cfg.train.lora is not None and cfg.train.train_embeddings:
        raise ConfigError("train.train_embeddings applies to full-parameter training; with train.lora only the "
                          "adapters train")
    if not math.isfinite(cfg.train.peak_flops) or cfg.train.peak_flops < 0:
        raise ConfigError(f"train.peak_flops must be a finite number >= 0 (0 = measured), got {cfg.train.peak_flops}")
    for key, workers in (("targets.workers", cfg.targets.workers), ("eval.workers", cfg.eval.workers)):
        if workers < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = automatic), got {workers}")
    if cfg.train.nproc < 0:
        raise ConfigError(f"train.nproc must be >= 0 (0 = automatic), got {cfg.train.nproc}")
    if cfg.data.loader_workers < 0:
        raise ConfigError(f"data.loader_workers must be >= 0, got {cfg.data.loader_workers}")
    for key, value in (("train.grad_clip", cfg.train.grad_clip), ("train.weight_decay", cfg.train.weight_decay)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{key} must be a finite number >= 0, got {value}")
    if cfg.layout is not None:
        for key in ("nodes", "gpus_per_node"):
            if getattr(cfg.layout, key) < 1:
                raise ConfigError(f"layout.{key} must be at least 1 (the recipe's reference cluster), "
                                  f"got {getattr(cfg.layout, key)}")
    validate_stages(cfg)


def validate_stages(cfg: Config) -> None:
    """Names unique and usable as paths, each stage starting from `base` or an earlier stage, settings in range,
    each objective fitting the model (mntp, and a `sum` with it: bidirectional attention)."""
    if not cfg.stages:
        raise ConfigError("stages is empty; a recipe trains at least one stage")
    seen: list[str] = []
    for s in cfg.stages:
        key = f"stages.{s.name or '?'}"
        if not STAGE_NAME.match(s.name) or s.name == "base":
            raise ConfigError(f"{key}.name must be a name of letters, digits, - and _ (not 'base'), got {s.name!r}")
        if s.name in seen:
            raise ConfigError(f"stages: two stages are named {s.name!r}")
        if s.start != "base" and s.start not in seen:
            where = "a later stage" if s.start in cfg.stage_names else "no stage"
            raise ConfigError(f"{key}.start is {s.start!r}, {where}; a stage starts from base or an earlier stage "
                              f"({', '.join(['base', *seen])})")
        if s.steps < 0 or not math.isfinite(s.lr) or s.lr <= 0 or s.warmup_steps < 0:
            raise ConfigError(f"{key}: steps and warmup_steps must be >= 0 and lr a finite number > 0 "
                              f"(got steps={s.steps}, warmup_steps={s.warmup_steps}, lr={s.lr})")
        if s.schedule == "constant" and s.warmup_steps:
            raise ConfigError(f"{key}.warmup_steps is set but {key}.schedule is constant")
        if s.targets.max_texts < 0:
            raise ConfigError(f"{key}.targets.max_texts must be >= 0 (0 = data.max_texts), got {s.targets.max_texts}")
        TARGET_KINDS.get(s.targets.kind, f"{key}.targets.kind")  # spec_from checked it; a default-built spec is empty
        objective = OBJECTIVES.get(s.objective.name, f"{key}.objective.name")
        objective.validate(s.objective, f"{key}.objective")
        for field_name, needed in objective.needs(s.objective).items():
            if getattr(cfg.model, field_name) != needed:
                raise ConfigError(f"{key}.objective {s.objective.name} needs model.{field_name}={needed} "
                                  f"(it is {getattr(cfg.model, field_name)})")
        seen.append(s.name)


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


