"""TwentyNewsgroupsClustering: newsgroup subject lines clustered by their embeddings."""

from __future__ import annotations

from datasets import Dataset, DatasetDict
from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy
from mteb.tasks.clustering.eng.twenty_newsgroups_clustering import TwentyNewsgroupsClustering

from t2t.errors import UserError
from t2t.eval.tasks.base import LocalTaskMixin, local_metadata, read_jsonl, sample_indices


class LocalTwentyNewsgroupsClustering(LocalTaskMixin, AbsTaskClusteringLegacy):
    files = {
        "clustering/twentynewsgroups_subjects_test.jsonl":
            "d39766b1ea2dc220ff5d2baef30610da406652e966126a4fd83a1e539d6f11eb",
    }
    metadata = local_metadata(TwentyNewsgroupsClustering, files, (
        "One clustering set of all 7,532 subject lines of 20news-bydate-test, where MTEB clusters 10 sets sampled "
        "from the subject lines (59,545 texts): close to MTEB's scores, not equal."))

    def read(self) -> DatasetDict:
        sets = read_jsonl(self.nth(0))
        for i, s in enumerate(sets):
            if len(s.get("sentences", [])) != len(s.get("labels", [])):
                raise UserError(f"{self.nth(0)}:{i + 1}: sentences and labels differ in length")
            keep = sample_indices(len(s["sentences"]), self.max_samples)
            s["sentences"] = [s["sentences"][j] for j in keep]
            s["labels"] = [s["labels"][j] for j in keep]
        return DatasetDict({"test": Dataset.from_dict({"sentences": [s["sentences"] for s in sets],
                                                       "labels": [s["labels"] for s in sets]})})
