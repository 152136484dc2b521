"""`t2t config`: print a recipe after overrides and validation (what a job will actually use), its
DeepSpeed JSON checked too; `t2t config --explain [SECTION]`: what every field means (type, default, docstring).

The explanation walks the dataclasses from `Config` (the docstrings are read by `t2t.config.field_docs`, each
type read as the recipe loader reads it: `t2t.config.schema.field_type`), so a field added to the schema shows up
here without touching this module; each field also says what changing it reruns (`t2t.fingerprints`).
`stages[].targets` shows the fields every target kind has, then each kind registered in
`t2t.targets.kinds.TARGET_KINDS` with its own parameters, and `stages[].objective` each objective registered in
`t2t.objectives.OBJECTIVES` with its own settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import shutil
import textwrap
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from t2t.commands import add_config_args, load_recipe
from t2t.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("config", help="print the validated recipe, or explain its fields (--explain)")
    add_config_args(p, required=False)
    p.add_argument("--explain", nargs="?", const="", default=None, metavar="SECTION",
                   help="print every recipe field with its type, default and meaning (no recipe needed); SECTION "
                        "narrows it: model, train.lora, stages, stages.targets, a target kind (model-derived), "
                        "or one field (model.pooling)")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.explain is not None:
        print(explain(args.explain), end="")
        return 0
    if not args.config:
        raise UserError("--config R is required (or --explain [SECTION] to read what the fields mean)")

    from t2t.config import to_dict
    from t2t.train.ds_config import build_ds_config

    cfg = load_recipe(args)
    build_ds_config(cfg)  # the DeepSpeed JSON exists, parses and has no "auto": a job would fail on it later
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


# --------------------------------------------------------------------------- --explain


@dataclass
class Entry:
    path: str
    """How the field is written: `model.pooling`, `stages[].lr`, `stages[].targets.tau`."""
    type: str
    default: str | None
    doc: str


@dataclass
class Section:
    key: str
    """What `--explain KEY` selects it by: `model`, `train.lora`, `stages.targets`, a kind name."""
    path: str
    """Its place in the tree (a kind's section lies under `stages.targets`), for prefix selection."""
    title: str
    doc: str
    entries: list[Entry] = field(default_factory=list)


def sections() -> list[Section]:
    """Every section of a recipe, in the order `Config` declares them, nested ones right after their parent."""
    from t2t.config import Config

    out: list[Section] = []
    _walk(Config, "", "", out, top=True)
    return out


def _walk(cls: type, path: str, shown: str, out: list[Section], top: bool = False,
          lead: Entry | None = None) -> None:
    """Add the section of dataclass `cls` at `path` (written `shown`: `stages[]` for list items) and those below;
    `lead` is the entry of the field that holds them, when it belongs with them (`stages`)."""
    from t2t.config import StageConfig, field_docs
    from t2t.config.schema import NAMED_SECTIONS, field_type

    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    section = Section(key=path or "top level", path=path, title=path or "top level", doc=_doc(cls),
                      entries=[lead] if lead else [])
    out.append(section)
    below: list[tuple[type, str, str, Entry | None]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        nested = _dataclass_of(tp)
        fpath = f"{path}.{f.name}" if path else f.name
        fshown = f"{shown}.{f.name}" if shown else f.name
        entry = Entry(fshown, _type_text(tp, cls, f.name), _default_text(f), docs.get(f.name, ""))
        if top and nested is not None and _default(f) is not None:  # model, data, ...: a section of their own
            below.append((nested, fpath, fshown, None))
        elif field_type(tp) == ("list", StageConfig):  # stages: the list's items
            below.append((StageConfig, fpath, f"{fshown}[]", entry))
        else:  # a value, or a section that may be absent (model.tiny, train.lora): a field here, fields below
            section.entries.append(entry)
            if nested is not None and nested not in NAMED_SECTIONS:
                below.append((nested, fpath, fshown, None))
    for sub_cls, sub_path, sub_shown, sub_lead in below:
        _walk(sub_cls, sub_path, sub_shown, out, lead=sub_lead)
    if cls is StageConfig:
        for base, named in NAMED_SECTIONS.items():
            _walk_named(base, named, path, shown, out)


def _walk_named(base: type, named, stage_path: str, stage_shown: str, out: list[Section]) -> None:
    """A stage's section typed by a name (`targets` by its kind, `objective` by its name; `named` is its
    `t2t.config.schema.NamedSection`): the fields every entry has, then each registered entry with its own."""
    from t2t.config import field_docs

    field_name, key, registry = named.field, named.key, named.registry
    path, shown = f"{stage_path}.{field_name}", f"{stage_shown}.{field_name}"
    common = Section(key=path, path=path, title=f"{path} (every {key})", doc=_doc(base))
    docs = field_docs(base)
    hints = typing.get_type_hints(base)
    for f in dataclasses.fields(base):
        common.entries.append(Entry(f"{shown}.{f.name}", _type_text(hints[f.name], base, f.name),
                                    _default_text(f), docs.get(f.name, "")))
    out.append(common)
    shared = {f.name for f in dataclasses.fields(base)}
    for name, entry in registry.items():
        spec = entry.spec
        section = Section(key=name, path=f"{path}.{name}", title=f"{path} with {key}: {name}",
                          doc=_doc(spec) + f"\nA stage's `{field_name}:` with `{key}: {name}` takes the fields of "
                                           f"every {key} and these.")
        docs = field_docs(spec)
        hints = typing.get_type_hints(spec)
        for f in dataclasses.fields(spec):
            if f.name not in shared:
                section.entries.append(Entry(f"{shown}.{f.name}", _type_text(hints[f.name], spec, f.name),
                                             _default_text(f), docs.get(f.name, "")))
                section.entries += _item_entries(hints[f.name], f"{shown}.{f.name}[]")
        out.append(section)


def _item_entries(tp: Any, shown: str) -> list[Entry]:
    """The fields of the mappings a list field holds, one entry each (`stages[].objective.parts[].weight`); none for a
    list of values."""
    from t2t.config import field_docs
    from t2t.config.schema import field_type

    kind, item = field_type(tp)
    if kind != "list" or not dataclasses.is_dataclass(item):
        return []
    docs, hints = field_docs(item), typing.get_type_hints(item)
    return [Entry(f"{shown}.{f.name}", _type_text(hints[f.name], item, f.name), _default_text(f), docs.get(f.name, ""))
            for f in dataclasses.fields(item)]


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (`X` or `X | None`), or None."""
    from t2t.config.schema import field_type

    kind, arg = field_type(tp)
    if kind == "optional":
        return _dataclass_of(arg)
    return arg if kind == "section" else None


def _type_text(tp: Any, owner: type, name: str) -> str:
    from t2t.config import ModelConfig, StageConfig
    from t2t.config.schema import NAMED_SECTIONS, field_type
    from t2t.pooling import POOLINGS

    for base, named in NAMED_SECTIONS.items():
        if name == named.key and isinstance(owner, type) and issubclass(owner, base):
            return " | ".join(named.registry)  # a name of a registry: the names registered now
    if (owner, name) == (ModelConfig, "pooling"):
        return " | ".join(POOLINGS)
    kind, arg = field_type(tp)
    if kind == "optional":
        return _type_text(arg, owner, name) + " | null"
    if kind == "named":
        return f"mapping typed by its {arg.key} ({' | '.join(arg.registry)})"
    if kind == "section":
        return "section (below)"
    if kind == "choice":
        return " | ".join(map(str, arg))
    if kind == "list":
        if arg is StageConfig:
            return "list of stages"
        if dataclasses.is_dataclass(arg):
            return "list of mappings (fields below)"
        return f"list of {_type_text(arg, owner, name)}"
    return arg.__name__


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _default_text(f: dataclasses.Field) -> str | None:
    from t2t.config import StageConfig
    from t2t.config.schema import NAMED_SECTIONS

    value = _default(f)
    if value == "" and f.name == "kind":  # TargetsSpec.kind: every `targets:` names one
        return None
    for base, named in NAMED_SECTIONS.items():
        if isinstance(value, base):
            return f"{{{named.key}: {getattr(value, named.key)}}}"
    if isinstance(value, list) and value and isinstance(value[0], StageConfig):
        return "[" + ", ".join(f"{s.name} ({s.targets.kind}, from {s.start})" for s in value) + "]"
    if dataclasses.is_dataclass(value):
        return None  # a section: its fields say
    return json.dumps(value)


def _doc(cls: type) -> str:
    return inspect.cleandoc(cls.__doc__ or "")


def _wrap(text: str, indent: str, width: int) -> str:
    """Reflow a docstring (paragraphs kept) at `width`, never breaking a word or a `code` span's hyphen."""
    paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n")]
    return "\n".join(textwrap.fill(p, width=width, initial_indent=indent, subsequent_indent=indent,
                                   break_long_words=False, break_on_hyphens=False) for p in paragraphs if p)


def _render(section: Section, entries: list[Entry], width: int) -> str:
    from t2t.fingerprints import CHANGING, role_of

    lines = [f"== {section.title} ==", _wrap(section.doc, "", width), ""]
    if section.path.endswith("stages"):
        lines[1] += ("\n" + _wrap("A list; `stages[].X` is a field of each stage. An override addresses a stage by "
                                  "its name: `--set stages.NAME.X=value`.", "", width))
    for e in entries:
        lines.append(f"{e.path}: {e.type}" + (f" = {e.default}" if e.default is not None else
                                              "" if e.type.startswith("section") else " (required)"))
        if e.doc:
            lines.append(_wrap(e.doc, "    ", width))
        role = role_of(e.path)
        if role is not None:  # t2t/fingerprints.py: what a change does to a run that already ran
            lines.append(_wrap(f"Changing it {CHANGING[role]}.", "    ", width))
    return "\n".join(lines) + "\n"


def set_form_key(key: str) -> str:
    """A key as `--set` writes it, with its stage's name (`stages.stage1.lr`), as --explain names the field
    (`stages.lr`)."""
    from t2t.config import StageConfig

    parts = key.split(".")
    if len(parts) >= 3 and parts[0] == "stages" and parts[1] not in {f.name for f in dataclasses.fields(StageConfig)}:
        return ".".join([parts[0], *parts[2:]])
    return key


def explain(which: str = "") -> str:
    """The text of `t2t config --explain [which]`."""
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 100))
    all_sections = sections()
    key = which.strip().replace("[]", "")
    if not key:
        return "\n".join(_render(s, s.entries, width) for s in all_sections)
    chosen = [s for s in all_sections if key in (s.key, s.path) or s.path.startswith(key + ".")]
    if chosen:
        return "\n".join(_render(s, s.entries, width) for s in chosen)
    for field_key in (key, set_form_key(key), f"stages.{key}"):  # one field: `model.pooling`, `stages.lr`, `seed`
        for s in all_sections:
            hits = [e for e in s.entries if e.path.replace("[]", "") == field_key]
            if hits:
                return _render(s, hits, width)
    valid = [s.key for s in all_sections if s.key != "top level"]
    near = difflib.get_close_matches(key, valid, n=1)
    raise UserError(f"--explain {which}: no such section" + (f"; did you mean {near[0]}?" if near else "")
                    + f"; valid sections: {', '.join(valid)} (or one field, e.g. model.pooling)")
