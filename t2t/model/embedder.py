"""The embedding core: backbone → pooled hidden state h(x) → fp32 LM-head logits z(x) = W h(x).

`Embedder` is the module DeepSpeed wraps. Its `forward` calls the LM head itself, so under
ZeRO-3 the head's weight shard is gathered by DeepSpeed's hooks like any other layer.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from t2t.data.tokens import format_text, tokenize_texts
from t2t.errors import UserError
from t2t.identity import EmbeddingIdentity
from t2t.pooling import pooling_mode

log = logging.getLogger(__name__)



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
        raise UserError(f"attention must be causal or bidirectional, got {mode!r}")
    causal = mode == "causal"
    lm.config.is_causal = causal
    n = 0
    for module in lm.modules():
        if module is not lm and hasattr(module, "is_causal") and not isinstance(getattr(module, "is_causal"), torch.Tensor):
            module.is_causal = causal
            n += 1
    if not causal and n == 0:
        raise UserError(f"{type(lm).__name__} has no attention layers with an is_causal switch")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str,
         pool_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pool final hidden states (B, L, d) with the registered pooling mode `pooling` (`t2t.pooling`): over the
    non-pad positions given by `attention_mask` (B, L), or for a `span` mode (echo) over the positions of the
    batch's `pool_mask` (B, L), which other modes ignore."""
    mode = pooling_mode(pooling)
    if not mode.span:
        return mode.pool(hidden, attention_mask)
    if pool_mask is None:  # a caller dropped the tokenized batch's pool_mask: mean-pooling instead would hide it
        raise ValueError(f"{pooling} pooling needs the batch's pool_mask (made by tokenize_texts); none was passed")
    return mode.pool(hidden, pool_mask)


class Embedder(nn.Module):
    """A causal LM used as an embedder: `forward` returns the pooled state and its fp32 LM-head logits."""

    def __init__(self, lm: nn.Module, tokenizer, settings: EmbeddingIdentity):
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

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled last-layer hidden states h(x), shape (B, d). `pool_mask`: the tokenized batch's, which a `span`
        pooling mode (echo) needs and other modes ignore."""
        out = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return pool(out.last_hidden_state, attention_mask, self.settings.pooling, pool_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: tuple[torch.Tensor, torch.Tensor] | None = None,
                pool_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (h, z): pooled states (B, d) and fp32 logits (B, |V|), the head called inside this forward.
        `pool_mask` as for `embed`.

        With `positions` (rows, columns), h is instead the last hidden states at those N token positions (N, d) and
        z their logits (N, |V|): token-level objectives (mntp) go through the same forward, and so through
        DeepSpeed's engine, without ever computing the head at every position."""
        if positions is None:
            h = self.embed(input_ids, attention_mask, pool_mask)
        else:
            out = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            h = out.last_hidden_state[positions]
        return h, self.lm.get_output_embeddings()(h)

    # ------------------------------------------------------------------ text

    def format(self, text: str) -> str:
        return format_text(self.tokenizer, self.settings, text)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Prompt, tokenize, truncate at `max_length` (counting cut texts) and pad a batch: the keyword arguments of
        `embed` and `forward` (input_ids, attention_mask, and pool_mask for a `span` pooling mode)."""
        batch, cut = tokenize_texts(self.tokenizer, self.settings, texts)
        self.truncated_texts += cut
        return batch

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32, normalize: bool = False,
               show_progress: bool | None = None) -> np.ndarray:
        """Embed texts in length-sorted batches; rows come back in the input order (float32). A text given more
        than once is embedded once and its row repeated: mteb encodes a task's columns as they are, and
        TwitterURLCorpus's first column holds 771 distinct tweets in 9,334 rows (TwentyNewsgroupsClustering: 4,260
        distinct subjects in 7,532): those tasks embed 43-46 % fewer texts. `truncated_texts` counts distinct texts."""
        position: dict[str, int] = {}
        rows = [position.setdefault(t, len(position)) for t in texts]
        distinct = list(position)
        out = self._encode_distinct(distinct, batch_size, normalize, show_progress)
        return out if len(distinct) == len(rows) else out[rows]

    def _encode_distinct(self, texts: list[str], batch_size: int, normalize: bool,
                         show_progress: bool | None) -> np.ndarray:
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
    def top_k(self, texts: list[str], k: int, batch_size: int = 64) -> list[list[tuple[int, float]]]:
        """For each text, the k tokens its embedding points to through the LM head: (token id, probability),
        most probable first. Ranked by the fp32 logits z (the order of softmax(z)); probabilities are softmax(z).
        Texts are embedded `batch_size` at a time; padding does not change a text's tokens."""
        texts = list(texts)
        was_training = self.training
        self.eval()
        result: list[list[tuple[int, float]]] = []
        for start in range(0, len(texts), batch_size):
            batch = {key: v.to(self.device) for key, v in self.tokenize(texts[start:start + batch_size]).items()}
            _, z = self(**batch)
            top = z.topk(min(k, z.shape[-1]), dim=-1)
            probs = torch.softmax(z, dim=-1).gather(-1, top.indices)
            result.extend(list(zip(ids, ps)) for ids, ps in zip(top.indices.tolist(), probs.tolist()))
        self.train(was_training)
        return result

    def top_tokens(self, texts: list[str], k: int = 10, batch_size: int = 1) -> list[list[tuple[str, float]]]:
        """`top_k` with token strings (what `t2t inspect` prints); one text at a time unless `batch_size`."""
        return [[(self.tokenizer.convert_ids_to_tokens(i), p) for i, p in row]
                for row in self.top_k(texts, k, batch_size)]
