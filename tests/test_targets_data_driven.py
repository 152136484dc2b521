"""Stage-1 (data-driven) targets: golden targets for both tokenizer styles, dropped tokens, IDF weighting."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import processors

from t2t.config import DataDrivenTargets
from t2t.model import load_tokenizer
from t2t.targets.data_driven import DataDrivenBuilder, clean_text, droppable_ids, idf_weights, stopword_list
from t2t.errors import UserError

SENTENCES = [
    "The cat sat on the mat.",
    "Hello, world!! It's 1999 -- x_y",
    "And then, there were none!",
    "Café naïve résumé",
    "data data DATA",
]

# The tokens of each target, worked out from the cleaned text and each tiny tokenizer's pieces:
# "Hello world s 1999 x y" tokenizes to [H, ell, o, Ġworld, Ġs, Ġ199, 9, Ġ, x, Ġy]; the lone
# whitespace piece `Ġ` / `▁` is dropped, and so is the SentencePiece `<unk>` for "ï".
GOLDEN = {
    "bytelevel": [
        {"c", "at", "Ġs", "Ġm"},
        {"H", "ell", "o", "Ġworld", "Ġs", "Ġ199", "9", "x", "Ġy"},
        set(),
        {"C", "a", "f", "Ã", "©", "Ġn", "¯", "ve", "Ġr", "s", "um"},
        {"d", "at", "a", "Ġd", "ĠD", "A", "T"},
    ],
    "sentencepiece": [
        {"▁c", "at", "▁s", "▁m"},
        {"▁H", "ell", "o", "▁world", "▁s", "▁199", "9", "x", "▁y"},
        set(),
        {"▁C", "a", "f", "é", "▁n", "ve", "▁r", "s", "um"},
        {"▁d", "at", "a", "▁D", "A", "T"},
    ],
}


def test_the_stopword_list_is_scikit_learns_without_importing_it():
    """Read from sklearn's source as a literal (a process that only checks a job's params skips sklearn's 1.5 s
    import): the same words as sklearn's own constant."""
    import subprocess
    import sys

    probe = ("import sys; from t2t.targets.data_driven import stopword_list; words = stopword_list('sklearn-english'); "
             "print(len(words), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["318", "False"]
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    assert stopword_list("sklearn-english") == frozenset(w.lower() for w in ENGLISH_STOP_WORDS)


def test_clean_text_drops_punctuation_underscores_and_stopwords():
    words = stopword_list("sklearn-english")
    assert len(words) > 300 and {"the", "and", "it", "none"} <= words
    assert clean_text("The cat -- sat_on  THE mat!!", words) == "cat sat mat"
    assert clean_text("And then, there were none!", words) == ""
    assert clean_text("Café naïve", words) == "Café naïve"  # Unicode word characters survive
    assert clean_text("The cat", stopword_list("none")) == "The cat"
    with pytest.raises(UserError, match="unknown stopword list"):
        stopword_list("french")


@pytest.mark.parametrize("style", ["bytelevel", "sentencepiece"])
def test_golden_stage1_targets(style, request):
    model_dir = request.getfixturevalue("tiny_model_dir" if style == "bytelevel" else "tiny_sp_model_dir")
    tok = load_tokenizer(model_dir)
    builder = DataDrivenBuilder(tok, DataDrivenTargets(), len(tok))
    batch, truncated = builder.targets(SENTENCES)
    assert truncated == 0 and len(batch) == len(SENTENCES)
    whitespace = "Ġ" if style == "bytelevel" else "▁"
    assert whitespace in tok("world s 1999 x y", add_special_tokens=False).tokens()  # it does occur ...
    for i, expected in enumerate(GOLDEN[style]):
        ids, w = batch[i]
        assert set(tok.convert_ids_to_tokens(ids.tolist())) == expected, SENTENCES[i]
        assert ids.dtype == np.int32 and w.dtype == np.float16 and np.all(np.diff(ids) > 0)
        if expected:
            np.testing.assert_allclose(w.astype(np.float64), 1 / len(expected), rtol=1e-3)
        assert whitespace not in tok.convert_ids_to_tokens(ids.tolist())  # ... and is dropped
    assert batch.empty_count == 1


def test_special_and_whitespace_tokens_are_dropped_llama3_style(tiny_model_dir):
    """A Llama-3-like BOS (a special token added past the base vocabulary) and every
    whitespace-only token are in the drop mask, whatever their spelling."""
    tok = load_tokenizer(tiny_model_dir)
    plain = DataDrivenBuilder(tok, DataDrivenTargets(), len(tok)).targets(SENTENCES)[0]
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>"})
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    assert bos == len(tok) - 1 and tok("cat").input_ids[0] == bos
    drop = droppable_ids(tok)
    assert drop[bos] and drop[tok.convert_tokens_to_ids("<pad>")] and drop[tok.convert_tokens_to_ids("<s>")]
    for token in ("Ġ", "Ċ", "ĉ"):  # space, newline, tab in byte-level spelling
        assert drop[tok.convert_tokens_to_ids(token)], token
    assert not drop[tok.convert_tokens_to_ids("at")]
    llama3 = DataDrivenBuilder(tok, DataDrivenTargets(), len(tok)).targets(SENTENCES)[0]
    np.testing.assert_array_equal(llama3.ids, plain.ids)
    assert bos not in llama3.ids


def test_truncation_at_max_target_tokens_is_counted(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    builder = DataDrivenBuilder(tok, DataDrivenTargets(max_target_tokens=4), len(tok))
    ids, truncated = builder.token_ids(["Photosynthesis converts light energy", "cat"])
    assert truncated == 1
    first_four = tok("Photosynthesis converts light energy", add_special_tokens=False).input_ids[:4]
    assert ids[0] == sorted(set(first_four))


def test_idf_weighting_follows_document_frequency(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    builder = DataDrivenBuilder(tok, DataDrivenTargets(weighting="idf"), len(tok))
    texts = ["cat sat", "cat mat", "cat", "dog"]
    df, n = builder.document_frequency(texts)
    rows, _ = builder.token_ids(texts)
    expected_df = np.zeros(len(tok), dtype=np.int64)
    for row in rows:
        expected_df[row] += 1
    np.testing.assert_array_equal(df, expected_df)
    idf = idf_weights(df, n)
    np.testing.assert_allclose(idf[rows[0]], np.log(5 / (1 + df[rows[0]])) + 1)
    batch, _ = builder.targets(texts, idf)
    ids, w = batch[0]
    np.testing.assert_allclose(w.astype(np.float64), idf[ids] / idf[ids].sum(), rtol=1e-3)
    assert w[list(ids).index(rows[2][0])] < w.max()  # "cat" is in 3 of 4 texts: below the rarer tokens
    with pytest.raises(ValueError, match="idf"):
        builder.targets(texts)


def test_tokenizer_larger_than_lm_head_is_refused(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(UserError, match="LM head"):
        DataDrivenBuilder(tok, DataDrivenTargets(), len(tok) - 1)
