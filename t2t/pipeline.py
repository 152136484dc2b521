"""`t2t pipeline`: a whole recipe on one machine, resumable step by step.

    t2t pipeline                              # recipes/demo.yaml: CPU, minutes
    t2t pipeline --config R --set stages.stage1.steps=50

The steps follow from the recipe's stage list. For Text2Token's two stages:
    base            build (tiny), convert (GGUF) or check the backbone, export it as the starting model M0
    stage1:targets  the stage's targets (Ray; its target kind decides what they are)
    stage1:train    the stage's training (DeepSpeed ZeRO-3, `train.nproc` ranks) → its export M1
    stage2:targets  targets of stage 2, computed with the model it starts from (stage1's export)
    stage2:train    stage-2 training from M1 → M2
    eval            the local evaluation tasks for M0 and every stage's export side by side (Ray)
    report          <run_dir>/report.md with loss curves and per-task score bars (PNG)

Every step records a fingerprint of its inputs (its config fields and the fingerprints of the
steps it reads from) in `<run_dir>/pipeline.json`. A changed config re-runs exactly the steps whose
inputs changed, and everything downstream of them; target shards are additionally checked
against their manifests, so stale targets are never reused.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from t2t import run_paths
from t2t.config import Config, load_config
from t2t.data.files import write_json_atomic
from t2t.errors import UserError
from t2t.fingerprints import step_fingerprints

log = logging.getLogger(__name__)

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


def step_names(cfg: Config) -> list[str]:
    """The pipeline's steps for this recipe, in order: base, `STAGE:targets` and `STAGE:train` per stage, eval,
    report."""
    per_stage = [f"{s.name}:{what}" for s in cfg.stages for what in ("targets", "train")]
    return ["base", *per_stage, "eval", "report"]


def step_parts(name: str) -> tuple[str, str]:
    """(stage, what) of a step name: ("stage1", "targets") for `stage1:targets`, ("", "eval") for `eval`."""
    stage, sep, what = name.partition(":")
    return (stage, what) if sep else ("", name)


class StepFailed(RuntimeError):
    """A pipeline step failed; the message names the step and its log file. `needs_a_fix`: the cause is bad input
    (a missing corpus, a bad DeepSpeed value, a refused checkpoint) or a diverged loss, which a plain rerun meets
    again."""

    def __init__(self, message: str, needs_a_fix: bool = False):
        super().__init__(message)
        self.needs_a_fix = needs_a_fix


class Pipeline:
    def __init__(self, config_path: str | None, overrides: list[str], ray_address: str | None = None,
                 check_runnable: bool = True, verify: bool = False, deepspeed_checked: bool = False):
        self.config_path = str(config_path or DEMO_RECIPE)
        self.overrides = list(overrides)
        self.cfg: Config = load_config(self.config_path, self.overrides)
        self.check_runnable = check_runnable
        """Check here that this machine can run the recipe (`t2t plan --grid` plans for another one)."""
        self.deepspeed_checked = deepspeed_checked
        """DeepSpeed has parsed the recipe's JSON already: a sweep's driver does it for every point before it starts
        any step job, so a step job that trains skips `check_with_deepspeed` (importing torch and DeepSpeed for it
        cost 5 s of CPU in a process that then only waits for the ranks)."""
        if check_runnable:
            from t2t.train.ds_config import read_ds_config, resolve_ds_config_path

            # A missing or malformed DeepSpeed JSON stops the run here (DeepSpeed's own parse, which imports torch,
            # comes before the first step that leads to training: `check_with_deepspeed`).
            read_ds_config(resolve_ds_config_path(self.cfg.train.ds_config))
            for stage in self.cfg.stages:
                if stage.start == "base":
                    run_paths.check_start_attention(self.cfg, stage.name)
            missing = run_paths.missing_inputs(self.cfg)
            if missing:  # here, not steps later with a traceback: typically t2t was run from another directory
                raise UserError(f"{self.config_path} names inputs that are not here: {', '.join(missing)} (relative "
                                f"paths resolve against the current directory, {Path.cwd()}: run t2t from the "
                                "directory they are relative to, for the bundled recipes the repository root)")
        self.ray_address = ray_address
        self.verify = verify
        """Decide what is up to date by reading every input and shard in full (else an unchanged size and
        modification time stand for unchanged contents: `t2t.data.inputs.input_hash`)."""
        self.run_dir = Path(self.cfg.run_dir)
        self.logs = self.run_dir / "logs"
        self.state_file = self.run_dir / "pipeline.json"
        self.state: dict = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.steps = step_names(self.cfg)

    # ------------------------------------------------------------------ fingerprints

    def fingerprints(self) -> dict[str, str]:
        """Per step, a hash of what decides it (`t2t.fingerprints.step_fingerprints`)."""
        return step_fingerprints(self.cfg)

    # ------------------------------------------------------------------ running

    def run(self, only_until: str | None = None) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        fp = self.fingerprints()
        actions: dict[str, Callable[[], None]] = {"base": self.step_base, "eval": self.step_eval,
                                                  "report": self.step_report}
        for stage in self.cfg.stage_names:
            actions[f"{stage}:targets"] = lambda stage=stage: self.step_targets(stage)
            actions[f"{stage}:train"] = lambda stage=stage: self.step_train(stage)
        try:
            self._run_steps(fp, actions, only_until)
        finally:
            self.stop_ray()
        return self.run_dir / "report.md"

    def _run_steps(self, fp: dict, actions: dict, only_until: str | None) -> None:
        stale = False
        started = self.state.setdefault("started", {})  # the inputs each step last started from
        n = len(self.steps)
        for i, name in enumerate(self.steps, start=1):
            done = self.state.get(name) == fp[name] and not stale and self.outputs_present(name)
            if done:
                print(f"[{i}/{n}] {name}: up to date, skipped", flush=True)
            elif not stale and (aside := self.take_back(name, fp[name])):
                print(f"[{i}/{n}] {name}: taken back from {aside}, made from these inputs; skipped", flush=True)
            else:
                if not stale:  # the first step that runs: nothing old has been touched yet
                    self.check_with_deepspeed(self.steps[i - 1:], only_until)
                stale = True  # everything downstream of a re-run step re-runs too
                # Finished from other inputs, or interrupted while running from other inputs: never resumed.
                if name in self.state or started.get(name, fp[name]) != fp[name]:
                    self.invalidate(name)
                started[name] = fp[name]
                self.save_state()
                print(f"[{i}/{n}] {name}: running", flush=True)
                t0 = time.time()
                actions[name]()
                self.state[name] = fp[name]
                self.save_state()
                self.drop_replaced(name)
                print(f"[{i}/{n}] {name}: done in {time.time() - t0:.0f}s", flush=True)
            if name == only_until:
                break

    def check_with_deepspeed(self, to_run: list[str], only_until: str | None) -> None:
        """DeepSpeed's parse of the recipe's JSON, where one of the steps `to_run` (up to `only_until`) trains: a
        value DeepSpeed rejects stops the run before any step touches old outputs. A rerun with nothing to do, or
        with only the evaluation to redo, imports neither torch nor DeepSpeed for it."""
        if only_until in to_run:
            to_run = to_run[:to_run.index(only_until) + 1]
        if self.check_runnable and not self.deepspeed_checked and any(step_parts(name)[1] == "train"
                                                                      for name in to_run):
            from t2t.train.ds_config import build_ds_config

            build_ds_config(self.cfg)

    # One Ray session serves every Ray step (targets, eval): starting Ray costs seconds each time.
    _ray_started = False

    def ensure_ray(self) -> None:
        from t2t.jobs.session import start_or_join

        cpus = max(self.cfg.targets.workers, self.cfg.eval.workers) or None  # 0 (automatic): the machine's
        self._ray_started = start_or_join(self.ray_address, cpus) or self._ray_started

    def stop_ray(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    def save_state(self) -> None:
        write_json_atomic(self.state_file, self.state)

    def outputs_present(self, name: str) -> bool:
        from t2t.data.target_job import is_complete
        from t2t.train.export import stage_complete

        stage, what = step_parts(name)
        if what == "targets":
            return is_complete(self.cfg, stage, verify=self.verify)
        if what == "train":
            return stage_complete(self.cfg, stage)
        checks = {
            "base": lambda: (run_paths.base_export_dir(self.cfg) / "t2t_config.json").exists(),
            "eval": lambda: (Path(self.cfg.eval.out_dir) / "results.json").exists(),
            "report": lambda: (self.run_dir / "report.md").exists(),
        }
        return checks[name]()

    def invalidate(self, name: str) -> None:
        """Set aside a training step's outputs made from other inputs, so their checkpoints are not resumed.

        A finished stage (its export written) is kept as `<stage>.replaced` until the new one is complete:
        a rerun that fails loses nothing finished. Unfinished checkpoints of other inputs are removed."""
        from t2t.train.export import TRAIN_INFO

        finished_from = self.state.pop(name, None)
        self.save_state()
        stage, what = step_parts(name)
        if what != "train":
            return
        stage_dir = run_paths.stage_dir(self.cfg, stage)
        if (run_paths.export_dir(self.cfg, stage) / TRAIN_INFO).is_file():
            aside = run_paths.replaced_dir(self.cfg, stage)
            shutil.rmtree(aside, ignore_errors=True)  # an older one: this stage finished again since
            stage_dir.replace(aside)
            self.state.setdefault("replaced", {})[name] = finished_from  # what `take_back` matches
            self.save_state()
            print(f"{stage_dir} was made from other inputs: kept as {aside} until its replacement is complete",
                  flush=True)
        else:
            shutil.rmtree(stage_dir, ignore_errors=True)

    def take_back(self, name: str, fp: str) -> Path | None:
        """A training step whose set-aside finished stage (`invalidate`) was made from exactly these inputs, as
        when a recipe change is undone after its run failed: that stage is moved back instead of retrained.
        Returns where it came from, or None. What stands in its place, made from other inputs, goes."""
        from t2t.train.export import TRAIN_INFO

        stage, what = step_parts(name)
        aside = run_paths.replaced_dir(self.cfg, stage)
        if what != "train" or self.state.get("replaced", {}).get(name) != fp or \
                not (aside / run_paths.export_dir(self.cfg, stage).name / TRAIN_INFO).is_file():
            return None
        stage_dir = run_paths.stage_dir(self.cfg, stage)
        shutil.rmtree(stage_dir, ignore_errors=True)
        aside.replace(stage_dir)
        del self.state["replaced"][name]
        self.state[name] = self.state.setdefault("started", {})[name] = fp
        self.save_state()
        return aside

    def drop_replaced(self, name: str) -> None:
        """The step finished again: the finished outputs it replaced can go."""
        stage, what = step_parts(name)
        if what == "train":
            shutil.rmtree(run_paths.replaced_dir(self.cfg, stage), ignore_errors=True)
            if self.state.get("replaced", {}).pop(name, None) is not None:
                self.save_state()

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
            needs_a_fix = isinstance(e, UserError) or getattr(e, "needs_a_fix", False)
            raise StepFailed(f"step {name} failed: {e} (log: {log_file})", needs_a_fix) from e
        finally:
            root.removeHandler(handler)
            handler.close()

    # ------------------------------------------------------------------ steps

    def step_base(self) -> None:
        def run():
            from t2t.model import export, from_config

            export(from_config(self.cfg.model, dtype="float32"), run_paths.base_export_dir(self.cfg))

        self.logged("base", run)

    def step_targets(self, stage: str) -> None:
        from t2t.jobs.targets import run_targets, targets_here

        if not targets_here(self.cfg, stage, self.ray_address):  # one Ray session for all the steps that use it
            self.ensure_ray()
        self.logged(f"{stage}-targets", lambda: run_targets(self.cfg, stage, ray_address=self.ray_address,
                                                            overwrite=True))

    def step_train(self, stage: str) -> None:
        from t2t.train.launch import TrainingStopped, launch_local

        log_file = self.logs / f"{stage}-train.log"
        try:
            # SIGTERM, SIGINT, SIGHUP: the ranks checkpoint, then TrainingStopped names the checkpoint
            launch_local(self.config_path, self.overrides, stage, self.cfg.train.nproc, log_file)
        except TrainingStopped as e:
            raise StepFailed(f"step {stage}:train: {e}") from e
        except Exception as e:  # noqa: BLE001
            where = "" if str(log_file) in str(e) else f" (log: {log_file})"
            raise StepFailed(f"step {stage}:train failed: {e}{where}", getattr(e, "needs_a_fix", False)) from e

    def step_eval(self) -> None:
        from t2t.eval import run_eval
        from t2t.eval.runner import automatic_workers

        e = self.cfg.eval
        workers = e.workers or automatic_workers(self.ray_address, e.gpus_per_worker)
        dirs = [str(run_paths.base_export_dir(self.cfg))]
        names = [f"{self.cfg.name}-M0-start"]
        for i, stage in enumerate(self.cfg.stage_names, start=1):
            dirs.append(str(run_paths.export_dir(self.cfg, stage)))
            names.append(f"{self.cfg.name}-M{i}-{stage}")
        if workers == 1 and not self.ray_address:
            self.stop_ray()  # one worker in this process: the targets' idle Ray would only share its cores
        else:
            self.ensure_ray()
        self.logged("eval", lambda: run_eval(dirs, tasks=e.tasks, benchmark=e.benchmark, workers=workers,
                                             out_dir=e.out_dir, batch_size=e.batch_size, dtype=e.dtype,
                                             ray_address=self.ray_address, names=names))

    def step_report(self) -> None:
        from t2t.report import write_report

        self.logged("report", lambda: write_report(self.cfg, self.config_path, self.overrides))


def run_pipeline(config_path: str | None = None, overrides: list[str] = (), ray_address: str | None = None,
                 until: str | None = None, verify: bool = False, deepspeed_checked: bool = False) -> Path:
    """Run (or resume) the pipeline; returns the report path."""
    pipeline = Pipeline(config_path, list(overrides), ray_address, verify=verify, deepspeed_checked=deepspeed_checked)
    if until is not None and until not in pipeline.steps:
        raise UserError(f"--until must be one of {', '.join(pipeline.steps)}; got {until!r}")
    return pipeline.run(until)


def run_and_tell(config_path: str | None, overrides: list[str], ray_address: str | None = None,
                 until: str | None = None, verify: bool = False, deepspeed_checked: bool = False) -> int:
    """`t2t pipeline` (and a sweep's step job): run, say how it ended, return the exit code (1: a step failed)."""
    try:
        report = run_pipeline(config_path, overrides, ray_address, until, verify, deepspeed_checked)
    except StepFailed as e:
        then = ("once that is fixed, the same command goes on from this step" if e.needs_a_fix
                else "rerun the same command to resume")
        print(f"t2t pipeline: {e}\nfinished steps are kept; {then}", file=sys.stderr)
        return 1
    if until in (None, "report"):
        print(f"done: {report}")
    else:  # the report is written by the last step only
        print(f"done up to {until} in {report.parent}; rerun without --until to go on")
    return 0


__all__ = ["run_pipeline", "run_and_tell", "Pipeline", "StepFailed", "step_names", "step_parts", "DEMO_RECIPE"]
