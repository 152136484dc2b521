"""Recipes and overrides of the layout before stages were a list keep working, translated.

Before, a recipe had exactly Text2Token's two stages, spread over the sections: `train.stage1` and
`train.stage2` (steps, lr, schedule), `train.objective` for both, `data.stage1_corpus`,
`data.stage2_corpus`, `data.stage2_max_texts`, and the kinds' parameters in `targets`
(stopwords, max_target_tokens, weighting for stage 1; tau, delta, top_k for stage 2). Each maps onto
the stage list one to one, so the translated recipe is the same run; a warning names the new key.
A recipe that mixes both layouts is refused, naming the key.
"""

from __future__ import annotations

import copy
import logging

from t2t.config.schema import StageConfig
from t2t.errors import ConfigError

log = logging.getLogger(__name__)

KIND_KEYS = {"data-driven": ("stopwords", "max_target_tokens", "weighting"),
             "model-derived": ("tau", "delta", "top_k")}
"""Old `targets.*` keys that are now parameters of a target kind, per kind."""
STAGE_SECTIONS = ("stage1", "stage2")
_warned: set[str] = set()


def _default_stages() -> list[dict]:
    """The old layout's fixed stages, with the old defaults (stage 2 trained 50 steps)."""
    return [dict(name="stage1", start="base", targets=dict(kind="data-driven")),
            dict(name="stage2", start="stage1", targets=dict(kind="model-derived"), steps=50)]


def _old_keys(raw: dict) -> list[str]:
    found = [f"train.{k}" for k in (*STAGE_SECTIONS, "objective") if k in (raw.get("train") or {})]
    found += [f"data.{k}" for k in ("stage1_corpus", "stage2_corpus", "stage2_max_texts") if k in (raw.get("data") or {})]
    found += [f"targets.{k}" for keys in KIND_KEYS.values() for k in keys if k in (raw.get("targets") or {})]
    return found


def _warn(old: str, new: str) -> None:
    if old not in _warned:
        _warned.add(old)
        log.warning("%s is the layout before stages were a list; read as %s", old, new)


def translate_recipe(raw: dict, source: str) -> dict:
    """`raw` in the stage-list layout (a translated copy if it used the old one)."""
    old = _old_keys(raw)
    if not old:
        return raw
    if "stages" in raw:
        raise ConfigError(f"{old[0]} belongs to the layout before stages were a list, and this recipe lists "
                          f"stages; move it into its stage (see `t2t config --explain stages`)")
    raw = copy.deepcopy(raw)
    raw["stages"] = _default_stages()
    items = [_flatten(k, raw) for k in old]
    if old[0] not in _warned:
        log.warning("%s uses the layout before stages were a list (%s); it is read as the equivalent stage list "
                    "(`t2t config --config %s` prints it)", source, ", ".join(old), source)
        _warned.update(old)
    for old_key, value in items:
        for new_key in _new_keys(raw, old_key):
            _set(raw, new_key, value)
    return raw


def translate_override(raw: dict, item: str) -> list[str]:
    """An override in the new layout's keys (several when an old key now lives in several stages)."""
    if "=" not in item:
        return [item]
    dotted, value = item.split("=", 1)
    key = dotted.strip()
    section, _, rest = key.partition(".")
    head = rest.split(".")[0]
    is_old = ((section == "train" and head in (*STAGE_SECTIONS, "objective"))
              or (section == "data" and head in ("stage1_corpus", "stage2_corpus", "stage2_max_texts"))
              or (section == "targets" and any(head in keys for keys in KIND_KEYS.values())))
    if not is_old:
        return [item]
    if "stages" not in raw:
        raw["stages"] = _default_stages()
    new_keys = _new_keys(raw, key)
    if not new_keys:  # a kind parameter, and no stage of that kind: say so rather than drop the override
        names = [str(s.get("name")) for s in raw["stages"] if isinstance(s, dict)]
        raise ConfigError(f"override {item!r}: {key} is the layout before stages were a list, and no stage has "
                          f"targets it applies to (stages: {', '.join(names)}); set stages.NAME.targets.{head}")
    for new in new_keys:
        _warn(key, new)
    return [f"{new}={value}" for new in new_keys]


def _flatten(old_key: str, raw: dict):
    section, name = old_key.split(".")
    return old_key, raw[section].pop(name)


def _new_keys(raw: dict, old_key: str) -> list[str]:
    """Where an old key lives now (`stages.NAME.rest`, or `data.corpus`)."""
    section, _, rest = old_key.partition(".")
    head, _, tail = rest.partition(".")
    names = [s.get("name") for s in raw["stages"] if isinstance(s, dict)]
    if section == "train" and head in STAGE_SECTIONS:
        return [f"stages.{head}" + (f".{tail}" if tail else "")]
    if section == "train":  # objective: every stage
        return [f"stages.{n}.objective" for n in names]
    if section == "data":
        return {"stage1_corpus": ["data.corpus"], "stage2_corpus": ["stages.stage2.targets.corpus"],
                "stage2_max_texts": ["stages.stage2.targets.max_texts"]}[head]
    kinds = [kind for kind, keys in KIND_KEYS.items() if head in keys]
    return [f"stages.{s['name']}.targets.{head}" for s in raw["stages"]  # no `targets:`: the default kind
            if isinstance(s, dict) and (s.get("targets") or {"kind": StageConfig().targets.kind}).get("kind") in kinds]


def _set(raw: dict, key: str, value) -> None:
    """Set `key` (`data.x` or `stages.NAME.a.b`) in `raw`; a whole section value (`train.stage1: {...}`) is merged."""
    parts = key.split(".")
    if parts[0] == "stages":
        node = next(s for s in raw["stages"] if s.get("name") == parts[1])
        parts = parts[2:]
    else:
        node = raw
    if not parts:  # `train.stage1: {steps: .., lr: ..}` as a whole
        if not isinstance(value, dict):
            raise ConfigError(f"train.{key.split('.')[1]} must be a mapping, got {type(value).__name__}")
        node.update(value)
        return
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
