"""The training reader: target shards streamed with WebDataset, split by rank and worker, resumable exactly.

    reader = TargetReader(open_stage_shards(shard_dir, cfg.model, tokenizer, cfg.data.on_bad_shard),
                          tokenizer, settings, batch_size=16, seed=0, rank=0, world_size=2, workers=1,
                          shuffle_buffer=1000)
    batch = next(reader)            # input_ids/attention_mask (B, L); target_ids/target_w/target_mask (B, K)
    state = reader.state_dict()     # goes into the checkpoint
    reader = TargetReader(..., state=state)   # the next batch is the one the first reader would have given

The stream is an endless sequence of epochs. Epoch e deals the shards, in an order drawn from
(seed, e), round-robin to the `world_size × workers` reading units; each unit reads its shards
with WebDataset's tar reader, decodes them (`t2t.data.shards.decode_sample`), mixes them in a
shuffle buffer seeded by (seed, e, unit) and yields fixed-size batches, tokenized and collated.

Shard integrity: `open_stage_shards` compares every shard's byte size with the manifest before the
first step (a stat each; tar pads files to 10 KiB records, so a small change can keep the size).
As the reader streams a shard listed in a manifest next to it, it counts the samples and hashes
the bytes (no extra read), and at the shard's end compares both with the manifest's record; a
mismatch is a bad shard like a corrupt tar (`data.on_bad_shard`: error stops, skip warns; the
samples read before the end have been used by then).

Exact resume: each unit's position is (epoch, samples taken in that epoch). A resumed unit
replays its current epoch up to that offset without tokenizing, which reproduces the shuffle
buffer exactly. The DataLoader hands out batches from its workers round-robin, so batch n of
a rank always comes from unit n mod workers; after a resume the physical workers are rotated
so that the first one plays the unit whose turn it is.

Length groups: with `length_group` G > 1 a unit takes G batches' worth of samples from its shuffled
stream at a time, sorts them by text length (characters: no tokenizer needed to replay a position),
cuts them into G batches and hands those out in an order drawn from the group's own seed. A batch
then holds texts of similar length and pads less (SmolLM2's batches of 32 Wikipedia sentences padded
about 40 % of their positions; on 2 CPU cores grouping still gave no speed-up, bench/BENCHMARKS.md, so
it is off unless `data.length_group` asks for it). A unit's position is then (epoch, samples taken
before its current group, batches of that group handed out): a resume replays the stream to the
group's start, rebuilds the group and skips the batches already used. G = 1 is the plain stream
order, batch by batch.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import signal
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from t2t.data.shards import decode_sample, shard_paths, shard_problem
from t2t.data.manifest import check_manifest, read_manifest
from t2t.errors import UserError

log = logging.getLogger(__name__)

BAD_SHARD_ERRORS = (UserError, OSError, EOFError, ValueError, tarfile.TarError)
"""What reading a damaged shard raises: our own checks (UserError), and the tar, npy and I/O layers beneath."""


class _HashingReader:
    """A read-only file wrapper that hashes every byte read through it (for tarfile's stream mode)."""

    def __init__(self, f):
        self.f, self.name = f, f.name
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data

    def digest_to_end(self) -> str:
        while self.read(1 << 20):  # the end-of-archive blocks and padding tarfile leaves unread
            pass
        return self.h.hexdigest()


def recorded_shards(urls: list[str]) -> dict[str, dict]:
    """url -> its manifest entry, for the shards listed in a manifest in their own directory."""
    manifests: dict[Path, dict] = {}
    out = {}
    for url in urls:
        parent = Path(url).parent
        if parent not in manifests:
            try:
                manifests[parent] = {s["name"]: s for s in read_manifest(parent)["shards"]}
            except (UserError, OSError, KeyError, TypeError):
                manifests[parent] = {}
        entry = manifests[parent].get(Path(url).name)
        if entry is not None:
            out[url] = entry
    return out


def expand_shards(patterns: str | list[str]) -> list[str]:
    """Shard files from paths or brace patterns (`dir/t2t-{000000..000011}.tar`; `::` separates several)."""
    from webdataset.shardlists import expand_urls

    items = [patterns] if isinstance(patterns, str) else list(patterns)
    urls = [u for p in items for u in expand_urls(str(p))]
    if not urls:
        raise UserError(f"no shards in {patterns!r}")
    return urls


def open_stage_shards(shard_dir: str | Path, model_cfg, tokenizer, on_bad_shard: str = "error") -> list[str]:
    """Check a stage's manifest against the model (before the first step) and list its shard files.

    Missing shard files are an error, or with `on_bad_shard=skip` a warning (the reader skips them).
    Every shard's byte size is compared with the manifest's record (a stat, no read): a shard of
    another size (truncated, even at a sample boundary; copied from another job) is an error naming
    it, or with `on_bad_shard=skip` a warning, and it is left out. Altered content of the same size
    (tar pads to 10 KiB records) is caught by `TargetReader`'s sha256 as it reads the shard, and by
    a rerun of `t2t targets`.
    """
    manifest = read_manifest(shard_dir)
    check_manifest(manifest, model_cfg, tokenizer, where=str(shard_dir))
    paths = shard_paths(shard_dir, manifest)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        message = f"{shard_dir}: {len(missing)} shard(s) listed in the manifest are missing: {', '.join(missing[:5])}"
        if on_bad_shard == "error":
            raise UserError(message + " (set data.on_bad_shard=skip to train on the rest)")
        log.warning("%s; they will be skipped", message)
    present = [s for s in manifest["shards"] if (Path(shard_dir) / s["name"]).is_file()]
    differ = {s["name"]: problem for s in present if (problem := shard_problem(shard_dir, s, checksum=False))}
    if differ:
        listed = "; ".join(f"{name}: {problem}" for name, problem in list(differ.items())[:5])
        message = (f"{shard_dir}: {len(differ)} shard(s) differ from the manifest ({listed}"
                   f"{'; ...' if len(differ) > 5 else ''})")
        if on_bad_shard == "error":
            raise UserError(message + "; rerun `t2t targets` to recompute them, or set data.on_bad_shard=skip "
                             "to train on the rest")
        log.warning("%s; they are left out", message)
    return [str(p) for p in paths if p.name not in differ]


@dataclass(frozen=True)
class Layout:
    """What decides which samples a rank sees in which order; a resume is exact only under the same layout."""

    shards: tuple[str, ...]
    seed: int
    rank: int
    world_size: int
    workers: int
    batch_size: int
    shuffle_buffer: int
    length_group: int = 1

    @property
    def units(self) -> int:
        return self.world_size * self.workers

    def as_dict(self) -> dict:
        return dict(shards=[Path(s).name for s in self.shards], seed=self.seed, world_size=self.world_size,
                    workers=self.workers, batch_size=self.batch_size, shuffle_buffer=self.shuffle_buffer,
                    length_group=self.length_group)


def collate(samples: list[tuple[str, str, np.ndarray, np.ndarray]], tokenizer, settings) -> dict:
    """Tokenize texts and pad the sparse targets of a batch into (B, K) ids, weights and a mask."""
    from t2t.data.tokens import tokenize_texts

    batch, truncated = tokenize_texts(tokenizer, settings, [s[1] for s in samples])
    k = max(1, max(len(s[2]) for s in samples))
    ids = torch.zeros(len(samples), k, dtype=torch.long)
    w = torch.zeros(len(samples), k, dtype=torch.float32)
    mask = torch.zeros(len(samples), k, dtype=torch.bool)
    for row, (_, _, sample_ids, sample_w) in enumerate(samples):
        n = len(sample_ids)
        ids[row, :n] = torch.from_numpy(sample_ids)
        w[row, :n] = torch.from_numpy(sample_w)
        mask[row, :n] = True
    batch.update(target_ids=ids, target_w=w, target_mask=mask, truncated=truncated, keys=[s[0] for s in samples])
    return batch


class _UnitStream:
    """The endless sample stream of one reading unit (a rank's worker), from a position on."""

    def __init__(self, layout: Layout, unit: int, on_bad_shard: str, recorded: dict[str, dict] | None = None):
        self.layout, self.unit, self.on_bad_shard = layout, unit, on_bad_shard
        self.recorded = recorded or {}
        self.skipped: set[str] = set()

    def epoch_shards(self, epoch: int) -> list[str]:
        order = np.random.default_rng([self.layout.seed, epoch]).permutation(len(self.layout.shards))
        return [self.layout.shards[i] for i in order[self.unit::self.layout.units]]

    def read_shard(self, url: str) -> Iterator[tuple]:
        import webdataset as wds

        try:
            entry = self.recorded.get(url)
            if entry is None:
                for raw in wds.tarfile_samples([dict(url=url)]):
                    yield decode_sample(raw)
                return
            from webdataset.tariterators import group_by_keys, tar_file_expander

            with open(url, "rb") as f:
                stream = _HashingReader(f)
                count = 0
                for raw in group_by_keys(tar_file_expander([dict(url=url, stream=stream)])):
                    yield decode_sample(raw)
                    count += 1
                digest = stream.digest_to_end()
            if count != entry["samples"]:
                raise UserError(f"{count} samples, the manifest records {entry['samples']}")
            if digest != entry["sha256"]:
                raise UserError(f"sha256 {digest[:16]}… differs from the recorded {entry['sha256'][:16]}…")
        except BAD_SHARD_ERRORS as e:
            if self.on_bad_shard == "error":
                raise UserError(f"corrupt shard {url}: {e} (`t2t targets` for this stage, or a rerun of `t2t pipeline`, "
                                "recomputes it; or set data.on_bad_shard=skip to skip it)") from None
            if url not in self.skipped:
                log.warning("skipping corrupt shard %s: %s", url, e)
            self.skipped.add(url)

    def epoch_samples(self, epoch: int) -> Iterator[tuple]:
        import webdataset as wds

        samples = itertools.chain.from_iterable(self.read_shard(u) for u in self.epoch_shards(epoch))
        size = self.layout.shuffle_buffer
        if size <= 1:
            return samples
        rng = random.Random(f"{self.layout.seed}-{epoch}-{self.unit}")
        return wds.shuffle(size, initial=size, rng=rng)(samples)

    def samples(self, epoch: int, offset: int) -> Iterator[tuple[tuple, int, int]]:
        """(sample, epoch, offset after it), starting after `offset` samples of `epoch`."""
        for e in itertools.count(epoch):
            taken = 0
            for taken, sample in enumerate(self.epoch_samples(e), start=1):
                if e == epoch and taken <= offset:
                    continue  # replaying up to the resume position: decoded, not tokenized
                yield sample, e, taken
            if taken == 0:
                raise UserError(f"rank {self.layout.rank}: no readable samples in epoch {e} of its shards "
                                 f"{self.epoch_shards(e)}")


def length_grouped(items: list[tuple], batch_size: int, rng: random.Random) -> list[list[tuple]]:
    """`items` ((sample, epoch, offset) triples) sorted by text length, cut into batches, in an order drawn from
    `rng`. Stable: texts of equal length keep their stream order."""
    ordered = sorted(items, key=lambda item: len(item[0][1]))
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng.shuffle(batches)
    return batches


class _ShardDataset(IterableDataset):
    """Batches of one rank; inside a DataLoader each worker process plays one reading unit."""

    def __init__(self, layout: Layout, tokenizer, settings, on_bad_shard: str, positions: list[list[int]],
                 first_unit_turn: int, recorded: dict[str, dict]):
        self.layout, self.tokenizer, self.settings = layout, tokenizer, settings
        self.on_bad_shard, self.positions, self.first_unit_turn = on_bad_shard, positions, first_unit_turn
        self.recorded = recorded

    def __iter__(self):
        try:
            yield from self._batches()
        except UserError as e:
            # Handed to the rank as a batch: a loader worker's exception would reach it wrapped in a traceback
            # text, and this way the rank raises the same one-line error with or without loader workers.
            yield {"error": str(e)}

    def _batches(self):
        info = get_worker_info()
        physical = info.id if info is not None else 0
        worker = (physical + self.first_unit_turn) % self.layout.workers
        unit_stream = _UnitStream(self.layout, self.layout.rank * self.layout.workers + worker, self.on_bad_shard,
                                  self.recorded)
        epoch, offset, done = self.positions[worker]
        stream = unit_stream.samples(epoch, offset)
        size = self.layout.batch_size * self.layout.length_group
        while True:
            taken = list(itertools.islice(stream, size))
            if self.layout.length_group == 1:
                batches = [taken]
            else:  # seeded by the group's start: a resume that replays to it rebuilds the same batches
                rng = random.Random(f"{self.layout.seed}-{unit_stream.unit}-{epoch}-{offset}")
                batches = length_grouped(taken, self.layout.batch_size, rng)
            end = (taken[-1][1], taken[-1][2])
            for k, chunk in enumerate(batches[done:], start=done + 1):
                batch = collate([s for s, _, _ in chunk], self.tokenizer, self.settings)
                batch["epochs"] = [e for _, e, _ in chunk]  # per sample: what an objective's masks draw from
                # The position after this batch: inside the group, or past it once its last batch is out.
                batch["position"] = (worker, epoch, offset, k) if k < len(batches) else (worker, *end, 0)
                batch["skipped_shards"] = sorted(unit_stream.skipped)
                yield batch
            (epoch, offset), done = end, 0


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader processes leave SIGTERM/SIGUSR1 to their rank, which checkpoints and then shuts them down.

    Slurm signals every process of a job step; a loader dying on it would break the rank's last step.
    """
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


class TargetReader:
    """Endless batches of one training rank, with a position that `state_dict()` captures exactly."""

    def __init__(self, shards: str | list[str], tokenizer, settings, *, batch_size: int, seed: int, rank: int,
                 world_size: int, workers: int = 0, shuffle_buffer: int = 1000, on_bad_shard: str = "error",
                 length_group: int = 1, state: dict | None = None):
        urls = expand_shards(shards)
        logical_workers = max(1, workers)
        if len(urls) < world_size * logical_workers:
            raise UserError(f"{len(urls)} shard(s) cannot feed {world_size} rank(s) × {logical_workers} loader "
                             f"worker(s): write smaller shards (targets.shard_size) or lower data.loader_workers")
        if on_bad_shard not in ("error", "skip"):
            raise ValueError(f"on_bad_shard must be error or skip, got {on_bad_shard!r}")
        if length_group < 1:
            raise ValueError(f"length_group must be at least 1, got {length_group}")
        self.layout = Layout(tuple(urls), seed, rank, world_size, logical_workers, batch_size, shuffle_buffer,
                             length_group)
        self.batches = 0
        self.positions = [[0, 0, 0] for _ in range(logical_workers)]  # (epoch, offset, batches of its group)
        self.skipped: set[str] = set()
        if state is not None:
            self._restore(state)
        dataset = _ShardDataset(self.layout, tokenizer, settings, on_bad_shard, self.positions,
                                first_unit_turn=self.batches % logical_workers, recorded=recorded_shards(urls))
        self.loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                                 prefetch_factor=2 if workers else None, worker_init_fn=_ignore_stop_signals)
        self._iter: Iterator[dict] | None = None

    def _restore(self, state: dict) -> None:
        if state.get("layout") != self.layout.as_dict():
            # Another world size, batch or shard set: the old order cannot be continued. Start a fresh epoch.
            epoch = 1 + max((p[0] for p in state.get("positions", [[0, 0]])), default=0)
            log.warning("data layout changed since the checkpoint (%s → %s); the stream restarts at epoch %d, "
                        "so this resume is not sample-exact", state.get("layout"), self.layout.as_dict(), epoch)
            self.positions = [[epoch, 0, 0] for _ in self.positions]
            return
        self.batches = int(state["batches"])
        self.positions = [list(map(int, p)) for p in state["positions"]]
        self.skipped = set(state.get("skipped", []))

    def __iter__(self) -> "TargetReader":
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = iter(self.loader)
        batch = next(self._iter)
        if "error" in batch:
            raise UserError(batch["error"])
        worker, epoch, offset, done = batch.pop("position")
        self.positions[worker] = [int(epoch), int(offset), int(done)]
        self.skipped.update(batch.pop("skipped_shards"))
        self.batches += 1
        return batch

    def state_dict(self) -> dict:
        """The position after the last batch handed out (JSON-serialisable)."""
        return dict(layout=self.layout.as_dict(), batches=self.batches, positions=[list(p) for p in self.positions],
                    skipped=sorted(self.skipped))

    def close(self) -> None:
        """Stop the loader's worker processes, and kill any that is still there after DataLoader's own shutdown
        (which ends them with SIGTERM, which they ignore): a rank must never wait on its loader to exit."""
        workers = list(getattr(self._iter, "_workers", []))
        shutdown = getattr(self._iter, "_shutdown_workers", None)
        if shutdown is not None:
            # What dropping the iterator would do, called here because it may not be dropped: after an exception
            # raised inside DataLoader (a worker's), the traceback keeps the iterator, and with it the SIGCHLD
            # handler that turns the kill below into "DataLoader worker ... is killed by signal", masking the cause.
            shutdown()
        self._iter = None
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)
