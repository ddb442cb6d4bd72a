"""The `sweepflow` command. Every command takes the same --config FILE and key=value options,
so each finds the same tracking store."""

from __future__ import annotations

import errno
import gc
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from sweepflow import console as sweepflow_console
from sweepflow import interrupts
from sweepflow.config import SweepflowConfig, load_config
from sweepflow.usererrors import UserError

if TYPE_CHECKING:  # imported where used: `sweepflow --help` stays fast
    from sweepflow.tracking import Tracker

console = Console()
DATA_ON_STDOUT = {"predict", "serve-model"}  # their errors go to stderr
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Commands(TyperGroup):
    """The command group; user errors, signals and a full disk end any command here, each
    as one line (the traceback too with -v) and its exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except UserError as err:
            _fail(ctx, err.kind, err, err.exit_code)
        except (KeyboardInterrupt, SystemExit):
            # Lightning turns a KeyboardInterrupt inside `fit` into SystemExit(1)
            if interrupts.received():
                _fail(ctx, None, interrupts.line(), interrupts.exit_code())
            raise
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            what = ("the trial was marked FAIL and its model folder was not written"
                    if ctx.invoked_subcommand == "run" else "the command stopped")
            _fail(ctx, "disk full", f"{err.strerror}: {err.filename or 'writing the store'}; "
                  f"{what}", 1)


app = typer.Typer(cls=Commands, help="Fine-tune transformer text classifiers in Optuna sweeps, "
                  "run as Prefect flows, tracked in MLflow.", no_args_is_help=True)
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


class PromoteUsage(UserError):
    kind = "promote error"
    exit_code = 2


def _config(config: Path | None, overrides: list[str] | None) -> SweepflowConfig:
    return load_config(config, overrides or [])


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


def _fail(ctx: click.Context, kind: str | None, err: BaseException | str, code: int
          ) -> NoReturn:
    """One line, `kind: message` (the traceback only with -v), then exit `code`."""
    out = Console(stderr=True) if ctx.invoked_subcommand in DATA_ON_STDOUT else console
    if sweepflow_console.is_verbose() and isinstance(err, BaseException):
        Console(stderr=True).print_exception(show_locals=False)
    label = f"[red]{kind}:[/red] " if kind else ""
    out.print(f"{label}{err}", soft_wrap=True, highlight=False)
    raise typer.Exit(code) from None


@app.command()
def run(config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Run the pipeline: ingest -> tokenize -> sweep -> evaluate."""
    cfg = _config(config, overrides)
    interrupts.install()
    _open_store(cfg)
    from sweepflow.flows.pipeline import pipeline_flow
    from sweepflow.flows.team import check_prefect_access, local_workers
    from sweepflow.flows.tempserver import temporary_server
    from sweepflow.tasks.summary import print_summary

    check_prefect_access()
    # sweep.workers > 1: Prefect workers here for the sweep
    with temporary_server(), local_workers(cfg):
        summary = pipeline_flow(cfg)
    print_summary(summary, console)


@app.command()
def serve(config: ConfigOpt = None, overrides: Overrides = None,
          name: Annotated[str | None, typer.Option(help="Deployment name (default: "
                                                   "tracking.experiment).")] = None) -> None:
    """Serve the pipeline as a Prefect deployment on schedule.cron or schedule.interval."""
    cfg = _config(config, overrides)
    from sweepflow.flows.serve import pipeline_schedule, prefect_api, serve_pipeline

    pipeline_schedule(cfg)
    api = prefect_api()
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

    text = generate(cfg)
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
          host: Annotated[str, typer.Option(help="Address the servers bind to; beyond "
                                                 "loopback they require credentials.")
                          ] = "127.0.0.1",
          mlflow_port: Annotated[int, typer.Option()] = 5000,
          prefect_port: Annotated[int, typer.Option()] = 4200,
          prefix: Annotated[str, typer.Option(help="Database name prefix.")] = "sweepflow",
          secrets: Annotated[Path | None, typer.Option(
              envvar="SWEEPFLOW_SECRETS", help="The servers' credentials (KEY=value lines, "
              "mode 600, outside the repo), created with new ones if missing; else "
              "MLFLOW_TRACKING_USERNAME/PASSWORD and PREFECT_API_AUTH_STRING from the "
              "environment.")] = None
          ) -> None:
    """Start a local team stack: PostgreSQL databases for Optuna, MLflow and Prefect, an
    MLflow server (proxied artifacts) and a Prefect server on them; Ctrl-C stops it."""
    from urllib.parse import urlsplit

    from sweepflow.credentials import is_loopback, load_credentials, write_new_secrets
    from sweepflow.stack import pg_server_url, started_stack

    interrupts.install()
    if secrets is not None and not secrets.exists():
        write_new_secrets(secrets)
        console.print(f"wrote new credentials to {secrets} (mode 600)", soft_wrap=True,
                      highlight=False)
    creds = load_credentials(secrets, os.environ)
    try:
        with started_stack(home.resolve(), prefix, host, mlflow_port, prefect_port,
                           credentials=creds) as st:
            console.print(f"Team stack up on PostgreSQL {pg_server_url()} (logs in {st.logs}). "
                          "In every shell that runs sweeps or workers:", soft_wrap=True)
            console.print("\n".join(st.exports()), soft_wrap=True, highlight=False)
            if creds is not None:
                console.print(f"MLflow and Prefect ask for the credentials of {creds.source}"
                              "; PostgreSQL asks for a password only where its pg_hba.conf "
                              "says scram-sha-256 (PGPASSWORD or PGPASSFILE on the clients)",
                              soft_wrap=True, highlight=False)
            if not is_loopback(host) and is_loopback(urlsplit(pg_server_url()).hostname or ""):
                console.print(f"Workers reach the study database by an address they can "
                              f"reach, not {pg_server_url()}", soft_wrap=True, highlight=False)
            console.print("Then: sweepflow run " + " ".join(st.overrides()) + "\nMore workers "
                          "(any machine reaching these servers): prefect worker start --pool "
                          "sweepflow\nCtrl-C stops the stack.", soft_wrap=True, highlight=False)
            signal.pause()
    except KeyboardInterrupt:  # the way to stop it
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
    """Label texts with a registered model: one JSON line per text (text, text_pair for a
    pair, label and probability; a multi-label model: labels and every label's
    probabilities). A lone '-' among the texts reads more texts from stdin."""
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
    loaded = load_model(tracker, model, cfg.tokenize.long_texts().max_length, trust_model)
    with Progress(TextColumn("labelling"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=errors, transient=True,
                  disable=len(texts) < PROGRESS_FROM or not errors.is_terminal) as bar:
        task = bar.add_task("predict", total=len(texts))
        predictions = label_texts(loaded, texts, progress=lambda n: bar.advance(task, n))
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
    from sweepflow.tasks.serving import checked_model, serve_command, serve_env

    cfg = _config(config, overrides)
    uri = model or champion_uri(cfg)
    tracker = _open_store(cfg, study=False)
    served = checked_model(cfg, tracker, uri)
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
    tracker = _open_store(cfg)
    name, uri, client = experiment or cfg.tracking.experiment, tracker.uri, tracker.client
    exp = client.get_experiment_by_name(name)
    runs = cmp.last_sweeps(client, exp.experiment_id, last) if exp else []
    if not runs:
        console.print(f"[red]no sweeps[/red] in experiment '{name}' ({uri})")
        raise typer.Exit(1)
    console.print(cmp.comparison_table([cmp.sweep_row(r) for r in runs]))
    if html or png:
        written = cmp.write_comparison(client, runs, study_storage(cfg), html, png)
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
        raise PromoteUsage("give a VERSION or --rollback, and --reason")
    tracker = _open_store(cfg, study=False)
    new, old = promote_by_hand(cfg, tracker, version, reason.strip(), by or getpass.getuser())
    console.print(f"{registered_name(cfg)}: champion v{old or '-'} -> v{new} ({reason.strip()})",
                  soft_wrap=True, highlight=False)


def main() -> None:  # pragma: no cover - console script entry (tests call `app`)
    """`sweepflow`: the Typer app, then the ordinary interpreter exit (exit handlers, Prefect
    draining its queues, flushed output)."""
    try:
        app()
    finally:
        # Measured (docs/throughput.md): after a run, the garbage collections of interpreter
        # finalization walked ~970k objects (torch, transformers, MLflow, Prefect) for 4-6 s;
        # frozen objects are left to reference counting, and the exit takes 0.6-0.8 s.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
