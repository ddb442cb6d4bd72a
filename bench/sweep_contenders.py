"""Sweep level (issue 25, points 1 and 2): one sweep of one contender, or one reference config,
in a fresh process. Run by bench/sweep_level.py as

    python -m bench.sweep_contenders NAME --seed S --trials N --cap SECONDS --work DIR \
        --out FILE key=value...
    python -m bench.sweep_contenders reference --params JSON --seeds 42,7,13 --work DIR \
        --out FILE key=value...

The key=value overrides name the data, already tokenized by the parent (`seed=` there is the
data seed): every contender reads the same token ids from sweepflow's tokenized splits. A
sweep's own seed (`--seed`) seeds its sampler and its trainings, never the split.

Each sweep has a clock that starts after the imports, when the sweep starts (data loading,
model loads, validations and saving the best model are on it). Every trial records when it
ended on that clock, its optimizer steps, the validation macro-F1 the contender ranks it by
and whether the contender may hand it over. The model a contender would hand over is saved
when it becomes the best by validation; after the sweep, off the clock, every model that was
ever the chosen one is scored on the test split by sweepflow's own prediction
(tasks/evaluate.py predict_test): the best-so-far curve is the chosen model's test macro-F1
after each trial.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import BATCH_SIZE, write_json

PEERS = ("hf_optuna", "ray_asha", "optuna_pl")  # the other frameworks; the rest is sweepflow
EVAL_BATCH = 128  # every contender's validation batch (sweepflow's train.eval_batch_size)
# sweepflow's search-space names that TrainingArguments spells otherwise (transformers 5:
# warmup_steps < 1 is a ratio of the training steps; there is no warmup_ratio).
HF_NAMES = {"warmup_ratio": "warmup_steps"}


def load_tokens(overrides: list[str]) -> tuple[Any, Any]:
    from bench.quality import load_tokens as load

    return load(overrides)


def score(model_dir: Path, tokens: Any, precision: str) -> dict[str, Any]:
    """Test macro-F1 and accuracy of a saved model, predicted as sweepflow's evaluate does
    (length-sorted batches of 128, the training precision's autocast)."""
    from sklearn.metrics import accuracy_score, f1_score
    from sweepflow.tasks.evaluate import predict_test
    from sweepflow.tasks.train import load_rows

    labels = load_rows(tokens.path)["test"].labels
    pred = predict_test(model_dir, tokens, EVAL_BATCH, precision).tolist()
    return {"test_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
            "test_accuracy": float(accuracy_score(labels, pred)),
            "classes_predicted": len(set(pred))}


def timeline(trials: list[dict[str, Any]], snapshots: dict[int, Path], tokens: Any,
             precision: str) -> list[dict[str, Any]]:
    """The trials in the order they ended, each with the model the contender would hand over
    after it (the eligible trial with the highest validation value, the first of equals) and
    that model's test scores."""
    best: dict[str, Any] | None = None
    scored: dict[int, dict[str, Any]] = {}
    out = []
    for trial in sorted(trials, key=lambda t: (t["end_seconds"], t["number"])):
        if trial["eligible"] and trial["value"] is not None and (
                best is None or trial["value"] > best["value"]):
            best = trial
        chosen = None if best is None else best["number"]
        if chosen is not None and chosen not in scored:
            path = snapshots.get(chosen)
            scored[chosen] = score(path, tokens, precision) if path and path.is_dir() else {
                "test_f1": None, "note": "the chosen model was not saved"}
        out.append({**trial, "chosen": chosen, **(scored.get(chosen) or {"test_f1": None})})
    return out


def finish(name: str, args: argparse.Namespace, trials: list[dict[str, Any]],
           snapshots: dict[int, Path], tokens: Any, precision: str, seconds: float,
           settings: dict[str, Any]) -> dict[str, Any]:
    curve = timeline(trials, snapshots, tokens, precision)
    return {"name": name, "seed": args.seed, "trials_asked": args.trials,
            "cap_seconds": args.cap, "seconds": seconds, "precision": precision,
            "settings": settings, "trials": curve,
            "steps": sum(t["steps"] for t in curve)}


# -- sweepflow (its default sweep) and random search without pruning ------------------------

class Snapshots(threading.Thread):
    """Hard links of every model the sweep keeps. sweepflow saves a trial's model only when it
    becomes the best on its basis and removes it when beaten; the links outlive the removal.
    Polls the folder 4 times a second (a listing: no measurable load)."""

    def __init__(self, folder: Path, into: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.into = folder, into
        self.found: dict[int, Path] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            self.scan()

    def scan(self) -> None:
        for path in self.folder.glob("trial-*"):
            number = int(path.name.removeprefix("trial-"))
            if number not in self.found:
                try:
                    shutil.copytree(path, self.into / path.name, copy_function=os.link)
                    self.found[number] = self.into / path.name
                except (OSError, shutil.Error):  # removed meanwhile: the next scan decides
                    shutil.rmtree(self.into / path.name, ignore_errors=True)

    def stop(self) -> dict[int, Path]:
        self.done.set()
        self.join()
        self.scan()
        return self.found


def run_sweepflow(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """flows.sweep.sweep_flow as the pipeline runs it (a parent MLflow run, the bench's
    Prefect server), the default sweep settings plus `extra`; with sweep.workers > 1 the
    Prefect worker starts here for the sweep, as `sweepflow run` starts it."""
    from datetime import datetime

    import optuna
    from sweepflow.flows.sweep import sweep_flow
    from sweepflow.flows.team import local_workers
    from sweepflow.tasks.sweep import basis, study_storage

    from sweepflow import storage
    from sweepflow.config import load_config
    from sweepflow.paths import models_dir, shared_dir
    from sweepflow.tracking import Tracker

    _, tokens = load_tokens(args.overrides)
    name = f"sweep-level-{args.name}-{args.seed}-{time.time_ns()}"
    config = load_config(overrides=[*args.overrides, f"seed={args.seed}",
                                    f"sweep.n_trials={args.trials}",
                                    f"sweep.study_name={name}", *extra])
    kept = models_dir(shared_dir(config.store.shared_dir), name) / basis(tokens)
    watcher = Snapshots(kept, Path(args.work) / "snapshots")
    watcher.start()
    tracker = Tracker.open(config)
    began, start = datetime.now(), time.perf_counter()
    with local_workers(config), tracker.start_run(f"sweep-{name}",
                                                  {"optuna.study": name}) as run:
        sweep_flow(config, tokens, None, run)
    seconds = time.perf_counter() - start
    snapshots = watcher.stop()
    study = optuna.load_study(study_name=name, storage=storage.open_storage(
        study_storage(config), config.sweep))
    steps = _mlflow_steps(tracker, name)
    trials = [{"number": t.number, "state": _state(t.state),
               "value": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
               "steps": steps.get(t.number, 0), "params": t.params,
               "end_seconds": (t.datetime_complete - began).total_seconds()
               if t.datetime_complete else seconds,
               "eligible": t.state == optuna.trial.TrialState.COMPLETE} for t in study.trials]
    s = config.sweep
    settings = {"sampler": s.sampler, "pruner": s.pruner, "pruner_warmup": s.pruner_warmup,
                "pruner_reduction_factor": s.pruner_reduction_factor,
                "pruner_signal": s.pruner_signal,
                "val_checks_per_epoch": config.train.val_checks_per_epoch,
                "batching": config.train.batching, "fast_dropout": config.train.fast_dropout,
                "workers": s.workers, "overrides": [o for o in extra if "://" not in o]}
    return finish(args.name, args, trials, snapshots, tokens, config.train.precision, seconds,
                  settings)


def run_sweepflow_team(args: argparse.Namespace) -> dict[str, Any]:
    """Issue 25 point 5: the default sweep with `sweep.workers=2` on this machine (2 trial
    workers x 1 thread on the bench's Prefect server, a PostgreSQL study and an MLflow server
    on PostgreSQL, as team mode runs), the same trial budget as the sequential sweep. The
    servers start before the sweep's clock and are gone after; needs SWEEPFLOW_PG_URL's
    server (default postgresql://postgres@127.0.0.1:5432)."""
    import uuid
    from contextlib import ExitStack

    from sweepflow.netutil import free_port
    from sweepflow.stack import (
        database_url,
        drop_databases,
        ensure_databases,
        mlflow_command,
        mlflow_env,
        pg_server_url,
        service,
    )

    server, prefix = pg_server_url(), f"sfsweep_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_optuna", f"{prefix}_mlflow"]
    port, work = free_port(), Path(args.work)
    ensure_databases(server, names)
    try:
        with ExitStack() as stack:
            stack.enter_context(service(
                mlflow_command(database_url(server, names[1]), work / "artifacts", "127.0.0.1",
                               port), mlflow_env(dict(os.environ)), work / "mlflow.log",
                f"http://127.0.0.1:{port}/health"))
            return run_sweepflow(args, ("sweep.workers=2", "sweep.workers_per_host=2",
                                        f"sweep.storage={database_url(server, names[0])}",
                                        f"tracking.uri=http://127.0.0.1:{port}"))
    finally:
        drop_databases(server, names)


def _state(state: Any) -> str:
    from optuna.trial import TrialState

    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(state, "failed")


def _mlflow_steps(tracker: Any, study: str) -> dict[int, int]:
    """Each trial's optimizer steps, as its MLflow run's optuna.steps tag says."""
    runs = tracker.client.search_runs([tracker.experiment_id],
                                      f"tags.`optuna.study` = '{study}'", max_results=1000)
    return {int(r.data.tags["optuna.trial_number"]): int(r.data.tags.get("optuna.steps", 0))
            for r in runs if "optuna.trial_number" in r.data.tags}


# -- HF Trainer hyperparameter_search (Optuna backend) --------------------------------------

def run_hf_optuna(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer.hyperparameter_search(backend="optuna") over the same space: TrainingArguments
    defaults (fp32, random batches, eval_strategy "no": one evaluation after training, so
    Optuna's default MedianPruner never acts) but batch 32, evaluation batch 128, the epochs,
    the sweep seed; compute_metrics gives macro-F1 (then HF's default objective is it); the
    sampler is Optuna's default TPE, seeded."""
    import optuna
    from sklearn.metrics import f1_score
    from sweepflow.tasks.sweep import suggest
    from sweepflow.tasks.tokenize import load_tokenized, load_tokenizer
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.trainer_utils import default_compute_objective

    config, tokens = load_tokens(args.overrides)
    snaps, trials, snapshots = Path(args.work) / "snapshots", [], {}
    current: dict[str, Any] = {}

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        current.update(number=trial.number, params=suggest(trial, config.sweep))
        return {HF_NAMES.get(k, k): v for k, v in current["params"].items()}

    def model_init(_trial: Any = None) -> Any:
        return AutoModelForSequenceClassification.from_pretrained(
            tokens.model_path, num_labels=len(tokens.data.label_names))

    def metrics(pred: Any) -> dict[str, float]:
        return {"f1": float(f1_score(pred.label_ids, pred.predictions.argmax(-1),
                                     average="macro", zero_division=0))}

    class Record(TrainerCallback):
        def on_evaluate(self, _args: Any, state: Any, _control: Any, metrics: Any = None,
                        model: Any = None, **_: Any) -> None:
            value = default_compute_objective(metrics)  # what HF tells Optuna
            best = max((t["value"] for t in trials), default=None)
            if best is None or value > best:
                model.save_pretrained(snaps / f"trial-{current['number']}")
                snapshots[current["number"]] = snaps / f"trial-{current['number']}"
            trials.append({"number": current["number"], "state": "complete", "value": value,
                           "steps": state.global_step, "params": current["params"],
                           "end_seconds": time.perf_counter() - start, "eligible": True})

    start = time.perf_counter()
    data = load_tokenized(tokens.path)
    tokenizer = load_tokenizer(tokens.model_path)
    hf_args = TrainingArguments(
        output_dir=str(Path(args.work) / "hf"), per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=EVAL_BATCH, num_train_epochs=config.train.max_epochs,
        warmup_steps=0.0,  # a float: HF casts a searched value to the default's type (int 0)
        seed=args.seed, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model_init=model_init, args=hf_args,
                      train_dataset=data["train"].remove_columns(["length"]),
                      eval_dataset=data["validation"].remove_columns(["length"]),
                      data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer, compute_metrics=metrics, callbacks=[Record()])
    trainer.hyperparameter_search(hp_space=hp_space, n_trials=args.trials, direction="maximize",
                                  backend="optuna", timeout=args.cap,
                                  sampler=optuna.samplers.TPESampler(seed=args.seed))
    settings = {"sampler": "TPESampler(seed) defaults", "pruner": "MedianPruner (Optuna's "
                "default; no intermediate reports with eval_strategy 'no')",
                "eval_strategy": hf_args.eval_strategy.value, "optim": hf_args.optim.value,
                "lr_scheduler": hf_args.lr_scheduler_type.value, "precision": "fp32"}
    return finish(args.name, args, trials, snapshots, tokens, "32-true",
                  time.perf_counter() - start, settings)


# -- a plain Lightning module: Optuna with its pruning callback, and Ray Tune with ASHA -------

def plain_module(model_path: str, num_labels: int, train: Any, params: dict[str, Any]
                 ) -> Any:
    """What a user writes around AutoModelForSequenceClassification (bench/bare_lightning.py
    Classifier): fp32 (Lightning's default), AdamW unfused on every weight, stock dropout,
    linear schedule with warm-up, macro-F1 per validation. `train`: the config's train
    section, `params` laid over it."""
    from bench.bare_lightning import Classifier

    cfg = train.model_copy(update={**params, "fast_dropout": False})
    return Classifier(model_path, num_labels, cfg, fused=False)


def plain_loaders(tokens: Any) -> tuple[Any, Any]:
    """Shuffled training batches of 32 and validation batches of 128, padded per batch."""
    from sweepflow.tasks.tokenize import load_tokenizer
    from sweepflow.tasks.train import load_rows
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    rows = load_rows(tokens.path)
    collate = DataCollatorWithPadding(load_tokenizer(tokens.model_path))
    return (DataLoader(rows["train"], batch_size=BATCH_SIZE, shuffle=True, collate_fn=collate),
            DataLoader(rows["validation"], batch_size=EVAL_BATCH, collate_fn=collate))


def plain_trainer(epochs: int, val_checks: int, callbacks: list[Any]) -> Any:
    """Lightning's defaults (fp32, a sanity validation) but no logger, checkpoints or bars."""
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs,
                      val_check_interval=1.0 / val_checks, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks)


def run_optuna_pl(args: argparse.Namespace) -> dict[str, Any]:
    """Optuna alone: create_study (TPE seeded, Optuna's default MedianPruner) and
    optuna-integration's PyTorchLightningPruningCallback on the plain module, validating as
    often as sweepflow's trials (the callback reports step = epoch, so within one epoch only
    the first validation reaches the pruner). A trial's value is its last validation."""
    import lightning.pytorch as pl
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback
    from sweepflow.tasks.sweep import suggest

    config, tokens = load_tokens(args.overrides)
    snaps, trials, snapshots = Path(args.work) / "snapshots", [], {}

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, config.sweep)
        pl.seed_everything(args.seed, verbose=False)
        module = plain_module(tokens.model_path, len(tokens.data.label_names), config.train,
                              params)
        trainer = plain_trainer(config.train.max_epochs, config.train.val_checks_per_epoch,
                                [PyTorchLightningPruningCallback(trial, monitor="val/f1_macro")])
        record = {"number": trial.number, "params": params, "state": "pruned", "value": None,
                  "eligible": False}
        try:
            trainer.fit(module, *loaders)
        finally:
            trials.append({**record, "steps": trainer.global_step,
                           "end_seconds": time.perf_counter() - start})
        value = float(trainer.callback_metrics["val/f1_macro"])
        if value > max((t["value"] or -1.0 for t in trials), default=-1.0):
            module.model.save_pretrained(snaps / f"trial-{trial.number}")
            snapshots[trial.number] = snaps / f"trial-{trial.number}"
        trials[-1].update(state="complete", value=value, eligible=True,
                          end_seconds=time.perf_counter() - start)
        return value

    start = time.perf_counter()
    loaders = plain_loaders(tokens)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.optimize(objective, n_trials=args.trials, timeout=args.cap)
    settings = {"sampler": "TPESampler(seed) defaults",
                "pruner": type(study.pruner).__name__ + " (Optuna's default)",
                "callback": "optuna_integration.PyTorchLightningPruningCallback",
                "val_checks_per_epoch": config.train.val_checks_per_epoch,
                "precision": "fp32"}
    return finish(args.name, args, trials, snapshots, tokens, "32-true",
                  time.perf_counter() - start, settings)


def ray_space(space: dict[str, Any]) -> dict[str, Any]:
    """sweepflow's search space as Ray Tune distributions."""
    from ray import tune

    from sweepflow.config import CategoricalParam, IntParam

    out = {}
    for name, p in space.items():
        if isinstance(p, CategoricalParam):
            out[name] = tune.choice(p.choices)
        elif isinstance(p, IntParam):
            out[name] = (tune.lograndint if p.log else tune.randint)(p.low, p.high + 1)
        else:
            out[name] = (tune.loguniform if p.log else tune.uniform)(p.low, p.high)
    return out


def ray_trial(params: dict[str, Any], tokens_json: str, seed: int, snaps: str, train: Any
              ) -> None:
    """One Ray Tune trial (in a Ray worker): the plain module, every validation reported with
    tune.report; the weights are saved before each report (ASHA may stop the trial there)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from ray import tune
    from sweepflow.tasks.tokenize import TokenizedData

    started = time.time()
    tokens = TokenizedData.model_validate_json(tokens_json)
    folder = Path(snaps) / tune.get_context().get_trial_id()

    class Report(Callback):
        def on_validation_end(self, trainer: pl.Trainer, module: Any) -> None:
            if trainer.sanity_checking:
                return
            module.model.save_pretrained(folder)
            tune.report({"val_f1": float(trainer.callback_metrics["val/f1_macro"]),
                         "steps": trainer.global_step, "ended": time.time(),
                         "started": started})

    pl.seed_everything(seed, verbose=False)
    module = plain_module(tokens.model_path, len(tokens.data.label_names), train, params)
    trainer = plain_trainer(train.max_epochs, train.val_checks_per_epoch, [Report()])
    trainer.fit(module, *plain_loaders(tokens))


def run_ray_asha(args: argparse.Namespace) -> dict[str, Any]:
    """Ray Tune directly: Tuner with Ray's default search (BasicVariantGenerator: random,
    seeded) and ASHAScheduler defaults (grace_period 1, reduction_factor 4) with max_t the
    validations of one trial, one trial at a time on all cores, time_budget_s the cap. The
    chosen trial is Ray's best result (scope "last": the last reported validation), trials
    that ASHA stopped included."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    config, tokens = load_tokens(args.overrides)
    work, cores = Path(args.work), len(os.sched_getaffinity(0))
    max_t = config.train.val_checks_per_epoch * config.train.max_epochs
    began = time.perf_counter()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths: <= 107 bytes
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
             object_store_memory=100 * 2**20)
    startup = time.perf_counter() - began
    trainable = tune.with_resources(tune.with_parameters(
        ray_trial, tokens_json=tokens.model_dump_json(), seed=args.seed,
        snaps=str(work / "snapshots"), train=config.train), {"cpu": cores})
    tune_config = tune.TuneConfig(
        metric="val_f1", mode="max", num_samples=args.trials, max_concurrent_trials=1,
        scheduler=ASHAScheduler(max_t=max_t), time_budget_s=args.cap,
        search_alg=BasicVariantGenerator(random_state=args.seed))
    tuner = tune.Tuner(trainable, param_space=ray_space(config.sweep.space),
                       tune_config=tune_config, run_config=tune.RunConfig(
                           storage_path=str(work / "ray-results"), name="sweep", verbose=0))
    start_wall, start = time.time(), time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    trials, snapshots = _ray_trials(grid, start_wall, seconds, max_t, work / "snapshots")
    settings = {"search_alg": "BasicVariantGenerator(random_state=seed) (random)",
                "scheduler": f"ASHAScheduler(max_t={max_t}, grace_period=1, "
                             "reduction_factor=4)", "max_concurrent_trials": 1,
                "val_checks_per_epoch": config.train.val_checks_per_epoch,
                "precision": "fp32", "ray_init_seconds": startup}
    return finish(args.name, args, trials, snapshots, tokens, "32-true", seconds, settings)


def _ray_trials(grid: Any, start_wall: float, seconds: float, max_t: int, snaps: Path
                ) -> tuple[list[dict[str, Any]], dict[int, Path]]:
    """Trial records from the ResultGrid, numbered in the order the trials started."""
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        last = None if df is None or df.empty else df.iloc[-1]
        rows.append((result, last))
    rows.sort(key=lambda r: (r[1] is None, r[1]["started"] if r[1] is not None else 0))
    trials, snapshots = [], {}
    for number, (result, last) in enumerate(rows):
        params = dict(result.config)
        if last is None or result.error is not None:
            trials.append({"number": number, "state": "failed", "value": None, "steps": 0,
                           "params": params, "eligible": False, "error": str(result.error),
                           "end_seconds": seconds if last is None
                           else float(last["ended"]) - start_wall})
            continue
        state = "complete" if int(last["training_iteration"]) >= max_t else "pruned"
        trials.append({"number": number, "state": state, "value": float(last["val_f1"]),
                       "steps": int(last["steps"]), "params": params, "eligible": True,
                       "end_seconds": float(last["ended"]) - start_wall})
        snapshots[number] = snaps / str(last["trial_id"])
    return trials, snapshots


# -- the reference grid: one config, every seed, trained fully -------------------------------

def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    """tasks.train.fit as a trial runs it (no pruning, best weights by validation), for each
    seed; the kept weights are scored on the test split."""
    from sweepflow.tasks.train import fit

    config, tokens = load_tokens(args.overrides)
    params = json.loads(args.params)
    cfg = config.train.model_copy(update=params)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        module, fitted = fit(tokens, cfg, seed, config.sweep.metric, "max", [], None,
                             progress=False)
        module.model.load_state_dict(fitted.state)
        folder = Path(args.work) / f"reference-{seed}"
        module.model.save_pretrained(folder)
        seconds = time.perf_counter() - start
        runs.append({"seed": seed, "val_f1": fitted.best_value, "best_step": fitted.best_step,
                     "steps": fitted.steps, "fit_seconds": fitted.seconds, "seconds": seconds,
                     **score(folder, tokens, cfg.precision)})
        shutil.rmtree(folder, ignore_errors=True)
    return {"params": params, "precision": cfg.precision, "runs": runs}


RUNNERS = {"sweepflow": run_sweepflow, "hf_optuna": run_hf_optuna, "ray_asha": run_ray_asha,
           "optuna_pl": run_optuna_pl, "reference": run_reference,
           "random": lambda a: run_sweepflow(a, ("sweep.sampler=random", "sweep.pruner=none")),
           "sweepflow_w2": run_sweepflow_team,
           # the default's sampler without its pruner: what the halving rungs cost or save
           "tpe_no_pruning": lambda a: run_sweepflow(a, ("sweep.pruner=none",)),
           # Gaussian-process BO (Optuna's GPSampler) with and without the default's pruner
           "gp": lambda a: run_sweepflow(a, ("sweep.sampler=gp",)),
           "gp_no_pruning": lambda a: run_sweepflow(a, ("sweep.sampler=gp", "sweep.pruner=none")),
           # the GP modelling the study from its second trial (1 random start-up trial)
           "gp_startup_1": lambda a: run_sweepflow(a, ("sweep.sampler=gp",
                                                       "sweep.sampler_startup_trials=1")),
           "tpe": lambda a: run_sweepflow(a, ("sweep.sampler=tpe",)),  # TPE whatever the default
           # the default without micro-batches: each batch padded as one
           "whole_batches": lambda a: run_sweepflow(a, ("train.micro_batches=1",)),
           # each trial trains with its own seed (seed + trial number)
           "seed_per_trial": lambda a: run_sweepflow(a, ("sweep.seed_per_trial=true",))}
NAMES = tuple(name for name in RUNNERS if name != "reference")  # the sweep contenders


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=tuple(RUNNERS))
    parser.add_argument("--seed", type=int, default=42, help="the sweep's seed")
    parser.add_argument("--seeds", default="42", help="reference: training seeds")
    parser.add_argument("--params", default="{}", help="reference: the config (JSON)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--cap", type=float, default=3600.0, help="seconds")
    parser.add_argument("--work", required=True, help="a folder for saved models")
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    try:
        write_json(args.out, RUNNERS[args.name](args))
    finally:
        shutil.rmtree(Path(args.work) / "snapshots", ignore_errors=True)


if __name__ == "__main__":
    main()
