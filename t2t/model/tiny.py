"""Tiny randomly initialised Llama-architecture backbones with tokenizers trained in-process.

Tests and the demo need a real model without any hub download. `build_tiny(spec, path)`
trains a BPE tokenizer on a local corpus in one of the two common styles, builds a
`LlamaForCausalLM` from a fixed seed and saves both as an ordinary Hugging Face directory,
so everything downstream loads it exactly like a 7B checkpoint.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from t2t.config import TinyModelConfig
from t2t.data.corpus import iter_texts
from t2t.data.files import replace_dir, temp_name
from t2t.errors import UserError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def train_tokenizer(texts, style: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer in `bytelevel` (`Ġ`, GPT-2/Llama-3) or `sentencepiece` (`▁`, Llama-2/Mistral) style."""
    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        alphabet = []
    else:
        raise UserError(f"unknown tokenizer style {style!r}; use bytelevel or sentencepiece")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Prepend BOS like Llama tokenizers do, so even an empty text has one real position.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny(spec: TinyModelConfig, path: str | Path) -> Path:
    """Create the tiny model directory at `path` (atomically) unless it is already there."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{path} holds files but no config.json: not a model directory; remove it or choose "
                        f"another model.path for the tiny model")
    log.info("building tiny Llama (%s tokenizer, vocab %d) at %s", spec.tokenizer_style, spec.vocab_size, path)
    texts = itertools.islice((r.text for r in iter_texts(spec.tokenizer_corpus)), spec.tokenizer_train_texts)
    tokenizer = train_tokenizer(texts, spec.tokenizer_style, spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    tmp = temp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (path / "config.json").exists():  # else another process built the same model meanwhile
            replace_dir(tmp, path)  # a crash never leaves a half-written model directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
