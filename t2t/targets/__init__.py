"""Target token distributions: data-driven (stage 1), model-derived (stage 2), and their sparse form."""

from t2t.targets.sparse import TargetBatch
from t2t.targets.stage1 import Stage1Builder, clean_text, droppable_ids, idf_weights, stopword_list
from t2t.targets.stage2 import SparsifyStats, Stage2Builder, sparse_targets

__all__ = ["TargetBatch", "Stage1Builder", "clean_text", "droppable_ids", "idf_weights", "stopword_list",
           "SparsifyStats", "Stage2Builder", "sparse_targets"]
