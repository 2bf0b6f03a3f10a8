"""``leakbench submit``: the cells of a benchmark command as a job array, merged when done.

    leakbench submit --defense ddim,cpsample --attack replication --partition gpu --gpus 1
    leakbench submit --executor local --array-parallelism 2 --profile smoke ...
    leakbench submit ... --dry-run          # print the jobs; submits nothing

The (dataset, defense, attack) cells of the selection that ``pytest benchmarks/``
would run become a job array submitted through submitit (Slurm, or its local executor
on one machine): one task per trained target (dataset, defense) by default, or one per
cell (``--per-task cell``).  A task runs its cells with pytest, so a cell behaves as in
a serial run (skips, failures, owed reference cells, defense figures).
All tasks share one artifact cache, whose file locks make a model shared by several
cells (the public and fine-tuned denoisers) be trained by one task while the others
wait and load it; each task writes its own results folder (SQLite is not shared over a
network file system).  When all tasks are done their stores are merged into the
results folder, whose leaderboard and report are then printed and built.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leakbench.errors import LeakbenchError, UsageError

EXECUTORS = ("slurm", "local")


@dataclass(frozen=True)
class Selection:
    """The options of a benchmark command that every task repeats (specs canonical)."""

    defenses: tuple[str, ...]
    attacks: tuple[str, ...]
    datasets: tuple[str, ...]
    profile: str
    seed: int = 0
    device: str = "cpu"
    cache_dir: str = ""
    data_root: str | None = None
    model: str | None = None

    @classmethod
    def resolve(cls, *, defense=None, attack=None, dataset=None, profile="default", seed=0,
                device="cpu", cache_dir=None, data_root=None, model=None) -> Selection:
        """Validate the specs as ``pytest benchmarks/`` does (reference defense added)."""
        from leakbench.cache import ArtifactCache
        from leakbench.config import get_profile
        from leakbench.harness import expand, validate_dataset, with_reference
        from leakbench.registry import ATTACKS, DEFENSES
        from leakbench.specs import split_specs

        datasets = [s for v in dataset or [] for s in split_specs(v)] or ["digits"]
        return cls(
            defenses=tuple(with_reference(expand(defense, DEFENSES))),
            attacks=tuple(expand(attack, ATTACKS)),
            datasets=tuple(dict.fromkeys(validate_dataset(d) for d in datasets)),
            profile=get_profile(profile).name, seed=int(seed), device=device,
            cache_dir=str(ArtifactCache(cache_dir).root.resolve()),
            data_root=_absolute(data_root), model=_absolute(model),
        )

    def cells(self) -> list[tuple[str, str, str]]:
        """(dataset, defense, attack) in the order of the benchmark suite."""
        return [(d, f, a) for d in self.datasets for f in self.defenses for a in self.attacks]

    def pytest_options(self) -> list[str]:
        opts = [*(x for d in self.defenses for x in ("--defense", d)),
                *(x for a in self.attacks for x in ("--attack", a)),
                *(x for d in self.datasets for x in ("--dataset", d)),
                "--profile", self.profile, "--seed", str(self.seed), "--device", self.device,
                "--cache-dir", self.cache_dir]
        if self.data_root:
            opts += ["--data-root", self.data_root]
        if self.model:
            opts += ["--model", self.model]
        return opts


def _absolute(path) -> str | None:
    """Tasks may start in another folder: every path they get is absolute."""
    return str(Path(path).expanduser().resolve()) if path else None


def suite_root() -> Path:
    """The source checkout that holds the benchmark suite (``benchmarks/test_cells.py``)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / "benchmarks" / "test_cells.py").is_file() and \
                (candidate / "conftest.py").is_file():
            return candidate.resolve()
    raise UsageError("leakbench submit runs the benchmark suite of a leakbench source checkout; "
                     "run it from the folder that holds benchmarks/ and conftest.py.")


@dataclass(frozen=True)
class CellTask:
    """One task of the array: ``pytest`` on its cells, in its own results folder.

    Picklable (submitit sends it to the worker); calling it runs pytest in the worker's
    process and returns what happened: each cell's outcome and the cache events (which
    artifacts this task built and which it found in the shared cache).
    """

    index: int
    cells: tuple[tuple[str, str, str], ...]
    root: str
    options: tuple[str, ...]
    results: str

    @property
    def node_ids(self) -> list[str]:
        return [node_id(cell) for cell in self.cells]

    def pytest_args(self) -> list[str]:
        return [*self.node_ids, *self.options, "--results", self.results, "--no-report",
                "-p", "no:cacheprovider"]

    def command(self) -> str:
        """The task as a shell command (what it runs, to rerun it by hand)."""
        return shlex.join([sys.executable, "-m", "pytest", *self.pytest_args()])

    def __call__(self) -> dict[str, Any]:
        import socket

        import pytest

        os.chdir(self.root)
        collector = _Collector()
        started = time.time()
        code = int(pytest.main(self.pytest_args(), plugins=[collector]))
        return {"index": self.index, "exit_code": code, "events": collector.events,
                "cells": [{"cell": list(c), **collector.outcomes.get(node_id(c), NOT_RUN)}
                          for c in self.cells],
                "started": started, "ended": time.time(), "host": socket.gethostname(),
                "pid": os.getpid()}


NOT_RUN = {"outcome": "not run", "message": ""}


def node_id(cell: tuple[str, str, str]) -> str:
    """The pytest node id of a benchmark cell (as ``leakbench cells`` prints it)."""
    return f"benchmarks/test_cells.py::test_cell[{'-'.join(cell)}]"


class _Collector:
    """A pytest plugin that keeps each cell's outcome and the harness's cache events."""

    def __init__(self):
        self.outcomes: dict[str, dict[str, str]] = {}
        self.events: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and report.outcome == "passed":
            return
        message = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif report.failed and report.longreprtext.strip():
            message = report.longreprtext.strip().splitlines()[-1]
        if self.outcomes.get(report.nodeid, {}).get("outcome") != "failed":
            self.outcomes[report.nodeid] = {"outcome": report.outcome, "message": message}

    def pytest_unconfigure(self, config):
        lb = getattr(config, "_leakbench", None)
        harness = getattr(lb, "_harness", None)
        if harness is not None:
            self.events = [{"kind": e.kind, "key": e.key, "label": e.label, "status": e.status,
                            "seconds": e.seconds} for e in harness.cache.events]


PER_TASK = ("target", "cell")
"""How cells are grouped into tasks: all the cells of one (dataset, defense) target per task
(the default: a defense's figures then cover the same samples as in a serial run), or one
cell per task (more tasks; a defense's figure row then reflects the samples of one cell)."""


@dataclass
class SubmitPlan:
    """What ``leakbench submit`` would submit: the tasks and the executor's settings."""

    selection: Selection
    executor: str
    folder: Path  # <results>/submit-<stamp>: task results folders and submitit's logs
    results: Path
    tasks: list[CellTask]
    partition: str | None = None
    gpus: int = 0
    cpus: int | None = None
    time_min: int = 60
    parallelism: int = 1
    per_task: str = "target"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    def slurm_parameters(self) -> dict[str, Any]:
        """Parameters of submitit's ``SlurmExecutor.update_parameters``."""
        params: dict[str, Any] = {"job_name": "leakbench", "time": self.time_min,
                                  "array_parallelism": self.parallelism,
                                  "gpus_per_node": self.gpus, "ntasks_per_node": 1}
        if self.partition:
            params["partition"] = self.partition
        if self.cpus:
            params["cpus_per_task"] = self.cpus
        return params

    def sbatch_script(self) -> str:
        """The sbatch file submitit writes for this array (its own template, not a copy)."""
        from submitit.slurm.slurm import _make_sbatch_string

        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                            shlex.quote(str(self.logs / "%j"))])
        return _make_sbatch_string(command=command, folder=self.logs / "%j",
                                   map_count=len(self.tasks), **self.slurm_parameters())

    def describe(self) -> str:
        """The dry run's text: settings, the sbatch script (Slurm) and each task's command."""
        n = len(self.tasks)
        where = (f"a Slurm job array, at most {min(n, self.parallelism)} running "
                 "at once" if self.executor == "slurm" else
                 f"{n} local process(es), at most {min(n, self.parallelism)} at once")
        resources = ", ".join(x for x in [
            f"partition {self.partition}" if self.partition else "",
            f"{self.gpus} GPU(s)", f"{self.cpus} CPU(s)" if self.cpus else "",
            f"{self.time_min} min"] if x)
        cells = sum(len(t.cells) for t in self.tasks)
        lines = [f"{cells} cell(s) in {n} task(s) (one {self.per_task} each) as {where}; "
                 f"per task: {resources}",
                 f"shared artifact cache: {self.selection.cache_dir}",
                 f"task results: {self.folder}/task-NNNN, merged into {self.results}",
                 f"submitit logs: {self.logs}"]
        if self.executor == "slurm":
            lines += ["sbatch script (as submitit writes it):", *(
                f"  {x}" for x in self.sbatch_script().rstrip().splitlines())]
        lines.append(f"tasks (each runs in {self.tasks[0].root if self.tasks else '.'}):")
        for t in self.tasks:
            lines.append(f"  {t.index:>4}  " + "; ".join(" ".join(c) for c in t.cells))
            lines.append(f"        {t.command()}")
        return "\n".join(lines)


def plan(*, selection: Selection, executor: str, results=None, partition=None, gpus=None,
         cpus=None, time_min: int = 60, parallelism: int | None = None,
         per_task: str = "target", stamp: str | None = None) -> SubmitPlan:
    """Check the options and lay out the tasks (nothing is written or submitted)."""
    from leakbench.results import default_results_dir

    if executor not in EXECUTORS:
        raise UsageError(f"Unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}.")
    gpus = (0 if selection.device == "cpu" else 1) if gpus is None else int(gpus)
    if gpus < 0 or (cpus is not None and cpus < 1) or time_min < 1:
        raise UsageError("--gpus must be 0 or more, and --cpus and --time at least 1.")
    if gpus == 0 and selection.device.startswith("cuda"):
        raise UsageError(f"--device {selection.device} needs a GPU per task; pass --gpus 1 "
                         "(or more), or --device cpu.")
    if per_task not in PER_TASK:
        raise UsageError(f"Unknown --per-task {per_task!r}; choose one of {', '.join(PER_TASK)}.")
    if parallelism is not None and parallelism < 1:
        raise UsageError("--array-parallelism must be at least 1 (tasks running at once).")
    groups: dict[tuple[str, ...], list[tuple[str, str, str]]] = {}
    for cell in selection.cells():
        groups.setdefault(cell[:2] if per_task == "target" else cell, []).append(cell)
    if parallelism is None:  # Slurm throttles by itself; one machine runs a task per core
        parallelism = len(groups) if executor == "slurm" else max(1, (os.cpu_count() or 1) // 2)
    results = Path(results).expanduser() if results else default_results_dir()
    results = results.resolve()
    folder = results / f"submit-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    root = str(suite_root())
    options = tuple(selection.pytest_options())
    tasks = [CellTask(i, tuple(cells), root, options, str(folder / f"task-{i:04d}"))
             for i, cells in enumerate(groups.values())]
    return SubmitPlan(selection, executor, folder, results, tasks, partition=partition,
                      gpus=gpus, cpus=cpus, time_min=int(time_min), parallelism=parallelism,
                      per_task=per_task)


def check_executor(executor: str) -> None:
    """Up front: the Slurm executor needs ``sbatch`` and ``srun`` on PATH."""
    if executor == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise UsageError("The slurm executor needs Slurm's sbatch and srun on PATH; run "
                         "leakbench submit on a Slurm login node, or pass --executor local "
                         "to run the cells on this machine.")


def make_executor(p: SubmitPlan):
    """A submitit executor for the plan (its logs under the submission folder)."""
    import submitit

    check_executor(p.executor)
    if p.executor == "slurm":
        ex = submitit.SlurmExecutor(folder=p.logs / "%j")
        ex.update_parameters(**p.slurm_parameters())
        return ex
    ex = submitit.LocalExecutor(folder=p.logs / "%j")
    ex.update_parameters(timeout_min=p.time_min, gpus_per_node=p.gpus)
    return ex


def run_task(task: CellTask) -> dict[str, Any]:
    """The function each array task calls (module level: submitit pickles it by name)."""
    return task()


def submit_and_wait(p: SubmitPlan, *, progress: bool = True, poll_s: float | None = None
                    ) -> list[dict[str, Any]]:
    """Submit the tasks, wait for all with a progress bar, return one outcome per task.

    Slurm receives the whole array (``%parallelism`` throttles it); the local executor
    is given at most ``parallelism`` tasks at a time.  Ctrl-C cancels unfinished tasks.
    """
    from tqdm.auto import tqdm

    from leakbench.paths import writable_dir

    writable_dir(p.folder, what="the submission folder", option="--results")
    executor = make_executor(p)
    poll_s = poll_s if poll_s is not None else (15.0 if p.executor == "slurm" else 1.0)
    pending = list(p.tasks)
    running: dict[Any, CellTask] = {}
    outcomes: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=sum(len(t.cells) for t in p.tasks), desc="cells", unit="cell",
               disable=not progress)
    try:
        if p.executor == "slurm":
            jobs = executor.map_array(run_task, pending)
            running.update(zip(jobs, pending))
            pending = []
            bar.write(f"submitted Slurm job array {jobs[0].job_id.split('_')[0]} "
                      f"({len(jobs)} task(s)); logs in {p.logs}")
        while pending or running:
            while pending and len(running) < p.parallelism:
                task = pending.pop(0)
                running[executor.submit(run_task, task)] = task
            finished = [(j, running.pop(j)) for j in [j for j in running if j.done()]]
            for job, task in finished:
                outcomes[task.index] = _outcome(job, task)
            failed = sum(c["outcome"] == "failed" for o in outcomes.values() for c in o["cells"])
            bar.set_postfix(tasks_running=len(running), failed=failed, refresh=False)
            bar.update(sum(len(task.cells) for _, task in finished))
            if pending or running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in running:
            job.cancel(check=False)
        bar.close()
        raise LeakbenchError(
            f"Interrupted: cancelled {len(running)} running and {len(pending)} waiting task(s); "
            f"finished cells are in {p.folder}; rerun the same command to resume (finished "
            "work comes from the shared cache).") from None
    bar.close()
    return [outcomes[t.index] for t in p.tasks]


def _outcome(job, task: CellTask) -> dict[str, Any]:
    """The task's result; its cells fail with a sentence naming the log if the task died."""
    try:
        out = job.result()
    except Exception as exc:  # killed, out of time or memory, or pytest crashed
        last = str(exc).strip().splitlines()
        message = (f"the task ended without a result ({last[-1] if last else exc}); "
                   f"see {job.paths.stderr}")
        return {"index": task.index, "exit_code": None, "events": [],
                "cells": [{"cell": list(c), "outcome": "failed", "message": message}
                          for c in task.cells]}
    why = {4: "a usage error or an unreadable dataset", 5: "no cell matched its node id"}
    for c in out["cells"]:
        if c["outcome"] == "not run" or out["exit_code"] not in (0, 1):
            c["outcome"] = "failed"
            c["message"] = c["message"] or (f"pytest exited {out['exit_code']} "
                                            f"({why.get(out['exit_code'], 'see its log')}); "
                                            f"see {job.paths.stdout}")
    return out


def merge(p: SubmitPlan, outcomes: list[dict[str, Any]]) -> list[str]:
    """Copy every task's runs into the results store; the run ids merged."""
    from leakbench.results import ResultsStore

    sources = [ResultsStore(t.results) for t in p.tasks]
    return ResultsStore(p.results).merge([s for s in sources if s.path.exists()])


def summary(outcomes: list[dict[str, Any]]) -> list[str]:
    """Lines on the cells (failed and skipped ones with their sentence) and the shared cache."""
    cells = [c for o in outcomes for c in o["cells"]]
    counts = {k: sum(c["outcome"] == k for c in cells) for k in ("passed", "skipped", "failed")}
    lines = [f"{len(cells)} cell(s) in {len(outcomes)} task(s): "
             + ", ".join(f"{v} {k}" for k, v in counts.items())]
    for c in cells:
        if c["outcome"] in ("failed", "skipped"):
            lines.append(f"  {c['outcome']} {'-'.join(c['cell'])}: {c['message']}")
    built = [(o["index"], e) for o in outcomes for e in o.get("events", [])
             if e["status"] != "hit" and e["kind"] not in ("finding", "samples")]
    users: dict[str, set[int]] = {}
    for o in outcomes:
        for e in o.get("events", []):
            users.setdefault(e["key"], set()).add(o["index"])
    for index, e in built:
        others = len(users[e["key"]] - {index})
        lines.append(f"  cache: {e['kind']} {e['label']} built by task {index} "
                     f"({e['seconds']:.1f} s); loaded by {others} other task(s)")
    return lines
