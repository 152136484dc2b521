"""Banking77Classification: intents of online-banking queries, by a logistic regression on the embeddings."""

from __future__ import annotations

from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTaskClassification
from mteb.tasks.classification.eng.banking77_classification import Banking77Classification

from t2t.eval.tasks.base import LocalTaskMixin, local_metadata, read_tsv, sample_indices


class LocalBanking77Classification(LocalTaskMixin, AbsTaskClassification):
    files = {
        "classification/banking77/train.tsv":
            "5d7b75a3efaf76c2107a80fd32881b13cfcde931a7d9ae03ef708bdc2fe332db",
        "classification/banking77/test.tsv":
            "2c04f8e4e18f762ca1335832a65aa5d83c0878b5cb970e11000e53e18dfd248a",
    }
    metadata = local_metadata(Banking77Classification, files, (
        "The original (v1) labels, as MTEB's Banking77Classification; train 10,003 and test 3,080 texts as in MTEB; "
        "13 texts had newlines collapsed to spaces."))

    def read(self) -> DatasetDict:
        splits = {}
        for split, name in zip(("train", "test"), self.files):
            rows = read_tsv(self.path(name), ("text", "label"))
            rows = [rows[i] for i in sample_indices(len(rows), self.max_samples)]
            splits[split] = Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]})
        return DatasetDict(splits)
