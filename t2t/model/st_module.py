"""A sentence-transformers input module that embeds exactly like `t2t.model.load(dir)`.

Used by exports whose embedding sentence-transformers' stock modules cannot express (a
prompt with a suffix such as PromptEOL, bidirectional attention, `eos` or `echo` pooling). It wraps
the same `Embedder`, so both paths share one implementation of prompt, padding and pooling.
Load such a directory with `SentenceTransformer(dir, trust_remote_code=True)`.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules.input_module import InputModule


class T2TModule(InputModule):
    config_keys: list[str] = []

    def __init__(self, model_dir: str):
        super().__init__()
        from t2t.model.io import load

        self.embedder = load(model_dir)
        self.tokenizer = self.embedder.tokenizer

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        texts = [prompt + t for t in inputs] if prompt else list(inputs)
        return self.embedder.tokenize(texts)

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        features["sentence_embedding"] = self.embedder.embed(features["input_ids"], features["attention_mask"],
                                                             features.get("pool_mask"))  # echo pooling's
        return features

    def get_embedding_dimension(self) -> int:
        return self.embedder.lm.config.hidden_size

    get_sentence_embedding_dimension = get_embedding_dimension

    @property
    def max_seq_length(self) -> int:
        return self.embedder.settings.max_length

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        from t2t.model.io import export

        export(self.embedder, output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> "T2TModule":
        from pathlib import Path

        return cls(str(Path(model_name_or_path) / subfolder))
