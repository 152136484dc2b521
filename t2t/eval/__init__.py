"""Evaluation: mteb tasks (six offline ones over data/eval, or official ones) dispatched to Ray workers.

    t2t eval --model runs/demo/stage2/model --workers 2             # the six local tasks
    python -c "from t2t.eval import run_eval; run_eval(['DIR'], tasks=['STSBenchmark'])"

An exported stage is `<run_dir>/stage<N>/model` (e.g. runs/demo/stage2/model); the untrained start is
`<run_dir>/base_export`.

See t2t/eval/runner.py for the flow, tasks.py for the local tasks, models.py for how model
directories become mteb encoders, report.py for the tables and the chart.
"""

from t2t.eval.runner import run_eval

__all__ = ["run_eval"]
