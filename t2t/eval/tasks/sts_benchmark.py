"""STSBenchmark: sentence-pair similarity, the test split as in MTEB."""

from __future__ import annotations

from mteb.tasks.sts.eng.sts_benchmark_sts import STSBenchmarkSTS

from t2t.eval.tasks.base import LocalSTS, local_metadata


class LocalSTSBenchmark(LocalSTS):
    files = {
        "sts/stsbenchmark_test.tsv":
            "28082d3c91c1ace969c66dd791c3c3460dce24705db05e2f6a3ccd44a0bdd946",
    }
    min_score, max_score = STSBenchmarkSTS.min_score, STSBenchmarkSTS.max_score
    metadata = local_metadata(STSBenchmarkSTS, files, "Identical to MTEB's test split (rows, characters, pairs).")
