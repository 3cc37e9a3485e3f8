"""The `wt-run` command line: parse, call one library function, format. Nothing else.

Heavy modules (rich, Fabric, torch, matplotlib) are imported inside the commands that need
them, so `wt-run --help` and `wt-run status` start fast."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from .errors import WtRunError


@dataclass
class AppState:
    config_path: str | None
    _config: Any = field(default=None)

    @property
    def config(self) -> Any:
        if self._config is None:
            from .config import load_config

            self._config = load_config(self.config_path)
        return self._config


pass_state = click.make_pass_decorator(AppState)


class WtRunGroup(click.Group):
    """Turns library errors into `Error: <what> — <fix>` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WtRunError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if exc.filename is None:
                raise
            raise click.ClickException(
                f"{exc.filename}: {exc.strerror or exc} — check that the path is right, that "
                "its directory exists and that you may read and write there") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


run_option = click.option("--run", "run", metavar="ID",
                          help="Run id (default: the newest run).")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Print what would be done and change nothing.")


@click.group(cls=WtRunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="Config file (default: wt-run.yaml, then configs/wt-run.yaml, at the "
                   "repository root).")
@click.version_option(package_name="wt-run")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Run experiment variants in parallel, one git worktree and one detached worker per
    branch, on this machine, on SSH hosts or on Slurm; then collect and compare results.

    \b
    Typical session:
      wt-run init
      wt-run generate --wait
      wt-run launch --branches i3d slowfast transformer magvit
      wt-run status --watch
      wt-run collect && wt-run compare
    """
    ctx.obj = AppState(config_path)


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--path", "target", type=click.Path(dir_okay=False), default="wt-run.yaml",
              show_default=True, help="Where to write the starter config.")
def init(force: bool, target: str) -> None:
    """Write a commented starter wt-run.yaml."""
    from .starter import write_starter

    path = write_starter(Path(target), force=force)
    click.echo(f"wrote {path}: edit branches: and commands:, then `wt-run launch --branches ...`")


@cli.command()
@click.option("--host", "host", metavar="H", required=True, help="Host name from hosts:.")
@dry_run_option
@pass_state
def setup(state: AppState, host: str, dry_run: bool) -> None:
    """Prepare a host: directories, repository, virtualenv, shared paths (idempotent)."""
    from . import api

    for line in api.setup(state.config, host, dry_run=dry_run):
        click.echo(line)


@cli.command()
@click.option("--host", "hosts", multiple=True, metavar="H",
              help="Host(s) whose queue to resume (default: every host with slots: or gpus:).")
@pass_state
def resume(state: AppState, hosts: tuple[str, ...]) -> None:
    """Get queued workers going again after a host rebooted (restarts its queue drainer).

    Queued workers survive a reboot as files on the host; `wt-run status` says when nothing
    drains them. Idempotent: a running drainer is left alone."""
    from . import api

    for host, what in api.resume(state.config, hosts):
        click.echo(f"{host}: {what}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", "host", metavar="H", help="Host to generate on (default: default_host).")
@run_option
@click.option("--wait", is_flag=True, help="Block until generation ends; exit 1 if it failed.")
@click.option("--force", is_flag=True, help="Stop and restart a generation still running.")
@dry_run_option
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
@pass_state
def generate(state: AppState, host: str | None, run: str | None, wait: bool, force: bool,
             dry_run: bool, extra: tuple[str, ...]) -> None:
    """Start dataset generation (commands.generate) as a tracked worker named `generate`.

    Arguments after `--` are appended to the command, e.g.
    `wt-run generate -- --samples 2000`."""
    from . import launching

    report = launching.generate(state.config, host=host, run=run, extra_args=extra, force=force,
                          dry_run=dry_run)
    _finish_launch(state, report, wait)


@cli.command()
@click.option("--branches", "-b", "branches", multiple=True, metavar="NAME",
              help="Names under branches: (repeat, or list several after one --branches; "
                   "names may also follow the options).")
@click.option("--host", "hosts", multiple=True, metavar="H",
              help="Host(s) to run on; several spread the branches across them.")
@click.option("--run", "run", metavar="ID",
              help="Launch into this existing run: its workers of these names start again as "
                   "new attempts (default: a new run).")
@click.option("--wait", is_flag=True,
              help="Block with a live view until all workers end; exit 1 if any did not "
                   "succeed.")
@click.option("--force", is_flag=True,
              help="Relaunch workers that are still running (stops them first) and allow "
                   "dirty worktrees.")
@click.option("--set", "sets", multiple=True, metavar="KEY=V1,V2",
              help="Sweep a template variable over values (repeatable): one worker per "
                   "combination; overrides the branch's vars and matrix:.")
@click.option("--seeds", type=click.IntRange(1, 1000), default=None, metavar="N",
              help="Run each variant with seeds 0..N-1 ({seed}, WT_RUN_SEED).")
@dry_run_option
@click.argument("more", nargs=-1, metavar="[NAME]...")
@pass_state
def launch(state: AppState, branches: tuple[str, ...], hosts: tuple[str, ...], run: str | None,
           wait: bool, force: bool, sets: tuple[str, ...], seeds: int | None, dry_run: bool,
           more: tuple[str, ...]) -> None:
    """Create a worktree per branch and start one detached worker per variant.

    \b
    wt-run launch --branches i3d slowfast transformer magvit
    wt-run launch --branches slowfast --run 20260125-194400   # rerun one variant
    wt-run launch --branches a b c d --host gpu1 --host gpu2  # spread over hosts
    wt-run launch --branches i3d slowfast --set lr=1e-3,3e-4 --seeds 3 --dry-run
    """
    from . import launching
    from .variants import parse_set_options

    if not branches and not more:
        raise click.UsageError("name at least one entry under branches: to launch, e.g. "
                               "`wt-run launch --branches NAME...` or `wt-run launch NAME...`")
    report = launching.launch(state.config, [*branches, *more], hosts=hosts, run=run, force=force,
                        dry_run=dry_run, sets=parse_set_options(sets), seeds=seeds)
    _finish_launch(state, report, wait)


def _finish_launch(state: AppState, report: Any, wait: bool) -> None:
    from .display import print_launch

    print_launch(report)
    if report.dry_run:
        return
    if not report.ok:
        sys.exit(1)
    if wait:
        final = _live_status(state, report.run, until_done=True)
        if not final.all_succeeded:
            bad = [f"{w.record.name} {w.state.value}" for w in final.workers
                   if w.state.value != "succeeded"]
            raise click.ClickException(
                f"not all workers succeeded ({', '.join(bad)}); "
                f"see `wt-run logs NAME --run {report.run}`")


def _live_status(state: AppState, run: str | None, until_done: bool, interval: float = 2.0,
                 unfold: bool = False) -> Any:
    import time

    from rich.live import Live

    from . import api
    from .display import make_console, status_renderable

    console = make_console()
    report = api.status(state.config, run)
    if not console.is_terminal:
        # Logs and CI: print a table when a state changes, and every 30 s for progress.
        last = None
        printed = 0.0
        while True:
            key = [(w.record.name, w.state.value) for w in report.workers]
            if key != last or time.monotonic() - printed >= 30:
                console.print(status_renderable(report, unfold))
                last, printed = key, time.monotonic()
            if until_done and report.done:
                return report
            time.sleep(interval)
            report = api.status(state.config, report.run)
    with Live(status_renderable(report, unfold), console=console, refresh_per_second=4) as live:
        while not (until_done and report.done):
            time.sleep(interval)
            report = api.status(state.config, report.run)
            live.update(status_renderable(report, unfold))
    return report


@cli.command()
@run_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable schema).")
@click.option("--watch", is_flag=True, help="Refresh the table every 2 s until Ctrl-C.")
@click.option("--all", "unfold", is_flag=True,
              help="One row per worker: do not fold the seeds of a group into one row.")
@pass_state
def status(state: AppState, run: str | None, as_json: bool, watch: bool, unfold: bool) -> None:
    """Show every worker of a run: state, pid, runtime, progress and ETA; hosts on top.
    The seeds of a sweep group share one row unless --all."""
    from . import api

    if watch:
        _live_status(state, run, until_done=False, unfold=unfold)
        return
    report = api.status(state.config, run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    from .display import print_status

    print_status(report, unfold=unfold)


@cli.command()
@click.argument("name")
@run_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the log grows.")
@click.option("-n", "lines", type=click.IntRange(min=0), default=50, show_default=True,
              help="Number of last lines to show.")
@pass_state
def logs(state: AppState, name: str, run: str | None, follow: bool, lines: int) -> None:
    """Print (or follow) a worker's log, wherever it runs."""
    from . import api

    sys.exit(api.logs(state.config, name, run=run, follow=follow, lines=lines))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Stop every worker of the run.")
@run_option
@pass_state
def stop(state: AppState, names: tuple[str, ...], all_: bool, run: str | None) -> None:
    """Stop workers: TERM to the whole process group, KILL after stop_grace seconds.

    A worker whose pid now belongs to another process is never signalled. Exits 1
    when a host could not be reached (its workers were not stopped; they read unknown)."""
    if not names and not all_:
        raise click.UsageError("name the workers to stop, or pass --all")
    from . import api
    from .display import print_stop

    outcomes = api.stop(state.config, names, run=run, all_=all_)
    print_stop(outcomes)
    if any(o.result.startswith("unknown") for o in outcomes):
        sys.exit(1)  # a host could not be reached: those workers were not stopped


@cli.command()
@run_option
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Destination root (default: results/ in the repository).")
@pass_state
def collect(state: AppState, run: str | None, dest: str | None) -> None:
    """Copy each worker's outputs, log and metadata into results/<run>/<name>/, verified.

    \b
    Every copy is checked against a sha256 computed on the host before it
    reaches its final path; what is already here is not copied again, and an
    interrupted collect resumes. From SSH hosts files come over OpenSSH's sftp
    client on one connection (WT_RUN_COLLECT_TRANSPORT=openssh|sftp forces a
    transport). Exits 1 if any file failed verification."""
    from .collect import collect as collect_run
    from .display_collect import RichCollectProgress, print_collect

    with RichCollectProgress() as progress:
        report = collect_run(state.config, run=run, dest=Path(dest) if dest else None,
                             observer=progress)
    print_collect(report)
    sys.exit(0 if report.ok else 1)


@cli.command()
@run_option
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Directory for the report files (default: results/<run>/report).")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json", "html"]),
              default="table", show_default=True, help="Output format.")
@click.option("--baseline", metavar="NAME",
              help="Show deltas against this worker or group.")
@click.option("--per-worker", is_flag=True,
              help="One row per worker instead of one per group of seeds.")
@click.option("--results", "results", type=click.Path(file_okay=False), default=None,
              metavar="DIR", help="Where the results were collected to (`collect --dest DIR`; "
                                  "default: results/ in the repository).")
@pass_state
def compare(state: AppState, run: str | None, out: str | None, fmt: str,
            baseline: str | None, per_worker: bool, results: str | None) -> None:
    """Compare a run: groups of seeds (mean ± 95% interval, the winner per metric and
    whether its lead is significant, confounders) or workers; table, md, csv, json, or an
    HTML report with plots and code differences."""
    from .compare import compare as compare_run
    from .compare_report import write_report

    cmp = compare_run(state.config, run=run, baseline=baseline, with_diffs=fmt == "html",
                      results=Path(results) if results else None)
    if fmt == "table":
        from .display_compare import render_rich

        render_rich(cmp, per_worker=per_worker)
    for path in write_report(cmp, fmt, Path(out) if out else None, per_worker=per_worker):
        click.echo(f"wrote {path}", err=True)


@cli.command()
@run_option
@click.option("--worktrees", is_flag=True,
              help="Remove wt-run's worktrees (not ones with live workers) and prune stale "
                   "entries.")
@click.option("--host", "hosts", multiple=True, metavar="H",
              help="With --worktrees: clean these hosts' worktrees (repeatable; default: this "
                   "machine's).")
@click.option("--delete-branches", is_flag=True,
              help="With --worktrees: also delete their branches if merged (all with --force).")
@click.option("--force", is_flag=True,
              help="Remove dirty worktrees, worktrees and runs holding uncollected results, and "
                   "unmerged branches too.")
@dry_run_option
@pass_state
def clean(state: AppState, run: str | None, worktrees: bool, hosts: tuple[str, ...],
          delete_branches: bool, force: bool, dry_run: bool) -> None:
    """Remove a run's files (--run ID) and/or wt-run's worktrees (--worktrees).

    Nothing that is still running is touched; results not yet collected are kept unless
    --force."""
    if not worktrees and run is None:
        raise click.UsageError("say what to clean: --run ID and/or --worktrees")
    for h in hosts:
        state.config.host(h)  # an unknown host: the config error that names the known ones
    from . import clean as cleaning

    actions = []
    if run is not None:
        actions += cleaning.clean_run(state.config, run, dry_run=dry_run, force=force)
    if worktrees:
        actions += cleaning.clean_worktrees(state.config, hosts=hosts, dry_run=dry_run,
                                            force=force, delete_branches=delete_branches)
    for a in actions:
        verb = f"Would {a.what}" if dry_run else (a.what if a.done else f"kept ({a.what})")
        click.echo(f"{verb}: {a.target}" + (f" — {a.note}" if a.note else ""))


def main() -> None:
    cli(prog_name="wt-run")


if __name__ == "__main__":
    main()
