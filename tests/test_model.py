"""The embedding core: attention modes, pooling, encode, export round trips, bad input."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config, AutoModelForCausalLM

from t2t.data.tokens import tokenize_texts
from t2t.model import Embedder, EmbeddingIdentity, export, load, load_lm, load_tokenizer, pool, set_attention
from t2t.errors import UserError
from t2t.pooling import ECHO_PROMPT

FAMILIES = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
}


def tiny_family_model(name: str):
    cfg = FAMILIES[name](vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("padded", [False, True])
def test_attention_mode_controls_future_visibility(family, padded):
    lm = tiny_family_model(family)
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 10]])  # differ only in the last token
    mask = torch.ones_like(ids)
    if padded:  # a padding column exercises the mask path; without it the mask is elided
        ids = torch.cat([ids, torch.zeros(2, 1, dtype=torch.long)], 1)
        mask = torch.cat([mask, torch.zeros(2, 1, dtype=torch.long)], 1)

    def first_state(mode):
        set_attention(lm, mode)
        with torch.no_grad():
            return lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]

    causal = first_state("causal")
    assert torch.allclose(causal[0], causal[1], atol=1e-6)
    bidirectional = first_state("bidirectional")
    assert (bidirectional[0] - bidirectional[1]).abs().max() > 1e-4


def test_pooling_ignores_padding_either_side():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, right, "mean")[0], hidden[0, :2].mean(0))
    assert torch.equal(pool(hidden, right, "last")[0], hidden[0, 1])
    assert torch.equal(pool(hidden, left, "last")[0], hidden[0, 3])
    assert torch.equal(pool(hidden, left, "eos")[1], hidden[1, 3])


@pytest.mark.parametrize("pooling", ["mean", "last", "eos", "echo"])
def test_batch_independent_embeddings(tiny_model_dir, pooling):
    prompt = {"last": '"{text}" means:', "echo": ECHO_PROMPT}.get(pooling, "{text}")
    emb = Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), EmbeddingIdentity(pooling=pooling, prompt=prompt))
    texts = ["short", "a considerably longer sentence about the history of the city", "mid length text"]
    together = emb.encode(texts, batch_size=3)
    alone = np.stack([emb.encode([t])[0] for t in texts])
    assert np.abs(together - alone).max() < 1e-4  # left padding + RoPE: padding does not change a vector


def test_encode_order_normalize_empty_and_truncation(tiny_model_dir):
    emb = Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), EmbeddingIdentity(max_length=8))
    texts = ["one", "two words here and many more words after them", "three"]
    v = emb.encode(texts, batch_size=2, normalize=True)
    assert v.shape == (3, 64) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.allclose(v[1], emb.encode([texts[1]], normalize=True)[0], atol=1e-5)  # original order kept
    assert emb.truncated_texts >= 1
    assert emb.encode([]).shape == (0, 64)


def test_a_repeated_text_is_embedded_once_and_its_row_repeated(tiny_model_dir):
    """mteb's pair tasks repeat their first column (TwitterURLCorpus: 771 distinct of 9,334 rows)."""
    emb = Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), EmbeddingIdentity(max_length=8))
    seen = []
    tokenize = emb.tokenize
    emb.tokenize = lambda batch: seen.extend(batch) or tokenize(batch)
    texts = ["a lake", "the river flows", "a lake", "stone bridge", "the river flows", "a lake"]
    v = emb.encode(texts, batch_size=2)
    assert sorted(seen) == sorted({*texts}) and v.shape == (6, 64)
    assert np.array_equal(v[0], v[2]) and np.array_equal(v[0], v[5]) and np.array_equal(v[1], v[4])
    distinct = emb.encode(["a lake", "the river flows", "stone bridge"], batch_size=2)
    assert np.array_equal(v[[0, 1, 3]], distinct)  # the same batches as the distinct texts alone


def test_eos_pooling_keeps_eos_after_truncation(tiny_model_dir):
    emb = Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), EmbeddingIdentity(pooling="eos", max_length=8))
    batch = emb.tokenize(["a long text that is going to be cut short for sure", "hi"])
    last = batch["input_ids"][:, -1]  # left padding: the last column is the pooled one
    assert (last == emb.tokenizer.eos_token_id).all()


@pytest.mark.parametrize("tokenizer", ["tiny_model_dir", "tiny_sp_model_dir"])
def test_a_text_too_long_is_cut_inside_the_prompt(tokenizer, request):
    """PromptEOL pools the last token: the prompt after the text ("means in one word:") must survive the cut."""
    from t2t.pooling import PROMPT_EOL

    tok = load_tokenizer(request.getfixturevalue(tokenizer))
    limit = len(tok(PROMPT_EOL.replace("{text}", "a lake"))["input_ids"]) + 4
    settings = EmbeddingIdentity(pooling="last", prompt=PROMPT_EOL, max_length=limit)
    long_text = "the river flows past the old mill and under the stone bridge " * 4
    batch, cut = tokenize_texts(tok, settings, [long_text, "a lake"])
    assert cut == 1 and batch["input_ids"].shape[1] == limit
    full = tok(PROMPT_EOL.replace("{text}", long_text))["input_ids"]
    tail = tok(PROMPT_EOL.replace("{text}", "lake"))["input_ids"][-3:]  # '... one word:"'
    row = batch["input_ids"][0].tolist()
    assert row[-3:] == full[-3:] == tail and row[:8] == full[:8]  # the start of the text, the end of the prompt
    short, _ = tokenize_texts(tok, settings, ["a lake"])
    padded = batch["input_ids"][1][batch["attention_mask"][1].bool()]
    assert short["input_ids"][0].tolist() == padded.tolist()  # an uncut text is as it was
    mean, _ = tokenize_texts(tok, EmbeddingIdentity(pooling="mean", max_length=limit), [long_text])
    assert mean["input_ids"][0].tolist() == tok(long_text)["input_ids"][:limit]  # no tail: the plain head cut


ECHO_TEXTS = ["The cat sat on the mat.", "a", "Paris is the capital of France and a city"]


def pooled_text(tok, batch: dict, row: int) -> str:
    """The text the pool mask of `row` marks, decoded (a straddling token's prompt space stripped)."""
    return tok.decode(batch["input_ids"][row][batch["pool_mask"][row].bool()]).strip()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("tokenizer", ["tiny_model_dir", "tiny_sp_model_dir"])
def test_echo_pool_mask_marks_the_second_copy_only(tokenizer, side, request):
    tok = load_tokenizer(request.getfixturevalue(tokenizer), side)
    batch, cut = tokenize_texts(tok, EmbeddingIdentity(pooling="echo", prompt=ECHO_PROMPT, padding_side=side),
                                ECHO_TEXTS)
    assert cut == 0 and batch["pool_mask"].shape == batch["attention_mask"].shape
    for row, text in enumerate(ECHO_TEXTS):
        mask, real = batch["pool_mask"][row], batch["attention_mask"][row]
        assert pooled_text(tok, batch, row) == text
        assert (mask <= real).all()  # never on padding
        marked = mask.nonzero().flatten()
        assert (marked == torch.arange(marked[0], marked[-1] + 1)).all()  # one run of tokens
        first = int(marked[0])
        before = tok.decode(batch["input_ids"][row][:first][real[:first].bool()], skip_special_tokens=True)
        assert before.strip() == f"Rewrite the sentence: {text}, rewritten sentence:"  # the first copy is context
    plain, _ = tokenize_texts(tok, EmbeddingIdentity(padding_side=side), ECHO_TEXTS)
    assert set(plain) == {"input_ids", "attention_mask"}  # other modes' batches are as they were


@pytest.mark.parametrize("tokenizer", ["tiny_model_dir", "tiny_sp_model_dir"])
def test_echo_cuts_the_text_alike_in_both_copies(tokenizer, request):
    """A text too long is cut to its longest prefix (at a token end) with which the whole prompt fits; both copies
    hold that prefix. Checked against a linear search over every token end of the text."""
    tok = load_tokenizer(request.getfixturevalue(tokenizer))
    limit = len(tok(ECHO_PROMPT.replace("{text}", "a lake"))["input_ids"]) + 9
    settings = EmbeddingIdentity(pooling="echo", prompt=ECHO_PROMPT, max_length=limit)
    long_text = "the river flows past the old mill and under the stone bridge " * 4
    batch, cut = tokenize_texts(tok, settings, [long_text, "a lake"])
    assert cut == 1 and batch["input_ids"].shape[1] <= limit
    ends = [e for _, e in tok(long_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    fitting = [e for e in ends if len(tok(ECHO_PROMPT.replace("{text}", long_text[:e]))["input_ids"]) <= limit]
    prefix = long_text[:max(fitting)]
    assert len(prefix.split()) >= 3  # a real cut, not an empty text
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert row == tok(ECHO_PROMPT.replace("{text}", prefix))["input_ids"]  # the same prefix in both copies
    assert pooled_text(tok, batch, 0) == prefix.strip()

    with pytest.raises(UserError, match=r"^model\.max_length 8 is too short for the echo prompt .*: with an empty "
                                        r"text it is already \d+ tokens$"):
        tokenize_texts(tok, dataclasses.replace(settings, max_length=8), [long_text])


def test_echo_needs_a_fast_tokenizer():
    from types import SimpleNamespace

    with pytest.raises(UserError, match=r"echo pooling needs a fast tokenizer"):
        tokenize_texts(SimpleNamespace(is_fast=False), EmbeddingIdentity(pooling="echo", prompt=ECHO_PROMPT), ["a"])


def test_echo_embedding_is_the_mean_over_the_second_copy(tiny_model_dir):
    emb = Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir),
                   EmbeddingIdentity(pooling="echo", prompt=ECHO_PROMPT))
    batch = emb.tokenize(ECHO_TEXTS)
    with torch.no_grad():
        h, z = emb(**batch)
        hidden = emb.lm.get_decoder()(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).last_hidden_state
        with pytest.raises(ValueError, match="echo pooling needs the batch's pool_mask"):
            emb(batch["input_ids"], batch["attention_mask"])  # a caller that drops it is a bug, not mean pooling
    for row in range(len(ECHO_TEXTS)):
        manual = hidden[row][batch["pool_mask"][row].bool()].mean(0)
        torch.testing.assert_close(h[row], manual, atol=1e-5, rtol=1e-5)
    assert np.abs(emb.encode(ECHO_TEXTS) - h.numpy()).max() < 1e-5


def test_forward_logits_are_fp32_from_the_head(tiny_model_dir):
    lm = load_lm(tiny_model_dir, dtype="bfloat16")
    emb = Embedder(lm, load_tokenizer(tiny_model_dir), EmbeddingIdentity())
    batch = emb.tokenize(["hello world"])
    h, z = emb(**batch)
    assert z.dtype == torch.float32 and z.shape == (1, lm.config.vocab_size)
    ref = h.float() @ lm.get_output_embeddings().weight.float().T
    assert torch.allclose(z, ref, atol=1e-4)


@pytest.mark.parametrize(
    "settings,trust",
    [
        (EmbeddingIdentity(pooling="mean"), False),  # stock Transformer + Pooling modules
        (EmbeddingIdentity(pooling="last", prompt='This sentence : "{text}" means in one word:"'), True),
        (EmbeddingIdentity(pooling="mean", attention="bidirectional"), True),
        (EmbeddingIdentity(pooling="eos"), True),
        (EmbeddingIdentity(pooling="echo", prompt=ECHO_PROMPT), True),
    ],
)
def test_export_matches_sentence_transformers(tiny_model_dir, tmp_path, settings, trust):
    from sentence_transformers import SentenceTransformer

    emb = Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), settings)
    out = export(emb, tmp_path / "exported")
    assert json.loads((out / "t2t_config.json").read_text())["pooling"] == settings.pooling
    texts = ["The cat sat on the mat.", "Quantum chromodynamics", "a", "Paris is the capital of France and a city"]
    ours = load(out).encode(texts, batch_size=2)
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=trust)
    theirs = st.encode(texts, batch_size=2, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(ours - emb.encode(texts, batch_size=2)).max() < 1e-5


def test_missing_or_incomplete_model_dir(tmp_path):
    with pytest.raises(UserError, match=r"nowhere.*does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"half is incomplete: missing weights .*tokenizer"):
        load(tmp_path / "half")


def test_tokenizer_without_pad_gets_eos_once(tiny_model_dir, tmp_path, caplog):
    tok = load_tokenizer(tiny_model_dir)
    tok.pad_token = None
    d = tmp_path / "nopad"
    tok.save_pretrained(d)
    (d / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        t1 = load_tokenizer(d)
        load_tokenizer(d)
    assert t1.pad_token == t1.eos_token
    assert sum("no pad token" in r.message for r in caplog.records) == 1


def test_inspect_cli(tiny_model_dir, tmp_path, capsys):
    from t2t.cli import main

    out = export(Embedder(load_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), EmbeddingIdentity()), tmp_path / "m")
    assert main(["inspect", "--model", str(out), "--top-k", "3", "The history of Rome"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "The history of Rome" and len(lines) == 4
    probs = [float(l.split()[0]) for l in lines[1:]]
    assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
    assert main(["inspect", "--model", str(tmp_path / "nope"), "x"]) == 2
    assert "nope does not exist" in capsys.readouterr().err

    lm = load_lm(tiny_model_dir)
    with torch.no_grad():
        lm.model.norm.weight.fill_(float("nan"))  # what a diverged run exports
    broken = export(Embedder(lm, load_tokenizer(tiny_model_dir), EmbeddingIdentity()), tmp_path / "broken")
    assert main(["inspect", "--model", str(broken), "a", "b"]) == 1
    captured = capsys.readouterr()
    assert "NaN or infinite" in captured.out and "for 2 of 2 texts; it is not usable" in captured.err


def test_inspect_embeds_a_plain_hf_dir_as_the_recipe_says(tiny_model_dir, tmp_path, capsys):
    """A directory without t2t_config.json (`t2t import`, a Hugging Face download) gives with `--config R` (and its
    `--set`) the tokens of the export of R's base model; an export keeps its own settings; without a recipe a plain
    directory is refused in one line naming it, the missing t2t_config.json and --config."""
    from t2t.cli import main
    from t2t.config import load_config
    from t2t.model import from_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"model": {"path": str(tiny_model_dir), "pooling": "last", "max_length": 16}}))
    texts = ["The history of Rome", "a cat on a mat"]

    def inspect(model, *flags) -> str:
        assert main(["inspect", "--model", str(model), "--top-k", "5", *flags, *texts]) == 0
        return capsys.readouterr().out

    shown = {}
    for pooling in ("last", "mean"):
        overrides = [f"model.pooling={pooling}"]
        exported = export(from_config(load_config(recipe, overrides).model, dtype="float32"), tmp_path / pooling)
        shown[pooling] = inspect(tiny_model_dir, "--config", str(recipe), "--set", overrides[0])
        assert shown[pooling] == inspect(exported), pooling
    assert shown["last"] != shown["mean"]
    assert inspect(tmp_path / "mean", "--config", str(recipe)) == shown["mean"]  # not the recipe's last pooling

    assert main(["inspect", "--model", str(tiny_model_dir), "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(x in err for x in (str(tiny_model_dir), "t2t_config.json", "--config"))


def test_bf16_falls_back_to_fp32_once_without_cpu_support(tiny_model_dir, monkeypatch, caplog):
    import t2t.dtypes as dtypes
    import t2t.model.io as io

    monkeypatch.setattr(dtypes, "_said_once", set())
    monkeypatch.setattr(dtypes, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        assert dtypes.usable_dtype("bfloat16") == "float32" and dtypes.usable_dtype("bfloat16") == "float32"
        lm = io.load_lm(tiny_model_dir, "bfloat16")
    assert next(lm.parameters()).dtype == torch.float32
    assert sum("no native bf16" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("speedup, setting, expected", [
    (5.7, "auto", "bfloat16"),  # AMX
    (2.0, "", "bfloat16"),  # unset is auto
    (0.5, "auto", "float32"),  # AVX512-BF16 without AMX on a Xeon: half the fp32 rate
    (0.5, "on", "bfloat16"),
    (5.7, "off", "float32"),
])
def test_a_cpu_with_native_bf16_computes_in_it_only_where_it_measures_faster(monkeypatch, caplog, speedup, setting,
                                                                            expected):
    import t2t.dtypes as dtypes

    monkeypatch.setattr(dtypes, "_said_once", set())
    monkeypatch.setattr(dtypes.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dtypes, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(dtypes, "cpu_bf16_speedup", lambda: speedup)
    monkeypatch.setenv(dtypes.CPU_BF16_ENV, setting)
    with caplog.at_level("WARNING"):
        assert dtypes.usable_dtype("bfloat16") == expected and dtypes.usable_dtype("float32") == "float32"
    if expected == "float32":
        (line,) = [r.message for r in caplog.records]  # the reason, once
        assert ("0.50×" in line) if setting == "auto" else (f"{dtypes.CPU_BF16_ENV}=off" in line)


def test_a_bad_cpu_bf16_setting_is_a_user_error(monkeypatch):
    import t2t.dtypes as dtypes

    monkeypatch.setattr(dtypes.torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(dtypes.CPU_BF16_ENV, "yes")
    with pytest.raises(UserError, match="T2T_CPU_BF16 must be auto, on or off; got 'yes'"):
        dtypes.usable_dtype("bfloat16")


def test_the_bf16_speedup_is_a_measured_ratio():
    import t2t.dtypes as dtypes

    ratio = dtypes.cpu_bf16_speedup(n=128, repeats=1)
    assert 0 < ratio < 100 and ratio == dtypes.cpu_bf16_speedup(n=128, repeats=1)  # measured once per process


def test_bf16_head_cast_is_reused_out_of_autograd_and_follows_weight_changes(tiny_model_dir):
    from t2t.model.embedder import Fp32Head

    head = load_lm(tiny_model_dir).to(torch.bfloat16).get_output_embeddings()  # bf16 even where load_lm falls back
    head.__class__ = Fp32Head
    x = torch.randn(3, head.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        first = head.fp32_weight()
        assert head.fp32_weight() is first  # cached
        torch.testing.assert_close(head(x), x.float() @ head.weight.float().T)
    with torch.no_grad():
        head.weight.mul_(2)  # an in-place update bumps the version: the cache is dropped
        assert torch.equal(head.fp32_weight(), head.weight.float()) and head.fp32_weight() is not first
    assert head.fp32_weight().requires_grad  # with autograd on, a fresh cast that carries the gradient
