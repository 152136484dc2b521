"""SciFact: retrieval of the scientific abstracts that support or refute a claim (BEIR layout)."""

from __future__ import annotations

from datasets import Dataset
from mteb.abstasks import AbsTaskRetrieval
from mteb.tasks.retrieval.eng.sci_fact_retrieval import SciFact

from t2t.eval.tasks.base import LocalTaskMixin, local_metadata, read_jsonl, read_tsv, sample_indices


class LocalSciFact(LocalTaskMixin, AbsTaskRetrieval):
    files = {
        "retrieval/scifact/corpus.jsonl.gz":
            "211ec67f296bf824cc6846c3346b312edf6561593383e3ffadc8fd9e04d1a22a",
        "retrieval/scifact/queries.jsonl":
            "9bb27b21e24342b3fc664db240a17975e710b90e06a00b05e9738f7fb7a14cef",
        "retrieval/scifact/qrels/test.tsv":
            "68c0ac63f1c24b9e8ce497649694f09b2d0850bab7ec2b103cc66996f5f8b3a3",
    }
    metadata = local_metadata(SciFact, files, (
        "BEIR layout; 5,183 documents, 300 queries and 339 judgements as in MTEB; the documents' text totals "
        "18 characters fewer than MTEB's."))

    def read(self) -> dict:
        corpus = read_jsonl(self.nth(0))
        queries = read_jsonl(self.nth(1))
        qrels: dict[str, dict[str, int]] = {}
        for qid, did, score in read_tsv(self.nth(2), ("query-id", "corpus-id", "score")):
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
