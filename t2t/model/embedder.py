"""The embedding core: backbone → pooled hidden state h(x) → fp32 LM-head logits z(x) = W h(x).

`Embedder` is the module DeepSpeed wraps. Its `forward` calls the LM head itself, so under
ZeRO-3 the head's weight shard is gathered by DeepSpeed's hooks like any other layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that decides how a text becomes a vector; saved as `t2t_config.json` on export."""

    pooling: str = "mean"
    prompt: str = "{text}"
    attention: str = "causal"
    max_length: int = 128
    padding_side: str = "left"

    def as_dict(self) -> dict:
        return dict(pooling=self.pooling, prompt=self.prompt, attention=self.attention,
                    max_length=self.max_length, padding_side=self.padding_side)


class Fp32Head(nn.Linear):
    """An `nn.Linear` that computes in fp32.

    The LM head's class is swapped to this one rather than wrapped, so the weight stays a
    direct parameter of the module that is called, and ZeRO-3's pre-forward hook gathers it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.fp32_weight(), bias)

    def fp32_weight(self) -> torch.Tensor:
        """The weight in fp32. Out of autograd (stage-2 targets, evaluation) casting a bf16 head (|V| × d)
        costs more than the matmul it feeds, so the cast is kept until the weight changes. ZeRO-3
        parameters are re-gathered for every forward and never cached."""
        w = self.weight
        if w.dtype == torch.float32 or torch.is_grad_enabled() or hasattr(w, "ds_id"):
            return w.float()
        key = (w.data_ptr(), w._version, w.device)
        cached = self.__dict__.get("_fp32_cache")
        if cached is None or cached[0] != key:
            cached = (key, w.detach().float())
            self.__dict__["_fp32_cache"] = cached
        return cached[1]


def set_attention(lm: nn.Module, mode: str) -> None:
    """Switch a Llama/Mistral/Qwen2-family model between causal and bidirectional attention.

    Two switches are needed on the pinned transformers: `config.is_causal=False` makes the
    mask builder produce a padding-only mask, and each attention layer's `is_causal` stops
    SDPA/flash kernels from re-imposing causality when that mask is elided (no padding).
    """
    if mode not in ("causal", "bidirectional"):
        raise ValueError(f"attention must be causal or bidirectional, got {mode!r}")
    causal = mode == "causal"
    lm.config.is_causal = causal
    n = 0
    for module in lm.modules():
        if module is not lm and hasattr(module, "is_causal") and not isinstance(getattr(module, "is_causal"), torch.Tensor):
            module.is_causal = causal
            n += 1
    if not causal and n == 0:
        raise ValueError(f"{type(lm).__name__} has no attention layers with an is_causal switch")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool final hidden states (B, L, d) over the non-pad positions given by `attention_mask` (B, L)."""
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if pooling in ("last", "eos"):
        # Index of the last real token, valid for either padding side.
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}")


def format_text(tokenizer, settings: EmbedSettings, text: str) -> str:
    """The text as the model sees it: inside the prompt, with EOS appended for `eos` pooling."""
    s = settings.prompt.replace("{text}", text)
    if settings.pooling == "eos":
        s = s + tokenizer.eos_token
    return s


def tokenize_texts(tokenizer, settings: EmbedSettings, texts: list[str]) -> tuple[dict[str, torch.Tensor], int]:
    """Prompt, tokenize, truncate at `max_length` and pad a batch; also returns how many texts were cut.

    A function of the tokenizer and settings only, so data-loader workers tokenize without a model.
    """
    limit = settings.max_length
    ids = tokenizer([format_text(tokenizer, settings, t) for t in texts], add_special_tokens=True)["input_ids"]
    cut = [i for i, row in enumerate(ids) if len(row) > limit]
    for i in cut:
        ids[i] = ids[i][:limit]
        if settings.pooling == "eos":
            ids[i][-1] = tokenizer.eos_token_id  # the pooled position must still hold EOS
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, len(cut)


class Embedder(nn.Module):
    """A causal LM used as an embedder: `forward` returns the pooled state and its fp32 LM-head logits."""

    def __init__(self, lm: nn.Module, tokenizer, settings: EmbedSettings):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.settings = settings
        head = lm.get_output_embeddings()
        if type(head) is nn.Linear:
            head.__class__ = Fp32Head
        set_attention(lm, settings.attention)
        tokenizer.padding_side = settings.padding_side
        self.truncated_texts = 0

    # ------------------------------------------------------------------ tensors

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled last-layer hidden states h(x), shape (B, d)."""
        out = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return pool(out.last_hidden_state, attention_mask, self.settings.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (h, z): pooled states (B, d) and fp32 logits (B, |V|), the head called inside this forward."""
        h = self.embed(input_ids, attention_mask)
        return h, self.lm.get_output_embeddings()(h)

    # ------------------------------------------------------------------ text

    def format(self, text: str) -> str:
        return format_text(self.tokenizer, self.settings, text)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Prompt, tokenize, truncate at `max_length` (counting cut texts) and pad a batch."""
        batch, cut = tokenize_texts(self.tokenizer, self.settings, texts)
        self.truncated_texts += cut
        return batch

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32, normalize: bool = False,
               show_progress: bool | None = None) -> np.ndarray:
        """Embed texts in length-sorted batches; rows come back in the input order (float32)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.lm.config.hidden_size), dtype=np.float32)
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.lm.config.hidden_size), dtype=np.float32)
        show = len(texts) > 256 if show_progress is None else show_progress
        for start in tqdm(range(0, len(texts), batch_size), desc="encode", disable=not show, leave=False):
            idx = order[start:start + batch_size]
            batch = {k: v.to(self.device) for k, v in self.tokenize([texts[i] for i in idx]).items()}
            h = self.embed(**batch).float()
            if normalize:
                h = F.normalize(h, dim=-1)
            out[idx] = h.cpu().numpy()
        self.train(was_training)
        return out

    @torch.no_grad()
    def top_tokens(self, texts: list[str], k: int = 10) -> list[list[tuple[str, float]]]:
        """For each text, the k tokens its embedding points to through the LM head, with probabilities."""
        self.eval()
        result = []
        for text in texts:
            batch = {key: v.to(self.device) for key, v in self.tokenize([text]).items()}
            _, z = self(**batch)
            p = torch.softmax(z[0], dim=-1)
            probs, ids = p.topk(min(k, p.shape[0]))
            result.append([(self.tokenizer.convert_ids_to_tokens(int(i)), float(q)) for q, i in zip(probs, ids)])
        return result
