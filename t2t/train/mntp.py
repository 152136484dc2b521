"""The `mntp` objective: LLM2Vec's masked next-token prediction (BehnamGhader et al., 2024), in the t2t trainer.

With bidirectional attention, a share (the section's `probability`) of each text's tokens is selected; as in
Hugging Face's masked-LM collator that LLM2Vec's Llama recipes use (`data_collator_type: default`), 80% of
the selected tokens become the mask token (`_`: `mask_token_type: blank`), 10% a random token, 10% stay.
Token i is then predicted from the model's output at position i − 1, as a decoder was pretrained to:

    L = Σ_{(b, i) selected}  −log softmax(W h_b[i − 1])[x_b[i]]

The head is applied at the selected positions only (never the B × L × |V| logits), and the trainer divides the
sum by the number of selected tokens in the whole global batch: the token-level mean LLM2Vec's cross-entropy
takes, exact for any split over ranks and micro-steps.

Which tokens are selected, and how each is replaced, is drawn from a generator seeded by (recipe seed, the
sample's key, its epoch) alone: the same under any number of ranks, micro-steps or loader workers, in a
resumed run as in the uninterrupted one, and fresh for a text seen again in a later epoch (dynamic masking).
A text's first token and special tokens are never selected (the first has no position before it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from t2t.errors import UserError
from t2t.train.objective import LossParts

IGNORE = -100
"""Label of a position that is not predicted."""
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
"""Of the selected tokens: replaced by the mask token, by a random token; the rest stay as they are."""


def sample_generator(seed: int, key: str, epoch: int) -> torch.Generator:
    """The generator one sample's masking draws from: a function of (seed, key, epoch) only."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{epoch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def mask_tokens(batch: dict, *, mask_id: int, vocab_size: int, special_ids: list[int], probability: float,
                seed: int) -> dict:
    """The batch with `mntp_input_ids` (the masked inputs) and `mntp_labels` (the original token at each
    selected position, IGNORE elsewhere). Each sample's draws cover its own real tokens in order, so where
    padding puts them does not change them."""
    ids, attention = batch["input_ids"], batch["attention_mask"].bool()
    epochs = batch.get("epochs") or [0] * len(batch["keys"])
    inputs, labels = ids.clone(), torch.full_like(ids, IGNORE)
    special = torch.tensor(sorted(set(special_ids)), dtype=ids.dtype)
    for row, (key, epoch) in enumerate(zip(batch["keys"], epochs)):
        g = sample_generator(seed, key, int(epoch))
        positions = attention[row].nonzero().squeeze(1)
        n = len(positions)
        select, how = torch.rand(n, generator=g), torch.rand(n, generator=g)
        random_ids = torch.randint(vocab_size, (n,), generator=g, dtype=ids.dtype)
        tokens = ids[row, positions]
        selected = (select < probability) & ~torch.isin(tokens, special)
        selected[:1] = False
        at = positions[selected]
        labels[row, at] = tokens[selected]
        to_mask = selected & (how < MASK_SHARE)
        to_random = selected & (how >= MASK_SHARE) & (how < MASK_SHARE + RANDOM_SHARE)
        inputs[row, positions[to_mask]] = mask_id
        inputs[row, positions[to_random]] = random_ids[to_random]
    return dict(batch, mntp_input_ids=inputs, mntp_labels=labels)


def selected_tokens(batch: dict) -> int:
    """Tokens of a masked batch the loss predicts (known before the forward)."""
    return int((batch["mntp_labels"] != IGNORE).sum())


def mntp_loss(model: Callable, batch: dict) -> LossParts:
    """Sum over the selected tokens of the cross-entropy of the LM head at the position before each."""
    if "mntp_labels" not in batch:
        raise ValueError("mntp_loss needs a batch masked by the objective's prepare_batch")
    labels = batch["mntp_labels"]
    rows, cols = (labels != IGNORE).nonzero(as_tuple=True)
    _, logits = model(batch["mntp_input_ids"], batch["attention_mask"], positions=(rows, cols - 1))
    return LossParts(total=F.cross_entropy(logits, labels[rows, cols], reduction="sum"), count=len(rows))


def mask_token_id(tokenizer, token: str) -> int:
    """The id of `token` as one token of `tokenizer`; a UserError naming it when the vocabulary has none."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise UserError(f"mntp: the tokenizer has no token {token!r} to mask with (the objective's mask_token); "
                        "name a token of its vocabulary")
    return int(tid)


@dataclass
class MaskedNextToken:
    """The objective's state: its settings, and the mask token's id once `prepare` has seen the tokenizer."""

    probability: float
    token: str
    seed: int
    mask_id: int | None = None
    vocab_size: int = 0
    special_ids: tuple[int, ...] = ()

    def prepare(self, embedder) -> None:
        tokenizer = embedder.tokenizer
        self.mask_id = mask_token_id(tokenizer, self.token)
        self.vocab_size = len(tokenizer)  # random replacements, as Hugging Face's collator draws them
        self.special_ids = tuple(tokenizer.all_special_ids)

    def prepare_batch(self, batch: dict) -> dict:
        if self.mask_id is None:
            raise ValueError("MaskedNextToken.prepare must run before prepare_batch")
        return mask_tokens(batch, mask_id=self.mask_id, vocab_size=self.vocab_size, special_ids=list(self.special_ids),
                           probability=self.probability, seed=self.seed)
