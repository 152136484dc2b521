"""`t2t pipeline`: the whole Text2Token recipe on one machine, resumable step by step.

    t2t pipeline                              # recipes/demo.yaml: CPU, minutes
    t2t pipeline --config R --set train.stage1.steps=50

Steps, in order (each skipped when its output is complete and was made from the same inputs):
    base      build (tiny), convert (GGUF) or check the backbone, export it as the starting model M0
    targets1  stage-1 data-driven targets (Ray)
    train1    stage-1 training (DeepSpeed ZeRO-3, `train.nproc` ranks) → export M1
    targets2  stage-2 model-derived targets computed with M1 (Ray)
    train2    stage-2 training from M1 → export M2
    eval      the local evaluation tasks for M0, M1 and M2 side by side (Ray)
    report    <run_dir>/report.md with loss curves and per-task score bars (PNG)

Every step records a fingerprint of its inputs (its config sections and the fingerprints of the
steps it reads from) in `<run_dir>/pipeline.json`. A changed config re-runs exactly the steps whose
inputs changed, and everything downstream of them; target shards are additionally checked
against their manifests, so stale targets are never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from t2t.config import Config, load_config, start_from, to_dict

log = logging.getLogger(__name__)

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
STEPS = ["base", "targets1", "train1", "targets2", "train2", "eval", "report"]


class StepFailed(RuntimeError):
    """A pipeline step failed; the message names the step and its log file."""


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    def __init__(self, config_path: str | None, overrides: list[str], ray_address: str | None = None):
        self.config_path = str(config_path or DEMO_RECIPE)
        self.overrides = list(overrides)
        self.cfg: Config = load_config(self.config_path, self.overrides)
        from t2t.train.engine import build_ds_config

        build_ds_config(self.cfg)  # a bad DeepSpeed JSON stops the run here, before any step touches old outputs
        self.ray_address = ray_address
        self.run_dir = Path(self.cfg.run_dir)
        self.logs = self.run_dir / "logs"
        self.state_file = self.run_dir / "pipeline.json"
        self.state: dict = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    # ------------------------------------------------------------------ paths and configs

    def model_dir(self, stage: int) -> Path:
        """M0 (the start), M1, M2 as exported t2t model directories."""
        return self.run_dir / "base_export" if stage == 0 else self.run_dir / f"stage{stage}" / "model"

    def stage_overrides(self, stage: int) -> list[str]:
        """Stage 2 trains and computes targets with the exported stage-1 model."""
        if stage == 1:
            return self.overrides
        return self.overrides + start_from(self.model_dir(1))

    def stage_cfg(self, stage: int) -> Config:
        return load_config(self.config_path, self.stage_overrides(stage))

    def fingerprints(self) -> dict[str, str]:
        """Per step, a hash of exactly the config fields it reads and the fingerprints of the steps it reads from."""
        c = to_dict(self.cfg)
        data, targets, train = c["data"], c["targets"], c["train"]
        pick = lambda d, *keys: {k: d[k] for k in keys}  # noqa: E731
        reading = pick(data, "shuffle_buffer", "on_bad_shard", "loader_workers")
        optim = {k: v for k, v in train.items() if k not in ("stage1", "stage2", "save_every", "log_every")}
        fp = {"base": _hash([c["model"]])}
        fp["targets1"] = _hash([fp["base"], pick(data, "stage1_corpus", "max_texts"),
                                pick(targets, "stopwords", "max_target_tokens", "weighting", "shard_size")])
        fp["train1"] = _hash([fp["targets1"], reading, optim, train["stage1"], c["seed"]])
        fp["targets2"] = _hash([fp["train1"], pick(data, "stage1_corpus", "stage2_corpus", "max_texts", "stage2_max_texts"),
                                pick(targets, "tau", "delta", "top_k", "shard_size")])
        fp["train2"] = _hash([fp["targets2"], reading, optim, train["stage2"], c["seed"]])
        fp["eval"] = _hash([fp["base"], fp["train1"], fp["train2"], c["eval"]["tasks"], c["eval"]["benchmark"],
                            c["eval"]["dtype"]])
        fp["report"] = _hash([fp["eval"]])
        return fp

    # ------------------------------------------------------------------ running

    def run(self, only_until: str | None = None) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        fp = self.fingerprints()
        actions: dict[str, Callable[[], None]] = {
            "base": self.step_base, "targets1": lambda: self.step_targets(1), "train1": lambda: self.step_train(1),
            "targets2": lambda: self.step_targets(2), "train2": lambda: self.step_train(2),
            "eval": self.step_eval, "report": self.step_report,
        }
        try:
            self._run_steps(fp, actions, only_until)
        finally:
            self.stop_ray()
        return self.run_dir / "report.md"

    def _run_steps(self, fp: dict, actions: dict, only_until: str | None) -> None:
        stale = False
        started = self.state.setdefault("started", {})  # the inputs each step last started from
        for i, name in enumerate(STEPS, start=1):
            done = self.state.get(name) == fp[name] and not stale and self.outputs_present(name)
            if done:
                print(f"[{i}/{len(STEPS)}] {name}: up to date, skipped", flush=True)
            else:
                stale = True  # everything downstream of a re-run step re-runs too
                # Finished from other inputs, or interrupted while running from other inputs: never resumed.
                if name in self.state or started.get(name, fp[name]) != fp[name]:
                    self.invalidate(name)
                started[name] = fp[name]
                self.save_state()
                print(f"[{i}/{len(STEPS)}] {name}: running", flush=True)
                t0 = time.time()
                actions[name]()
                self.state[name] = fp[name]
                self.save_state()
                self.drop_replaced(name)
                print(f"[{i}/{len(STEPS)}] {name}: done in {time.time() - t0:.0f}s", flush=True)
            if name == only_until:
                break

    # One Ray session serves every Ray step (targets, eval): starting Ray costs seconds each time.
    _ray_started = False

    def ensure_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self.ray_address or os.environ.get("RAY_ADDRESS"):
            return  # the drivers join the named cluster themselves
        cpus = max(self.cfg.targets.workers, self.cfg.eval.workers)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        self._ray_started = True

    def stop_ray(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    def save_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.state_file)

    def outputs_present(self, name: str) -> bool:
        from t2t.precompute import is_complete
        from t2t.train import stage_complete

        checks = {
            "base": lambda: (self.model_dir(0) / "t2t_config.json").exists(),
            "targets1": lambda: is_complete(self.cfg, 1),
            "train1": lambda: stage_complete(self.cfg, 1),
            "targets2": lambda: is_complete(self.stage_cfg(2), 2),
            "train2": lambda: stage_complete(self.stage_cfg(2), 2),
            "eval": lambda: (Path(self.cfg.eval.out_dir) / "results.json").exists(),
            "report": lambda: (self.run_dir / "report.md").exists(),
        }
        return checks[name]()

    def invalidate(self, name: str) -> None:
        """Set aside a training step's outputs made from other inputs, so their checkpoints are not resumed.

        A finished stage (its export written) is kept as `stage{N}.replaced` until the new one is complete:
        a rerun that fails loses nothing finished. Unfinished checkpoints of other inputs are removed."""
        from t2t.train.checkpoint import TRAIN_INFO

        self.state.pop(name, None)
        self.save_state()
        if name not in ("train1", "train2"):
            return
        stage = self.run_dir / f"stage{name[-1]}"
        if (stage / "model" / TRAIN_INFO).is_file():
            aside = stage.with_name(stage.name + ".replaced")
            shutil.rmtree(aside, ignore_errors=True)  # an older one: this stage finished again since
            os.replace(stage, aside)
            print(f"{stage} was made from other inputs: kept as {aside} until its replacement is complete",
                  flush=True)
        else:
            shutil.rmtree(stage, ignore_errors=True)

    def drop_replaced(self, name: str) -> None:
        """The step finished again: the finished outputs it replaced can go."""
        if name in ("train1", "train2"):
            shutil.rmtree(self.run_dir / f"stage{name[-1]}.replaced", ignore_errors=True)

    def logged(self, name: str, fn: Callable[[], None]) -> None:
        """Run `fn`, turning any failure into a StepFailed naming the step and its log."""
        log_file = self.logs / f"{name}.log"
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            fn()
        except StepFailed:
            raise
        except Exception as e:  # noqa: BLE001 - any failure ends the pipeline at this step, named
            log.exception("step %s failed", name)
            raise StepFailed(f"step {name} failed: {e} (log: {log_file})") from e
        finally:
            root.removeHandler(handler)
            handler.close()

    # ------------------------------------------------------------------ steps

    def step_base(self) -> None:
        def run():
            from t2t.model import export, from_config

            export(from_config(self.cfg.model, dtype="float32"), self.model_dir(0))

        self.logged("base", run)

    def step_targets(self, stage: int) -> None:
        from t2t.precompute import run_targets

        cfg = self.stage_cfg(stage)
        self.ensure_ray()
        self.logged(f"targets{stage}", lambda: run_targets(cfg, stage, ray_address=self.ray_address, overwrite=True))

    def step_train(self, stage: int) -> None:
        from t2t.train import launch_local
        from t2t.train.launch import TrainingStopped

        log_file = self.logs / f"train{stage}.log"
        try:
            # SIGTERM, SIGINT, SIGHUP: the ranks checkpoint, then TrainingStopped names the checkpoint
            launch_local(self.config_path, self.stage_overrides(stage), stage, self.cfg.train.nproc, log_file)
        except TrainingStopped as e:
            raise StepFailed(f"step train{stage}: {e}") from e
        except Exception as e:  # noqa: BLE001
            where = "" if str(log_file) in str(e) else f" (log: {log_file})"
            raise StepFailed(f"step train{stage} failed: {e}{where}") from e

    def step_eval(self) -> None:
        from t2t.eval import run_eval

        e = self.cfg.eval
        dirs = [str(self.model_dir(s)) for s in (0, 1, 2)]
        self.ensure_ray()
        names = [f"{self.cfg.name}-M0-start", f"{self.cfg.name}-M1-stage1", f"{self.cfg.name}-M2-stage2"]
        self.logged("eval", lambda: run_eval(dirs, tasks=e.tasks, benchmark=e.benchmark, workers=e.workers,
                                             out_dir=e.out_dir, batch_size=e.batch_size, dtype=e.dtype,
                                             ray_address=self.ray_address, names=names))

    def step_report(self) -> None:
        from t2t.report import write_report

        self.logged("report", lambda: write_report(self.cfg, self.config_path, self.overrides))


def run_pipeline(config_path: str | None = None, overrides: list[str] = (), ray_address: str | None = None,
                 until: str | None = None) -> Path:
    """Run (or resume) the pipeline; returns the report path."""
    if until is not None and until not in STEPS:
        raise ValueError(f"--until must be one of {', '.join(STEPS)}; got {until!r}")
    return Pipeline(config_path, list(overrides), ray_address).run(until)


__all__ = ["run_pipeline", "Pipeline", "StepFailed", "STEPS", "DEMO_RECIPE"]
