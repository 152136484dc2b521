"""Everything that talks to Ray: how a job starts or joins it (`session`), and the target-precompute driver with
its workers. The evaluation driver keeps its actor next to the evaluation code (`t2t.eval.runner`) but starts
Ray through `session` as well."""
