"""The path a real user takes: pretrained SmolLM2-135M (tied embeddings, chat special tokens, PromptEOL),
`t2t train` for 2 steps on 2 ZeRO-3 ranks, then export.

Checked on the checkpoint itself, not the export: the frozen LM head / input embeddings are
bit-identical to the start while the decoder layers moved. The export loads in
SentenceTransformer and encodes like `t2t.model.load` to 1e-5 (fp32 throughout).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from train_support import corpus_lines, torchrun, write_recipe, write_stage_shards


@pytest.fixture(scope="module")
def trained(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2_train")
    write_stage_shards(smollm2_dir, root / "shards" / "stage1", n_shards=2, per_shard=8)
    recipe = write_recipe(root / "r.yaml", smollm2_dir, root / "shards", root / "run", micro_batch_size=2,
                          stage1=dict(steps=1, lr=1.0e-4))
    text = recipe.read_text().replace("pooling: mean", "pooling: last")  # PromptEOL, the paper's setting
    recipe.write_text(text)
    torchrun(2, ["-m", "t2t.cli", "train", "--stage", "1", "--config", str(recipe)], root / "train.log", timeout=600)
    return root / "run"


@pytest.mark.slow
def test_frozen_weights_stay_bit_identical_under_zero3(trained, smollm2_dir):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    start = load_file(str(smollm2_dir / "model.safetensors"))
    ckpt = get_fp32_state_dict_from_zero_checkpoint(str(trained / "stage1" / "checkpoints"), lazy_mode=True)
    embed = ckpt["lm.model.embed_tokens.weight"].contiguous()
    assert torch.equal(embed, start["model.embed_tokens.weight"])  # tied: the LM head too
    layer = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ckpt[f"lm.{layer}"].contiguous(), start[layer])  # the decoder did train
    exported = load_file(str(trained / "stage1" / "model" / "model.safetensors"))
    assert torch.equal(exported["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    assert torch.equal(exported[layer], ckpt[f"lm.{layer}"].contiguous())


@pytest.mark.slow
def test_export_loads_in_sentence_transformers_and_encodes_alike(trained):
    from sentence_transformers import SentenceTransformer

    from t2t.model import load

    model_dir = trained / "stage1" / "model"
    texts = corpus_lines(6, skip=500)
    ours = load(model_dir).encode(texts)
    st = SentenceTransformer(str(model_dir), trust_remote_code=True, local_files_only=True, device="cpu")
    theirs = st.encode(texts, convert_to_numpy=True)
    assert ours.shape == (6, 576)
    assert abs(ours - theirs).max() < 1e-5
