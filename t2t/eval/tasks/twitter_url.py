"""TwitterURLCorpus: whether two tweets link the same URL (pair classification)."""

from __future__ import annotations

from datasets import DatasetDict
from mteb.abstasks import AbsTaskPairClassification
from mteb.tasks.pair_classification.eng.twitter_url_corpus_pc import TwitterURLCorpus

from t2t.eval.tasks.base import LocalTaskMixin, local_metadata


class LocalTwitterURLCorpus(LocalTaskMixin, AbsTaskPairClassification):
    files = {
        "pair_classification/twitterurlcorpus_testportion.tsv":
            "5c509d92ec2694ae793ddd5329b581f78b57fdc4dc59197c9f1153525d0ac24a",
    }
    metadata = local_metadata(TwitterURLCorpus, files, (
        "Only the original test portion (9,334 pairs); MTEB's test split is train + test (51,534 pairs), so scores "
        "are not directly comparable."))

    def read(self) -> DatasetDict:
        return self.read_pairs("label", "labels", int)
