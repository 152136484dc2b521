"""Loading backbones and exported embedders, and exporting them for sentence-transformers.

An exported directory is an ordinary Hugging Face causal-LM directory plus:
- `t2t_config.json`: pooling, prompt, attention mode, max length, padding side (the
  `t2t.identity.EmbeddingIdentity` without its compute dtype: exported weights are fp32);
- sentence-transformers files. When the embedding is expressible with sentence-transformers'
  own modules (causal attention, no prompt, mean or last-token pooling) they are a
  `Transformer` + `Pooling` pair, and `SentenceTransformer(dir)` needs nothing else.
  Otherwise (a prompt with a suffix, bidirectional attention, `eos` or `echo` pooling) the single module
  is `t2t.model.st_module.T2TModule`, loaded with `SentenceTransformer(dir, trust_remote_code=True)`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from t2t.config import ModelConfig
from t2t.data.files import replace_dir, temp_name
from t2t.data.tokens import load_tokenizer, tokenizer_fingerprint  # noqa: F401 - re-exported (t2t.model.io.*)
from t2t.dtypes import DTYPES, usable_dtype
from t2t.errors import UserError
from t2t.identity import EmbeddingIdentity
from t2t.model.embedder import Embedder
from t2t.model.files import T2T_CONFIG, check_model_dir  # noqa: F401 - check_model_dir: re-exported
from t2t.pooling import pooling_mode

def resolve_model_dir(m: ModelConfig) -> Path:
    """The backbone directory of a model config, building the tiny model or converting the GGUF first if configured."""
    if m.tiny is not None:
        from t2t.model.tiny import build_tiny

        build_tiny(m.tiny, m.path)
    if m.gguf:
        from t2t.model.gguf import convert

        convert(m.gguf, m.path)
    return check_model_dir(m.path)


def load_lm(path: str | Path, dtype: str = "float32"):
    """The Hugging Face causal LM in `path` (SDPA attention), its weights in `dtype` (see `usable_dtype`)."""
    check_model_dir(path)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[usable_dtype(dtype)],
                                                attn_implementation="sdpa")


def from_config(m: ModelConfig, dtype: str | None = None) -> Embedder:
    """An Embedder for a recipe's model section (building or converting the backbone if needed), in `m.dtype`
    unless `dtype` is given (exports are made in float32)."""
    path = resolve_model_dir(m)
    identity = EmbeddingIdentity.of(m)
    if dtype is not None:
        identity = dataclasses.replace(identity, dtype=dtype)
    return Embedder(load_lm(path, identity.dtype), load_tokenizer(path, identity.padding_side), identity)


def no_settings_error(p: Path) -> UserError:
    """What a plain Hugging Face directory (no t2t_config.json) loaded without a recipe's settings is told."""
    return UserError(f"model directory {p} has no {T2T_CONFIG} (not a `t2t export`): pass --config RECIPE to "
                     "embed it with the recipe's model settings (pooling, prompt, attention, max_length)")


def load(path: str | Path, dtype: str = "float32", settings: EmbeddingIdentity | None = None,
         **overrides) -> Embedder:
    """Load an embedder computing in `dtype`. An export's `t2t_config.json` decides pooling, prompt and attention;
    a plain Hugging Face directory without one (`t2t import`, a download) embeds with `settings`, a recipe's
    (`EmbeddingIdentity.of(cfg.model)`), and is a UserError without them."""
    p = check_model_dir(path)
    cfg_file = p / T2T_CONFIG
    if not cfg_file.is_file():
        if settings is None:
            raise no_settings_error(p)
        identity = dataclasses.replace(settings, dtype=dtype, **overrides)
        return Embedder(load_lm(p, identity.dtype), load_tokenizer(p, identity.padding_side), identity)
    try:
        saved = json.loads(cfg_file.read_text())
        if isinstance(saved, dict) and "dtype" in saved:  # not a saved field: the loader picks the compute dtype
            raise UserError("unknown key dtype")
        identity = EmbeddingIdentity.from_dict({**saved, "dtype": dtype, **overrides})
    except (json.JSONDecodeError, TypeError, UserError) as e:
        raise UserError(f"{cfg_file}: invalid t2t config ({e})") from None
    return Embedder(load_lm(p, identity.dtype), load_tokenizer(p, identity.padding_side), identity)


def standard_st_pooling(settings: EmbeddingIdentity) -> str | None:
    """The sentence-transformers pooling mode reproducing these settings, or None if none does."""
    if settings.attention != "causal" or settings.prompt != "{text}":
        return None
    return pooling_mode(settings.pooling).st_mode


def export(embedder: Embedder, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write an HF directory + tokenizer + t2t_config.json + sentence-transformers files, atomically.

    `state_dict` (consolidated fp32/bf16 weights from a ZeRO-3 checkpoint) replaces the module's own.
    """
    out = Path(out_dir)
    tmp = temp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        lm = embedder.lm
        is_causal = lm.config.is_causal
        lm.config.is_causal = True  # t2t_config.json carries the attention mode; keep config.json stock
        try:
            lm.save_pretrained(tmp, state_dict=state_dict)
        finally:
            lm.config.is_causal = is_causal
        embedder.tokenizer.save_pretrained(tmp)
        s = embedder.settings
        (tmp / T2T_CONFIG).write_text(json.dumps(s.as_dict(with_dtype=False), indent=2) + "\n")
        _write_st_files(tmp, s, lm.config.hidden_size)
        replace_dir(tmp, out)  # an existing export is removed only once this one is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_st_files(d: Path, s: EmbeddingIdentity, dim: int) -> None:
    mode = standard_st_pooling(s)
    if mode is None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "t2t.model.st_module.T2TModule"}]
    else:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
        ]
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": s.max_length,
                                                                  "do_lower_case": False}, indent=2))
        (d / "1_Pooling").mkdir()
        (d / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": dim,
                                                                  "pooling_mode": mode}, indent=2))
    (d / "modules.json").write_text(json.dumps(modules, indent=2))
    (d / "config_sentence_transformers.json").write_text(json.dumps(
        {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
         "similarity_fn_name": "cosine"}, indent=2))


def model_hidden_size(path: str | Path) -> int:
    return AutoConfig.from_pretrained(str(path)).hidden_size
