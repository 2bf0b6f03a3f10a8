"""pytest options and session fixtures for the leakbench benchmark suite.

    pytest benchmarks/ --defense cpsample
    pytest benchmarks/ --defense ddim,cpsample --attack replication --dataset medmnist:pathmnist
"""

from __future__ import annotations

import time

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("leakbench", "leakbench benchmark cells")
    g.addoption("--defense", action="append", default=[], metavar="SPEC",
                help="defense spec(s), comma-separated, repeatable: ddim, cpsample[alpha=0.5,scale=10] "
                     "(default: every registered defense)")
    g.addoption("--attack", action="append", default=[], metavar="SPEC",
                help="attack spec(s), comma-separated, repeatable (default: every registered attack)")
    g.addoption("--dataset", action="append", default=[], metavar="SPEC",
                help="digits (default), medmnist:<flag>, npz:<path>; comma-separated, repeatable")
    g.addoption("--profile", default="default", metavar="NAME",
                help="smoke, default or paper (default: default)")
    g.addoption("--seed", type=int, default=0, help="seed of splits, training and sampling")
    g.addoption("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    g.addoption("--precision", default="fp32", metavar="NAME",
                help="fp32 (default) or bf16: autocast for training, sampling and white-box "
                     "noise predictions (statistics stay fp32; cached apart from fp32)")
    g.addoption("--cache-dir", default=None, metavar="DIR",
                help="artifact cache (default: $LEAKBENCH_CACHE_DIR or ~/.cache/leakbench)")
    g.addoption("--results", default=None, metavar="DIR",
                help="results store folder (default: $LEAKBENCH_RESULTS or ./leakbench-results)")
    g.addoption("--model", default=None, metavar="DIR",
                help="audit your own diffusers model (a pipeline or UNet2DModel folder with its "
                     "scheduler config) instead of the denoiser leakbench trains")
    g.addoption("--data-root", default=None, metavar="DIR",
                help="folder with dataset files (default: $LEAKBENCH_DATA_ROOT, then medmnist's)")
    g.addoption("--no-report", action="store_true", default=False,
                help="do not print the leaderboard nor write the HTML report at the end")


def _runs_benchmarks(config) -> bool:
    """Whether the paths given to pytest include the benchmark suite (not just ``tests/``)."""
    from pathlib import Path

    bench = (config.rootpath / "benchmarks").resolve()
    for arg in config.args:
        path = (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve()
        if path == bench or bench in path.parents or path in bench.parents:
            return True
    return False


class _LeakbenchSession:
    """Resolved options, and the harness (created on first use)."""

    def __init__(self, config):
        from leakbench.config import get_profile
        from leakbench.diffusion.precision import resolve_precision
        from leakbench.harness import expand, validate_dataset, with_reference
        from leakbench.registry import ATTACKS, DEFENSES
        from leakbench.specs import split_specs

        opt = config.getoption
        self.config = config
        self.profile = get_profile(opt("--profile")).name
        self.precision = resolve_precision(opt("--precision"))
        # The undefended reference runs first, beside the defenses asked for.
        self.defenses = with_reference(expand(opt("--defense"), DEFENSES))
        self.attacks = expand(opt("--attack"), ATTACKS)
        datasets = [s for v in opt("--dataset") for s in split_specs(v)] or ["digits"]
        self.datasets = list(dict.fromkeys(validate_dataset(d) for d in datasets))
        self._harness = None
        if _runs_benchmarks(config) and not config.getoption("--collect-only"):
            from leakbench.harness import check_locations

            check_locations(cache_dir=opt("--cache-dir"), results=opt("--results"),
                            data_root=opt("--data-root"), model=opt("--model"))
            if opt("--model"):
                from leakbench.diffusion.external import load_diffusers_model

                load_diffusers_model(opt("--model"))  # not a usable model: one sentence, no cell run
            # A dataset that cannot be read (missing file, bad format, too small for the
            # profile) stops the run here with its one sentence, not in every cell; the
            # splits stay memoised in the harness for the cells (cheap: no training).
            for dataset in self.datasets:
                _ = self.harness.context(dataset).splits
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.stopped_by = None  # the sentence of a storage failure that stopped the session
        self.finish_error = None

    @property
    def harness(self):
        if self._harness is None:
            from leakbench.harness import Harness

            opt = self.config.getoption
            self._harness = Harness.create(
                profile=self.profile, seed=opt("--seed"), device=opt("--device"),
                cache_dir=opt("--cache-dir"), results=opt("--results"),
                data_root=opt("--data-root"), progress=opt("verbose") >= 0,
                model=opt("--model"), precision=self.precision,
                command="pytest " + " ".join(self.config.invocation_params.args),
            )
        return self._harness

    def cells(self):
        return [(d, f, a) for d in self.datasets for f in self.defenses for a in self.attacks]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    from leakbench.errors import LeakbenchError

    try:
        config._leakbench = _LeakbenchSession(config)
    except LeakbenchError as exc:
        raise pytest.UsageError(str(exc)) from None
    from leakbench.interrupts import sigterm_as_interrupt

    # A pre-empted job (SIGTERM) stops like Ctrl-C: completed cells stay stored, no half
    # written artifact, locks released; rerunning the command resumes from the cache.
    config._leakbench_sigterm = sigterm_as_interrupt()


def pytest_unconfigure(config):
    from leakbench.interrupts import restore_sigterm

    restore_sigterm(getattr(config, "_leakbench_sigterm", None))


def pytest_generate_tests(metafunc):
    if "cell" in metafunc.fixturenames:
        lb = metafunc.config._leakbench
        cells = lb.cells()
        metafunc.parametrize("cell", cells, ids=["-".join(c) for c in cells])


@pytest.fixture(scope="session")
def leakbench_session(request):
    return request.config._leakbench


@pytest.fixture(scope="session")
def harness(leakbench_session):
    return leakbench_session.harness


def _finish(lb, reference: bool = False) -> None:
    """Run owed reference cells and store the defense figures; a failure is reported."""
    from leakbench.errors import LeakbenchError

    try:
        lb._harness.finish(reference=reference)
    except LeakbenchError as exc:
        lb.finish_error = str(exc)


def pytest_sessionfinish(session, exitstatus):
    lb = getattr(session.config, "_leakbench", None)
    if lb is not None and lb._harness is not None:
        # Reference cells still owed (e.g. deselected by -k) run unless the session was stopped.
        stopped = exitstatus == pytest.ExitCode.INTERRUPTED or bool(session.shouldstop)
        _finish(lb, reference=not stopped)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from leakbench.errors import LeakbenchError

    lb = getattr(config, "_leakbench", None)
    if lb is None:
        return
    if lb.finish_error:
        terminalreporter.write_line("leakbench: reference cells or defense figures not stored: "
                                    f"{lb.finish_error}", red=True)
    if exitstatus == pytest.ExitCode.INTERRUPTED and lb._harness is not None:
        h = lb._harness
        why = f"stopped: {lb.stopped_by}" if lb.stopped_by else "interrupted"
        terminalreporter.write_line(
            f"leakbench: {why}; {len(h.cells)} cell(s) of this run are stored in "
            f"{h.store.path}; no half-written artifact is left in {h.cache.root}: rerun the same "
            "command to resume (finished work comes from the cache)", yellow=True)
        return
    if config.getoption("--no-report"):
        return
    from leakbench.leaderboard import leaderboard_frame, render_table
    from leakbench.results import ResultsStore

    if lb._harness is not None:
        _finish(lb)
        store = lb._harness.store
        events = lb._harness.cache.events
    elif config.pluginmanager.hasplugin("dsession"):  # the xdist controller; workers wrote the store
        store = ResultsStore(config.getoption("--results"))
        events = []
    else:  # no benchmark cell ran in this session
        return
    tr = terminalreporter
    try:
        rows = [r for r in store.rows() if r["time"] >= lb.started and r["profile"] == lb.profile]
    except LeakbenchError as exc:
        tr.write_line(f"leakbench: cannot read the results: {exc}", red=True)
        return
    if not rows:
        return
    tr.section(f"leakbench leaderboard (profile {lb.profile})")
    from reports.tables import leaderboard_rows, reference_defenses
    from reports.verdicts import verdict_lines

    df = leaderboard_frame(rows)
    findings = [f for f in store.findings()
                if f["time"] >= lb.started and f["profile"] == lb.profile]
    refs = {(dataset, ref) for (dataset, _), ref in reference_defenses(findings).items()}
    tr.write_line(render_table(df, references=refs))
    lines = verdict_lines(leaderboard_rows(df, findings))
    if lines:
        tr.write_line("verdicts against the reference (95% CI of the difference, or the "
                      "attack's own test against it):")
        for line in lines:
            tr.write_line(f"  {line}")
    if events:
        built = [e for e in events if e.status != "hit"]
        tr.write_line(f"cache {lb._harness.cache.root}: {len(events) - len(built)} hit(s), "
                      f"{len(built)} built" + "".join(f"\n  built {e.kind}: {e.label} "
                                                      f"({e.seconds:.1f} s, {e.status})" for e in built))
    tr.write_line(f"results: {store.path}")
    _write_report(tr, store)


def _write_report(tr, store) -> None:
    """Build the static HTML report of the whole store in ``<results>/report/``."""
    from reports.site import build_site

    try:
        index = build_site(store, store.root / "report")
    except Exception as exc:  # the numbers are stored; a broken report must not hide them
        tr.write_line(f"report: not written ({type(exc).__name__}: {exc}); "
                      f"rebuild it with `leakbench report --out DIR --results {store.root}`",
                      red=True)
        return
    tr.write_line(f"report: {index}")
