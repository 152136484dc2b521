"""Offline MTEB tasks over real data shipped in `data/eval` (sources and licences in data/SOURCES.md).

Each task is a real mteb task class (mteb's own evaluators, splits, metrics and main score);
only `load_data` differs: it reads the local files instead of the Hugging Face hub. The task
names are those of the official tasks, so results read naturally; each description says where
the local data differs from the official one.

The dataset revision recorded in every result is derived from the SHA-256 of the data files
(`DATA_SHA256`, the same sums as the upstream SOURCES.md), and `load_data` checks the files
against it: a changed or damaged file fails its task with a clear error instead of producing
a score that silently differs from earlier ones.

    from t2t.eval.tasks import local_task
    task = local_task("STSBenchmark")                  # reads data/eval/sts/stsbenchmark_test.tsv
    task = local_task("SciFact", max_samples=50)       # a small seeded sample, for smoke tests
"""

from __future__ import annotations

import gzip
import hashlib
import json
from abc import abstractmethod
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks import (
    AbsTaskClassification,
    AbsTaskPairClassification,
    AbsTaskRetrieval,
    AbsTaskSTS,
)
from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy
from mteb.tasks.classification.eng.banking77_classification import Banking77Classification
from mteb.tasks.clustering.eng.twenty_newsgroups_clustering import TwentyNewsgroupsClustering
from mteb.tasks.pair_classification.eng.twitter_url_corpus_pc import TwitterURLCorpus
from mteb.tasks.retrieval.eng.sci_fact_retrieval import SciFact
from mteb.tasks.sts.eng.biosses_sts import BiossesSTS
from mteb.tasks.sts.eng.sts_benchmark_sts import STSBenchmarkSTS

from t2t.data.files import BLOCK, hash_into
from t2t.errors import UserError
from t2t.registry import Registry

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "eval"

# SHA-256 of each file's (decompressed) content, as listed in the upstream data set's SOURCES.md.
DATA_SHA256 = {
    "sts/stsbenchmark_test.tsv": "28082d3c91c1ace969c66dd791c3c3460dce24705db05e2f6a3ccd44a0bdd946",
    "sts/biosses_test.tsv": "96533ac1ba5d67f5b3a133be04a9ac35f13532d8a1d58ee41685b94d2bcb7b7b",
    "retrieval/scifact/corpus.jsonl.gz": "211ec67f296bf824cc6846c3346b312edf6561593383e3ffadc8fd9e04d1a22a",
    "retrieval/scifact/queries.jsonl": "9bb27b21e24342b3fc664db240a17975e710b90e06a00b05e9738f7fb7a14cef",
    "retrieval/scifact/qrels/test.tsv": "68c0ac63f1c24b9e8ce497649694f09b2d0850bab7ec2b103cc66996f5f8b3a3",
    "classification/banking77/train.tsv": "5d7b75a3efaf76c2107a80fd32881b13cfcde931a7d9ae03ef708bdc2fe332db",
    "classification/banking77/test.tsv": "2c04f8e4e18f762ca1335832a65aa5d83c0878b5cb970e11000e53e18dfd248a",
    "clustering/twentynewsgroups_subjects_test.jsonl": "d39766b1ea2dc220ff5d2baef30610da406652e966126a4fd83a1e539d6f11eb",
    "pair_classification/twitterurlcorpus_testportion.tsv": "5c509d92ec2694ae793ddd5329b581f78b57fdc4dc59197c9f1153525d0ac24a",
}
SAMPLE_SEED = 42


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _revision(files: tuple[str, ...]) -> str:
    joined = ";".join(f"{f}={DATA_SHA256[f]}" for f in files)
    return "local-" + hashlib.sha256(joined.encode()).hexdigest()[:16]


def _local_metadata(official, files: tuple[str, ...], differs: str):
    """The official task's metadata (split, metric, main score, citation) pointing at the local files."""
    return official.metadata.model_copy(update={
        "description": f"{official.metadata.description} Local copy in data/eval ({', '.join(files)}). {differs}",
        "dataset": {"path": "data/eval/" + files[0], "revision": _revision(files)},
        "superseded_by": None,
    })


def read_tsv(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    """Rows of a header-first, unquoted TSV; a wrong header or field count is an error naming file and line."""
    with _open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if tuple(header) != columns:
            raise UserError(f"{path}:1: expected columns {'/'.join(columns)}, got {'/'.join(header)}")
        rows = []
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(columns):
                raise UserError(f"{path}:{lineno}: expected {len(columns)} tab-separated fields, got {len(fields)}")
            rows.append(fields)
    return rows


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with _open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows


def sample_indices(n: int, max_samples: int) -> list[int]:
    """All of range(n) when `max_samples` is 0, else a seeded sample of at most that many, in their original order."""
    if not max_samples or max_samples >= n:
        return list(range(n))
    return sorted(np.random.RandomState(SAMPLE_SEED).choice(n, max_samples, replace=False).tolist())


class LocalTaskMixin:
    """Reads `files` from a data directory (checking their SHA-256), optionally capped at `max_samples` per split."""

    files: tuple[str, ...] = ()

    def __init__(self, data_dir: str | Path | None = None, max_samples: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
        self.max_samples = int(max_samples)

    def path(self, name: str) -> Path:
        return self.data_dir / name

    def check_files(self) -> None:
        for name in self.files:
            p = self.path(name)
            if not p.is_file():
                raise UserError(f"{self.metadata.name}: data file {p} not found (the local tasks read data/eval)")
            h = hashlib.sha256()
            if p.suffix == ".gz":  # the sum is of the decompressed content (hash_into reads the file's own bytes)
                with gzip.open(p, "rb") as f:
                    while block := f.read(BLOCK):
                        h.update(block)
            else:
                hash_into(h, p)
            digest = h.hexdigest()
            if digest != DATA_SHA256[name]:
                raise UserError(f"{self.metadata.name}: data file {p} has changed (sha256 {digest[:12]}…, "
                                f"expected {DATA_SHA256[name][:12]}…); restore it from data/SOURCES.md's source")

    def cost(self) -> int:
        """Bytes of text this task reads (uncompressed), to schedule the largest tasks first."""
        total = 0
        for name in self.files:
            p = self.path(name)
            if p.suffix == ".gz" and p.is_file():
                with p.open("rb") as f:  # gzip stores the uncompressed size (mod 2**32) in its last 4 bytes
                    f.seek(-4, 2)
                    total += int.from_bytes(f.read(4), "little")
            elif p.is_file():
                total += p.stat().st_size
        return total

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        if self.data_loaded:
            return
        self.check_files()
        self.dataset = self.read()
        self.data_loaded = True

    @abstractmethod
    def read(self):
        """The task's `dataset` in the layout its mteb abstract task expects."""


class LocalSTS(LocalTaskMixin, AbsTaskSTS):
    def read(self) -> DatasetDict:
        rows = read_tsv(self.path(self.files[0]), ("sentence1", "sentence2", "score"))
        rows = [rows[i] for i in sample_indices(len(rows), self.max_samples)]
        return DatasetDict({"test": Dataset.from_dict({
            "sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
            "score": [float(r[2]) for r in rows]})})


class LocalSTSBenchmark(LocalSTS):
    files = ("sts/stsbenchmark_test.tsv",)
    min_score, max_score = STSBenchmarkSTS.min_score, STSBenchmarkSTS.max_score
    metadata = _local_metadata(STSBenchmarkSTS, files, "Identical to MTEB's test split (rows, characters, pairs).")


class LocalBIOSSES(LocalSTS):
    files = ("sts/biosses_test.tsv",)
    min_score, max_score = BiossesSTS.min_score, BiossesSTS.max_score
    metadata = _local_metadata(BiossesSTS, files, (
        "The 100 pairs and gold scores (mean of 5 annotators) are the official ones; the text, extracted from the "
        "authors' .docx, differs from MTEB's by 0.6% of characters (whitespace, non-breaking spaces)."))


class LocalSciFact(LocalTaskMixin, AbsTaskRetrieval):
    files = ("retrieval/scifact/corpus.jsonl.gz", "retrieval/scifact/queries.jsonl", "retrieval/scifact/qrels/test.tsv")
    metadata = _local_metadata(SciFact, files, (
        "BEIR layout; 5,183 documents, 300 queries and 339 judgements as in MTEB; the documents' text totals "
        "18 characters fewer than MTEB's."))

    def read(self) -> dict:
        corpus = read_jsonl(self.path(self.files[0]))
        queries = read_jsonl(self.path(self.files[1]))
        qrels: dict[str, dict[str, int]] = {}
        for qid, did, score in read_tsv(self.path(self.files[2]), ("query-id", "corpus-id", "score")):
            qrels.setdefault(qid, {})[did] = int(score)
        queries = [q for q in queries if q["_id"] in qrels]
        if self.max_samples:
            queries = [queries[i] for i in sample_indices(len(queries), self.max_samples)]
            relevant = {d for q in queries for d in qrels[q["_id"]]}
            others = [i for i, d in enumerate(corpus) if d["_id"] not in relevant]
            n_extra = self.max_samples - len(relevant)  # fill the corpus up to max_samples with other documents
            extra = {others[i] for i in sample_indices(len(others), n_extra)} if n_extra > 0 else set()
            corpus = [d for i, d in enumerate(corpus) if d["_id"] in relevant or i in extra]
            qrels = {q["_id"]: qrels[q["_id"]] for q in queries}
        split = {
            "corpus": Dataset.from_dict({"id": [d["_id"] for d in corpus],
                                         "title": [d.get("title", "") for d in corpus],
                                         "text": [d["text"] for d in corpus]}),
            "queries": Dataset.from_dict({"id": [q["_id"] for q in queries], "text": [q["text"] for q in queries]}),
            "relevant_docs": qrels,
            "top_ranked": None,
        }
        return {"default": {"test": split}}


class LocalBanking77Classification(LocalTaskMixin, AbsTaskClassification):
    files = ("classification/banking77/train.tsv", "classification/banking77/test.tsv")
    metadata = _local_metadata(Banking77Classification, files, (
        "The original (v1) labels, as MTEB's Banking77Classification; train 10,003 and test 3,080 texts as in MTEB; "
        "13 texts had newlines collapsed to spaces."))

    def read(self) -> DatasetDict:
        splits = {}
        for split, name in zip(("train", "test"), self.files):
            rows = read_tsv(self.path(name), ("text", "label"))
            rows = [rows[i] for i in sample_indices(len(rows), self.max_samples)]
            splits[split] = Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]})
        return DatasetDict(splits)


class LocalTwentyNewsgroupsClustering(LocalTaskMixin, AbsTaskClusteringLegacy):
    files = ("clustering/twentynewsgroups_subjects_test.jsonl",)
    metadata = _local_metadata(TwentyNewsgroupsClustering, files, (
        "One clustering set of all 7,532 subject lines of 20news-bydate-test, where MTEB clusters 10 sets sampled "
        "from the subject lines (59,545 texts): close to MTEB's scores, not equal."))

    def read(self) -> DatasetDict:
        sets = read_jsonl(self.path(self.files[0]))
        for i, s in enumerate(sets):
            if len(s.get("sentences", [])) != len(s.get("labels", [])):
                raise UserError(f"{self.path(self.files[0])}:{i + 1}: sentences and labels differ in length")
            keep = sample_indices(len(s["sentences"]), self.max_samples)
            s["sentences"] = [s["sentences"][j] for j in keep]
            s["labels"] = [s["labels"][j] for j in keep]
        return DatasetDict({"test": Dataset.from_dict({"sentences": [s["sentences"] for s in sets],
                                                       "labels": [s["labels"] for s in sets]})})


class LocalTwitterURLCorpus(LocalTaskMixin, AbsTaskPairClassification):
    files = ("pair_classification/twitterurlcorpus_testportion.tsv",)
    metadata = _local_metadata(TwitterURLCorpus, files, (
        "Only the original test portion (9,334 pairs); MTEB's test split is train + test (51,534 pairs), so scores "
        "are not directly comparable."))

    def read(self) -> DatasetDict:
        rows = read_tsv(self.path(self.files[0]), ("sentence1", "sentence2", "label"))
        rows = [rows[i] for i in sample_indices(len(rows), self.max_samples)]
        return DatasetDict({"test": Dataset.from_dict({
            "sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
            "labels": [int(r[2]) for r in rows]})})


LOCAL_TASKS = Registry[type[LocalTaskMixin]]("local task")
"""The tasks evaluated from `data/eval` (offline), by their official mteb names."""
for _task in (LocalSTSBenchmark, LocalBIOSSES, LocalSciFact, LocalBanking77Classification,
              LocalTwentyNewsgroupsClustering, LocalTwitterURLCorpus):
    LOCAL_TASKS.register(_task.metadata.name, _task)


def local_task(name: str, data_dir: str | Path | None = None, max_samples: int = 0):
    """A local task by its (official) name; a UserError lists the registered ones."""
    return LOCAL_TASKS.get(name)(data_dir=data_dir, max_samples=max_samples)
