"""BIOSSES: biomedical sentence-pair similarity, 100 pairs."""

from __future__ import annotations

from mteb.tasks.sts.eng.biosses_sts import BiossesSTS

from t2t.eval.tasks.base import LocalSTS, local_metadata


class LocalBIOSSES(LocalSTS):
    files = {
        "sts/biosses_test.tsv":
            "96533ac1ba5d67f5b3a133be04a9ac35f13532d8a1d58ee41685b94d2bcb7b7b",
    }
    min_score, max_score = BiossesSTS.min_score, BiossesSTS.max_score
    metadata = local_metadata(BiossesSTS, files, (
        "The 100 pairs and gold scores (mean of 5 annotators) are the official ones; the text, extracted from the "
        "authors' .docx, differs from MTEB's by 0.6% of characters (whitespace, non-breaking spaces)."))
