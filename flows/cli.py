"""The `sweepflow` command. Every command takes the same --config FILE and key=value options,
so each finds the same tracking store."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from sweepflow import console as sweepflow_console
from sweepflow import interrupts, tempserver
from sweepflow.config import ConfigError, SweepflowConfig, load_config
from sweepflow.usererrors import UserError

if TYPE_CHECKING:  # imported where used: `sweepflow --help` stays fast
    from sweepflow.tracking import Tracker

app = typer.Typer(help="Fine-tune transformer text classifiers in Optuna sweeps, "
                       "run as Prefect flows, tracked in MLflow.", no_args_is_help=True)
console = Console()
PROGRESS_FROM = 500  # predict shows a progress bar (on a terminal) from this many texts

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML that "
                                                "overlays conf/base.yaml.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. "
                                                        "sweep.n_trials=2")]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the libraries' full logs (Prefect, Lightning, MLflow, "
                                "transformers) and warnings.")] = False) -> None:
    """Fine-tune transformer text classifiers in Optuna sweeps, run as Prefect flows,
    tracked in MLflow."""
    sweepflow_console.configure(verbose)


def _config(config: Path | None, overrides: list[str] | None) -> SweepflowConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        _fail("config error", err, 2)


def _open_store(cfg: SweepflowConfig, study: bool = True) -> Tracker:
    """Before any work: the stores are readable, and what a dead process left RUNNING on
    them is closed (one line says so). Returns the tracker on the store (the experiment is
    not created: a command that reads the store leaves it as it was)."""
    from sweepflow.tasks.sweep import study_storage

    from sweepflow import reaper, stores
    from sweepflow.tracking import Tracker

    tracker = Tracker.open(cfg, create=False)  # checks the MLflow store first
    storage = study_storage(cfg) if study else None
    stores.check(storage)
    line = reaper.reap(tracker.client, storage)
    if line:
        console.print(line, soft_wrap=True, highlight=False)
    return tracker


def _fail(kind: str, err: BaseException | str, code: int) -> NoReturn:
    """A user error: one line (the traceback only with -v), then exit `code`."""
    if sweepflow_console.is_verbose():
        Console(stderr=True).print_exception(show_locals=False)
    console.print(f"[red]{kind}:[/red] {err}", soft_wrap=True, highlight=False)
    raise typer.Exit(code) from None


def _interrupted() -> NoReturn:
    console.print(interrupts.line(), soft_wrap=True, highlight=False)
    raise typer.Exit(interrupts.exit_code()) from None


def _user_error(err: Exception) -> None:
    """Exit with one line if `err` is a user error; return otherwise."""
    from sweepflow.flows.team import TeamError
    from sweepflow.tasks.ingest import DataError
    from sweepflow.tasks.sweep_report import NoCompleteTrial

    if isinstance(err, ConfigError):  # also found once the store is read (pruning signal)
        _fail("config error", err, 2)
    if isinstance(err, UserError):
        _fail(err.kind, err, 2)
    if isinstance(err, TeamError):
        _fail("team error", err, 2)
    if isinstance(err, DataError):
        _fail("data error", err, 1)
    if isinstance(err, NoCompleteTrial):
        _fail("sweep error", err, 1)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        _fail("disk full", f"{err.strerror}: {err.filename or 'writing the store'}; the "
              "trial was marked FAIL and its model folder was not written", 1)


@app.command()
def run(config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Run the pipeline: ingest -> tokenize -> sweep -> evaluate."""
    cfg = _config(config, overrides)
    interrupts.install()
    try:
        _open_store(cfg)
        tempserver.start()
        from sweepflow.flows.pipeline import pipeline_flow
        from sweepflow.flows.team import local_workers
        from sweepflow.tasks.summary import print_summary

        with local_workers(cfg):  # sweep.workers > 1: Prefect workers here for the sweep
            summary = pipeline_flow(cfg)
    except (KeyboardInterrupt, SystemExit):
        if interrupts.received():
            _interrupted()
        raise
    except Exception as err:  # noqa: BLE001 - sorted into user errors and the rest
        _user_error(err)
        raise
    print_summary(summary, console)


@app.command()
def serve(config: ConfigOpt = None, overrides: Overrides = None,
          name: Annotated[str | None, typer.Option(help="Deployment name (default: "
                                                   "tracking.experiment).")] = None) -> None:
    """Serve the pipeline as a Prefect deployment on schedule.cron or schedule.interval."""
    cfg = _config(config, overrides)
    from sweepflow.flows.serve import ServeError, pipeline_schedule, prefect_api, serve_pipeline

    try:
        pipeline_schedule(cfg)
    except ConfigError as err:
        console.print(f"[red]config error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        api = prefect_api()
    except ServeError as err:
        console.print(f"[red]serve error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"Serving [bold]pipeline/{name or cfg.tracking.experiment}[/bold] on {api}; "
                  "Ctrl-C stops and pauses the schedule", soft_wrap=True)
    serve_pipeline(cfg, name)


@app.command("deploy-file")
def deploy_file(config: ConfigOpt = None, overrides: Overrides = None,
                out: Annotated[Path, typer.Option(help="File to write.")] = Path(
                    "prefect.yaml")) -> None:
    """Write prefect.yaml (for `prefect deploy`) from the config's schedule and work pool."""
    cfg = _config(config, overrides)
    from sweepflow.flows.serve import deploy_file as generate

    try:
        text = generate(cfg)
    except ConfigError as err:
        _fail("config error", err, 2)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    console.print(f"wrote {out}", soft_wrap=True, highlight=False)


@app.command()
def ui(config: ConfigOpt = None, overrides: Overrides = None,
       port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000) -> None:
    """Start the MLflow UI on the project's tracking store, bound to 127.0.0.1."""
    from sweepflow import tracking

    cfg = _config(config, overrides)
    tracker = tracking.Tracker.open(cfg)  # the experiment exists for the link below
    uri = tracker.uri
    url = f"http://127.0.0.1:{port}"
    runs = f"{url}/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    console.print(f"MLflow UI on [bold]{url}[/bold] (store {uri}); Ctrl-C stops\n"
                  f"experiment '{cfg.tracking.experiment}': {runs}", soft_wrap=True)
    # `mlflow ui` is an alias of `mlflow server`. Runs keep the artifact location of their
    # experiment; --artifacts-destination only keeps uploads through the UI out of the cwd.
    # The server's job runner serves GenAI features only; off, it saves seven processes.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    artifacts = tracking.artifact_location(cfg, uri) or \
        (tracking.store_dir() / "artifacts").as_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--artifacts-destination", artifacts,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    os.execv(sys.executable, cmd)


@app.command()
def stack(home: Annotated[Path, typer.Option(help="State and logs of the servers.")] = Path(
              "mlruns/team-stack"),
          host: Annotated[str, typer.Option(help="Address the servers bind to.")] = "127.0.0.1",
          mlflow_port: Annotated[int, typer.Option()] = 5000,
          prefect_port: Annotated[int, typer.Option()] = 4200,
          prefix: Annotated[str, typer.Option(help="Database name prefix.")] = "sweepflow"
          ) -> None:
    """Start a local team stack: PostgreSQL databases for Optuna, MLflow and Prefect, an
    MLflow server (proxied artifacts) and a Prefect server on them; Ctrl-C stops it."""
    from sweepflow.stack import StackError, pg_server_url, started_stack

    interrupts.install()
    try:
        with started_stack(home.resolve(), prefix, host, mlflow_port, prefect_port) as st:
            console.print(f"Team stack up on PostgreSQL {pg_server_url()} (logs in {st.logs}). "
                          "In every shell that runs sweeps or workers:", soft_wrap=True)
            console.print("\n".join(st.exports()), soft_wrap=True, highlight=False)
            console.print("Then: sweepflow run " + " ".join(st.overrides()) + "\nMore workers "
                          "(any machine reaching these servers): prefect worker start --pool "
                          "sweepflow\nCtrl-C stops the stack.", soft_wrap=True, highlight=False)
            signal.pause()
    except StackError as err:
        console.print(f"[red]stack error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("team stack stopped")


def _split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, texts): an argument is a key=value override when its key is a config
    section or a dotted key under one (data.…, tracking.…, registry.…); the rest are texts."""
    import re

    sections = "|".join(SweepflowConfig.model_fields)
    is_override = re.compile(rf"(?:{sections})(?:\.[\w-]+)*=").match
    return ([a for a in args if is_override(a)], [a for a in args if not is_override(a)])


Texts = Annotated[list[str] | None, typer.Argument(
    help="Texts to label, mixed with key=value overrides (an argument is an override when "
         "its key starts with a config section, e.g. tracking.experiment=x).")]


@app.command()
def predict(args: Texts = None, config: ConfigOpt = None,
            model: Annotated[str | None, typer.Option(
                help="MLflow model URI or folder [default: models:/<registry.model_name or "
                     "tracking.experiment>@champion-int8 when it is the int8 twin of the "
                     "champion, else @champion].")] = None,
            pair: Annotated[list[str] | None, typer.Option(
                "--pair", help="The second text of a sentence pair, once per TEXT in order "
                               "(a pair model); a .csv / .jsonl file gives pairs in columns "
                               "text and text_pair.")] = None,
            file: Annotated[Path | None, typer.Option(
                "--file", "-f", help="More texts: one per line, or the data.text_column of "
                                     "a .csv / .jsonl file; '-' reads stdin.")] = None,
            trust_model: Annotated[bool, typer.Option(
                "--trust-model", help="Load a model even if its files can run code when "
                                      "loaded (pickles, other MLflow flavors). Only for "
                                      "models whose source you trust.")] = False) -> None:
    """Label texts with a registered model: one JSON line per text (text, label,
    probability). A lone '-' among the texts reads more texts from stdin."""
    import json

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from sweepflow.tasks.predict import (
        PredictError,
        check_texts,
        default_model,
        load_model,
        read_texts,
    )
    from sweepflow.tasks.predict import predict as label_texts

    overrides, texts = _split_overrides(args or [])
    cfg = _config(config, overrides)
    errors = Console(stderr=True)
    try:
        if "-" in texts:
            texts = [t for t in texts if t != "-"] + read_texts(Path("-"), "")
        if pair:
            if len(pair) != len(texts):
                raise PredictError(f"{len(texts)} texts and {len(pair)} --pair texts: give "
                                   "one --pair per text")
            texts = list(zip(texts, pair, strict=True))
        texts += read_texts(file, cfg.data.text_columns[0]) if file else []
        if not texts:
            raise PredictError("no text: give TEXT arguments, --file FILE or - (stdin)")
        check_texts(texts)
        tracker = _open_store(cfg, study=False)
        if model is None:
            model, what = default_model(cfg, tracker.client)
            errors.print(f"model: {model} ({what})", soft_wrap=True, highlight=False)
        loaded = load_model(tracker, model, cfg.tokenize.max_length, trust_model)
        with Progress(TextColumn("labelling"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=errors, transient=True,
                      disable=len(texts) < PROGRESS_FROM or not errors.is_terminal) as bar:
            task = bar.add_task("predict", total=len(texts))
            predictions = label_texts(loaded, texts,
                                      progress=lambda n: bar.advance(task, n))
    except PredictError as err:
        errors.print(f"[red]predict error:[/red] {err}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    except UserError as err:
        errors.print(f"[red]{err.kind}:[/red] {err}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    for prediction in predictions:
        typer.echo(json.dumps(prediction.model_dump(exclude_none=True), ensure_ascii=False))


@app.command("serve-model")
def serve_model(config: ConfigOpt = None, overrides: Overrides = None,
                model: Annotated[str | None, typer.Option(
                    help="MLflow model URI [default: models:/<registry.model_name or "
                         "tracking.experiment>@champion]; e.g. models:/NAME@champion-int8.")
                ] = None,
                host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
                port: Annotated[int, typer.Option(help="Port.")] = 5001) -> None:
    """Serve a registered model over HTTP with MLflow's scoring server: POST
    {"inputs": ["text", ...]} to /invocations; labels and probabilities come back."""
    from sweepflow.tasks.register import champion_uri
    from sweepflow.tasks.serving import ServeError, serve_command, serve_env, served_model

    cfg = _config(config, overrides)
    uri = model or champion_uri(cfg)
    try:
        tracker = _open_store(cfg, study=False)
        from sweepflow.modelsafety import check_model, fetch_model

        served = served_model(cfg, tracker, uri)  # a missing model: ServeError, one line
        check_model(fetch_model(uri))  # a pickled pyfunc would run code in the server
    except ServeError as err:
        Console(stderr=True).print(f"[red]serve error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    except UserError as err:
        Console(stderr=True).print(f"[red]{err.kind}:[/red] {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"Serving [bold]{uri}[/bold] on http://{host}:{port}/invocations "
                  "(MLflow scoring server); Ctrl-C stops", soft_wrap=True)
    os.execve(sys.executable, serve_command(served, host, port), serve_env(tracker.uri))


@app.command()
def compare(config: ConfigOpt = None, overrides: Overrides = None,
            experiment: Annotated[str | None, typer.Option(
                help="Experiment to read [default: tracking.experiment].")] = None,
            last: Annotated[int, typer.Option(min=1, help="How many sweeps.")] = 5,
            html: Annotated[Path | None, typer.Option(
                help="Write the best-so-far curves of these sweeps as HTML.")] = None,
            png: Annotated[Path | None, typer.Option(
                help="Write the same figure as PNG.")] = None) -> None:
    """Compare the last N sweeps side by side: trials, scores, params, time, data."""
    from sweepflow.tasks import compare as cmp
    from sweepflow.tasks.sweep import study_storage

    cfg = _config(config, overrides)
    try:
        tracker = _open_store(cfg)
    except UserError as err:
        _fail(err.kind, err, 2)
    name, uri, client = experiment or cfg.tracking.experiment, tracker.uri, tracker.client
    exp = client.get_experiment_by_name(name)
    runs = cmp.last_sweeps(client, exp.experiment_id, last) if exp else []
    if not runs:
        console.print(f"[red]no sweeps[/red] in experiment '{name}' ({uri})")
        raise typer.Exit(1)
    console.print(cmp.comparison_table([cmp.sweep_row(r) for r in runs]))
    if html or png:
        try:
            written = cmp.write_comparison(client, runs, study_storage(cfg), html, png)
        except ValueError as err:
            console.print(f"[red]no figure:[/red] {err}")
            raise typer.Exit(1) from None
        console.print("best-so-far curves: " + ", ".join(str(p) for p in written))


@app.command()
def promote(version: Annotated[int | None, typer.Argument(
                help="Model version to make the champion.")] = None,
            reason: Annotated[str, typer.Option("--reason", "-r",
                                                help="Why (recorded on the version).")] = "",
            rollback: Annotated[bool, typer.Option(
                "--rollback", help="Back to the champion before the current one.")] = False,
            by: Annotated[str | None, typer.Option(
                help="Who decides [default: your login name].")] = None,
            config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Move the champion by hand (or roll it back), recorded on the model version with who,
    when and why; champion-int8 follows."""
    import getpass

    from sweepflow.tasks.register import promote_by_hand, registered_name

    cfg = _config(config, overrides)
    if (version is None) == (not rollback) or not reason.strip():
        _fail("promote error", "give a VERSION or --rollback, and --reason", 2)
    from mlflow.exceptions import MlflowException

    try:
        tracker = _open_store(cfg, study=False)
        new, old = promote_by_hand(cfg, tracker, version, reason.strip(),
                                   by or getpass.getuser())
    except (ValueError, MlflowException) as err:
        _fail("promote error", getattr(err, "message", str(err)), 1)
    except UserError as err:
        _fail(err.kind, err, 2)
    console.print(f"{registered_name(cfg)}: champion v{old or '-'} -> v{new} ({reason.strip()})",
                  soft_wrap=True, highlight=False)


_exit_status = 1  # until main() knows better: an uncaught exception exits 1


def _leave_without_teardown() -> None:
    """Last exit handler: end the process once everything that matters has run.

    By the time atexit handlers run, Python has joined non-daemon threads, and the handlers
    registered after this one (LIFO: Prefect draining its log and event queues, MLflow,
    tqdm...) have run. What is left is freeing the modules and objects of torch,
    transformers, mlflow and prefect one by one: 3.5 s after a `sweepflow run` whose
    results were all written. Streams and log handlers are flushed, then os._exit."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_exit_status)


def main() -> None:  # pragma: no cover - console script entry (tests call `app`)
    """`sweepflow`: the Typer app, leaving without interpreter teardown (see above);
    SWEEPFLOW_FAST_EXIT=0 exits the ordinary way."""
    global _exit_status
    if os.environ.get("SWEEPFLOW_FAST_EXIT") != "0":
        import atexit

        atexit.register(_leave_without_teardown)
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        _exit_status = code if isinstance(code, int) else (0 if code is None else 1)
        raise
    _exit_status = 0


if __name__ == "__main__":  # pragma: no cover
    main()
