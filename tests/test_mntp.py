"""The `mntp` objective (LLM2Vec's masked next-token prediction): its loss against a direct computation, its masks
(deterministic under a seed, independent of how a global batch is split and padded, fresh per epoch), and its
bad input. Exactness under ranks × micro-steps is in test_train_sharding.py, exact resume in test_train_run.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2t.config import ConfigError, load_config
from t2t.errors import UserError
from t2t.objectives import MNTPObjective
from t2t.train.loss import objective_for
from t2t.train.mntp import IGNORE, mask_tokens, selected_tokens

TEXTS = ["The river flows through the old town and into the sea.", "A short one.",
         "Mountains rise above the valley where the village lies, quiet in the morning light.",
         "Rain fell all night."]


def bidirectional(model_dir, *extra):
    from t2t.model import from_config

    cfg = load_config(None, [f"model.path={model_dir}", "model.attention=bidirectional", *extra])
    return cfg, from_config(cfg.model)


def prepared(objective, embedder, texts, keys=None, epochs=None):
    batch = embedder.tokenize(texts)
    batch.update(keys=keys or [f"k{i}" for i in range(len(texts))], epochs=epochs or [0] * len(texts))
    return objective.prepare_batch(batch)


def test_the_loss_is_the_cross_entropy_at_the_masked_positions_from_the_position_before(tiny_model_dir):
    cfg, embedder = bidirectional(tiny_model_dir)
    objective = objective_for(MNTPObjective(), seed=3)
    objective.prepare(embedder)
    batch = prepared(objective, embedder, TEXTS)
    with torch.no_grad():
        parts = objective.loss(embedder, batch)
        # The reference: every position's logits from the full causal-LM output, shifted by one.
        logits = embedder.lm(input_ids=batch["mntp_input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        reference = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["mntp_labels"][:, 1:].reshape(-1),
                                    ignore_index=IGNORE, reduction="sum")
    assert parts.count == selected_tokens(batch) > 0
    assert parts.total.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-6)


def test_masks_follow_llm2vec_and_depend_on_seed_key_and_epoch_only(tiny_model_dir):
    cfg, embedder = bidirectional(tiny_model_dir)
    objective = objective_for(MNTPObjective(), seed=0)
    objective.prepare(embedder)
    mask_id = embedder.tokenizer.convert_tokens_to_ids("_")
    texts = TEXTS * 50
    keys = [f"k{i}" for i in range(len(texts))]
    batch = prepared(objective, embedder, texts, keys)
    labels, inputs, ids = batch["mntp_labels"], batch["mntp_input_ids"], batch["input_ids"]
    real = batch["attention_mask"].bool()
    chosen = labels != IGNORE
    assert (labels[chosen] == ids[chosen]).all() and not (chosen & ~real).any()
    assert (inputs[~chosen] == ids[~chosen]).all()  # nothing but the selected tokens changes
    first = real.int().argmax(dim=1)  # left padding: the first real position of each row
    assert not chosen[torch.arange(len(texts)), first].any()  # the first token has no position before it
    share = chosen.sum() / (real.sum() - len(texts))
    assert 0.17 < share < 0.23, share  # mntp_probability 0.2
    masked = (inputs[chosen] == mask_id).float().mean()
    kept = (inputs[chosen] == ids[chosen]).float().mean()
    assert 0.74 < masked < 0.86 and 0.05 < kept < 0.16, (masked, kept)  # 80% `_`, 10% random, 10% kept

    # One text's mask is the same alone (other padding, another batch) as in the large batch ...
    alone = prepared(objective, embedder, [texts[5]], [keys[5]])
    n = int(real[5].sum())
    assert torch.equal(alone["mntp_labels"][0, -n:], labels[5, -n:])
    assert torch.equal(alone["mntp_input_ids"][0, -n:], inputs[5, -n:])
    # ... and changes with the seed and the epoch.
    reseeded = objective_for(MNTPObjective(), seed=1)
    reseeded.prepare(embedder)
    assert not torch.equal(prepared(reseeded, embedder, texts, keys)["mntp_labels"], labels)
    assert not torch.equal(prepared(objective, embedder, texts, keys, [1] * len(texts))["mntp_labels"], labels)
    assert torch.equal(prepared(objective, embedder, texts, keys)["mntp_labels"], labels)


def test_masks_are_drawn_without_touching_the_global_rng(tiny_model_dir):
    cfg, embedder = bidirectional(tiny_model_dir)
    objective = objective_for(MNTPObjective())
    objective.prepare(embedder)
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    prepared(objective, embedder, TEXTS)
    assert torch.equal(torch.random.get_rng_state(), before)  # dropout's stream is the same with or without mntp


def test_a_tokenizer_without_the_mask_token_is_refused_naming_it(tiny_model_dir):
    cfg, embedder = bidirectional(tiny_model_dir, "stages.stage1.objective.name=mntp",
                                  "stages.stage1.objective.mask_token=<no-such-token>")
    objective = objective_for(cfg.stage("stage1").objective)
    with pytest.raises(UserError, match=r"no token '<no-such-token>' to mask with \(the objective's mask_token\)"):
        objective.prepare(embedder)


def test_mntp_needs_bidirectional_attention_and_a_probability():
    with pytest.raises(ConfigError, match=r"stages\.stage1\.objective mntp needs model\.attention=bidirectional "
                                          r"\(it is causal\)"):
        load_config(None, ["model.path=m", "stages.stage1.objective.name=mntp"])
    cfg = load_config(None, ["model.path=m", "stages.stage1.objective.name=mntp", "model.attention=bidirectional"])
    assert cfg.stage("stage1").objective == MNTPObjective()
    with pytest.raises(ConfigError, match=r"stages\.stage1\.objective\.probability must be in \(0, 1\), got 1\.5"):
        load_config(None, ["model.path=m", "model.attention=bidirectional", "stages.stage1.objective.name=mntp",
                           "stages.stage1.objective.probability=1.5"])


def test_masking_the_demo_batch_of_a_real_tokenizer(smollm2_dir):
    """SmolLM2's vocabulary has `_`, LLM2Vec's blank mask token, as one token."""
    from t2t.data.tokens import load_tokenizer
    from t2t.train.mntp import mask_token_id

    tokenizer = load_tokenizer(smollm2_dir)
    mask_id = mask_token_id(tokenizer, "_")
    assert tokenizer.convert_ids_to_tokens(mask_id) == "_"
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    batch = mask_tokens(dict(batch, keys=list("abcd")), mask_id=mask_id, vocab_size=len(tokenizer),
                        special_ids=tokenizer.all_special_ids, probability=0.2, seed=0)
    assert selected_tokens(batch) > 0


def test_a_stage_starting_from_an_export_of_another_attention_mode_is_refused(tmp_path):
    from t2t.run_paths import check_start_attention

    export = tmp_path / "llm2vec-mntp"
    export.mkdir()
    (export / "t2t_config.json").write_text('{"attention": "bidirectional", "pooling": "mean"}')
    cfg = load_config(None, [f"model.path={export}", "stages.stage2.objective.name=simcse", "model.pooling=mean"])
    with pytest.raises(UserError, match=r"stages\.stage1 starts from .*llm2vec-mntp, trained with bidirectional "
                                        r"attention .* model\.attention is causal; set model\.attention=bidirectional"):
        check_start_attention(cfg, "stage1")
    check_start_attention(load_config(None, [f"model.path={export}", "model.attention=bidirectional"]), "stage1")
