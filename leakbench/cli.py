"""The ``leakbench`` command: list plugins, print the leaderboard, build the report, check a store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leakbench.errors import LeakbenchError


def _cmd_list(args) -> int:
    from leakbench.registry import REGISTRIES

    listing = {}
    for kind, reg in REGISTRIES.items():
        listing[kind] = []
        for name in reg.names():
            obj = reg.get(name)
            entry = {"name": name, "origin": reg.origin(name),
                     "version": getattr(obj, "version", ""),
                     "description": getattr(obj, "description", "") or (obj.__doc__ or "").strip().split("\n")[0]}
            if getattr(obj, "access", None):
                entry["access"] = obj.access
            params = getattr(obj, "Params", None)
            if params is not None:
                import dataclasses

                entry["params"] = {f.name: f.default for f in dataclasses.fields(params)}
            listing[kind].append(entry)
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return 0
    for kind, entries in listing.items():
        print(f"{kind}:")
        for e in entries:
            params = ", ".join(f"{k}={v}" for k, v in e.get("params", {}).items())
            extra = f" [{params}]" if params else ""
            print(f"  {e['name']:<14} {e['description']}{extra}")
    return 0


def _cmd_leaderboard(args) -> int:
    from leakbench.leaderboard import leaderboard_frame, render_csv, render_json

    rows, findings = [], []
    for store in _existing_stores(args.results):  # several stores (one per machine) merge
        rows.extend(store.rows())
        findings.extend(store.findings())
    if args.profile:
        rows = [r for r in rows if r["profile"] == args.profile]
        findings = [f for f in findings if f["profile"] == args.profile]
    df = leaderboard_frame(rows)
    if args.no_timings:
        from leakbench.leaderboard import is_timing

        df = df[[not is_timing(m) for m in df["metric"]]]
    if args.format == "table":
        out = leaderboard_text(df, findings)
    else:
        out = {"csv": render_csv, "json": render_json}[args.format](df)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0


def leaderboard_text(df, findings: list[dict]) -> str:
    """The leaderboard as a terminal table, with the verdicts against the reference."""
    from leakbench.leaderboard import render_table
    from reports.tables import leaderboard_rows, reference_defenses
    from reports.verdicts import verdict_lines

    refs = {(dataset, ref) for (dataset, _), ref in reference_defenses(findings).items()}
    out = render_table(df, references=refs)
    lines = verdict_lines(leaderboard_rows(df, findings)) if len(df) else []
    return out + "".join(["\nverdicts against the reference:", *(f"\n  {x}" for x in lines)]
                         if lines else [])


def _cmd_cells(args) -> int:
    """Print one pytest node id per benchmark cell (for job arrays: one cell per task)."""
    from leakbench.harness import expand, validate_dataset, with_reference
    from leakbench.registry import ATTACKS, DEFENSES
    from leakbench.specs import split_specs

    defenses = with_reference(expand(args.defense, DEFENSES))
    attacks = expand(args.attack, ATTACKS)
    datasets = [validate_dataset(s) for v in args.dataset or ["digits"] for s in split_specs(v)]
    for d in datasets:
        for f in defenses:
            for a in attacks:
                print(f"benchmarks/test_cells.py::test_cell[{d}-{f}-{a}]")
    return 0


def _cmd_submit(args) -> int:
    """Submit the cells as a job array (submitit), wait, merge, print the leaderboard."""
    from leakbench.submit import Selection, merge, plan, submit_and_wait, summary

    selection = Selection.resolve(defense=args.defense, attack=args.attack, dataset=args.dataset,
                                  profile=args.profile, seed=args.seed, device=args.device,
                                  cache_dir=args.cache_dir, data_root=args.data_root,
                                  model=args.model)
    p = plan(selection=selection, executor=args.executor, results=args.results,
             partition=args.partition, gpus=args.gpus, cpus=args.cpus, time_min=args.time,
             parallelism=args.array_parallelism, per_task=args.per_task)
    if args.dry_run:
        print(f"leakbench submit --dry-run: nothing was submitted\n{p.describe()}")
        return 0
    from leakbench.harness import check_locations
    from leakbench.submit import check_executor

    check_executor(p.executor)
    check_locations(cache_dir=selection.cache_dir, results=p.results,
                    data_root=selection.data_root, model=selection.model)
    outcomes = submit_and_wait(p, progress=not args.quiet)
    run_ids = merge(p, outcomes)
    print("\n".join(summary(outcomes)))
    if run_ids:
        _print_merged(p.results, run_ids, report=not args.no_report)
    return 1 if any(c["outcome"] == "failed" for o in outcomes for c in o["cells"]) else 0


def _print_merged(results, run_ids: list[str], *, report: bool) -> None:
    """The leaderboard of the merged runs, and the report of the whole store."""
    from leakbench.leaderboard import leaderboard_frame
    from leakbench.results import ResultsStore

    store = ResultsStore(results)
    ids = set(run_ids)
    findings = [f for f in store.findings() if f["run_id"] in ids]
    print(leaderboard_text(leaderboard_frame(store.rows(run_ids)), findings))
    print(f"results: {store.path}")
    if report:
        from leakbench.paths import writing_to
        from reports.site import build_site

        with writing_to(store.root, what="the report folder", option="--results"):
            print(f"report: {build_site(store, store.root / 'report')}")


def _cmd_report(args) -> int:
    """Build the static HTML report from one or more results stores."""
    from leakbench.paths import writable_dir, writing_to
    from reports.site import build_site

    if args.about is not None and len(args.about) > ABOUT_LIMIT:
        raise LeakbenchError(f"--about is {len(args.about):,} characters; keep it under "
                             f"{ABOUT_LIMIT:,} (a paragraph) and link to longer notes from it.")
    stores = _existing_stores(args.results)
    out = writable_dir(args.out, what="the report folder", option="--out")
    with writing_to(out, what="the report folder", option="--out"):
        index = build_site(stores, out, title=args.title, about=args.about)
    print(index)
    return 0


ABOUT_LIMIT = 2000
"""Characters of ``leakbench report --about``: a paragraph under the title, not a document."""


def _existing_stores(folders: list[str] | None) -> list:
    """The results stores to read, each checked (exists, is ours, readable) before any work."""
    from leakbench.results import ResultsStore

    stores = []
    for folder in folders or [None]:
        store = ResultsStore(folder)
        if not store.path.exists():
            raise LeakbenchError(
                f"No results store at {store.path}; run `pytest benchmarks/` first or pass "
                "--results DIR."
            )
        store.check(write=False)
        stores.append(store)
    return stores


def _cmd_check_store(args) -> int:
    """Say what each results store is and what of it is readable; never writes to it."""
    from leakbench.results import ResultsStore, describe_store

    healthy = True
    for folder in args.results or [None]:
        ok, lines = describe_store(ResultsStore(folder))
        healthy &= ok
        print("\n".join(lines))
    return 0 if healthy else 1


def _cmd_export(args) -> int:
    """Write a trained target's denoiser as a diffusers pipeline folder that --model loads."""
    from leakbench.diffusion.unet import UNet
    from leakbench.harness import Harness, resolve_plugin, validate_dataset
    from leakbench.paths import writable_dir, writing_to
    from leakbench.registry import DEFENSES

    out = Path(args.out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise LeakbenchError(f"The export folder {out} is not empty; give a new or empty folder.")
    dataset = validate_dataset(args.dataset)
    h = Harness.create(profile=args.profile, seed=args.seed, device=args.device,
                       cache_dir=args.cache_dir, data_root=args.data_root, progress=True,
                       precision=args.precision)
    ctx = h.context(dataset)
    denoiser = resolve_plugin(DEFENSES, args.defense).train(ctx).get("denoiser")
    if not isinstance(denoiser, UNet):
        raise LeakbenchError(f"Defense {args.defense!r} has no plain U-Net denoiser to export; "
                             "export ddim (or dpsgd) instead.")
    from leakbench.diffusion.export import export_denoiser

    writable_dir(out.parent, what="the export folder's parent", option="--out")
    with writing_to(out.parent, what="the export folder", option="--out"):
        export_denoiser(denoiser.cpu(), ctx.schedule, out, image_size=ctx.image_size,
                        clip_x0=ctx.profile.clip_x0)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leakbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list registered defenses, attacks, datasets, features")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_list.set_defaults(func=_cmd_list)
    p_lb = sub.add_parser("leaderboard", help="print the newest result of every cell")
    p_lb.add_argument("--results", action="append", default=None,
                      help="results folder (default ./leakbench-results); repeat to merge stores")
    p_lb.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p_lb.add_argument("--profile", default=None, help="only this profile's rows")
    p_lb.add_argument("--no-timings", action="store_true",
                      help="leave out wall-clock figures (for byte-identical comparisons)")
    p_lb.set_defaults(func=_cmd_leaderboard)
    p_cells = sub.add_parser("cells", help="list the benchmark cells as pytest node ids")
    for opt in ("--defense", "--attack", "--dataset"):
        p_cells.add_argument(opt, action="append", default=None, help="as for pytest benchmarks/")
    p_cells.set_defaults(func=_cmd_cells)
    p_sub = sub.add_parser("submit", help="run the benchmark cells as a job array (Slurm, or "
                                           "local processes) and merge their results")
    for opt in ("--defense", "--attack", "--dataset"):
        p_sub.add_argument(opt, action="append", default=None, help="as for pytest benchmarks/")
    p_sub.add_argument("--profile", default="default", help="smoke, default or paper")
    p_sub.add_argument("--seed", type=int, default=0)
    p_sub.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p_sub.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="artifact cache every task shares (on a cluster: a shared folder)")
    p_sub.add_argument("--results", default=None, metavar="DIR",
                       help="results folder: task folders go under it, merged into its store")
    p_sub.add_argument("--data-root", default=None, metavar="DIR")
    p_sub.add_argument("--model", default=None, metavar="DIR",
                       help="audit your own diffusers model, as for pytest benchmarks/")
    p_sub.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                       help="slurm (default; needs sbatch) or local (processes on this machine)")
    p_sub.add_argument("--partition", default=None, help="Slurm partition")
    p_sub.add_argument("--gpus", type=int, default=None,
                       help="GPUs per task (default 0 with --device cpu, else 1)")
    p_sub.add_argument("--cpus", type=int, default=None, help="CPUs per task (Slurm)")
    p_sub.add_argument("--time", type=int, default=60, metavar="MIN",
                       help="time limit per task in minutes (default 60)")
    p_sub.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                       help="tasks running at once (default: all on Slurm, half the cores locally)")
    p_sub.add_argument("--per-task", choices=["target", "cell"], default="target",
                       help="cells per task: all of one (dataset, defense) target (default; its "
                            "figures then match a serial run), or one cell")
    p_sub.add_argument("--dry-run", action="store_true",
                       help="print the jobs (sbatch script and one command per task); submit nothing")
    p_sub.add_argument("--no-report", action="store_true", help="do not build the HTML report")
    p_sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p_sub.set_defaults(func=_cmd_submit)
    p_rep = sub.add_parser("report", help="build the static HTML report (leaderboard, figures)")
    p_rep.add_argument("--out", required=True, metavar="DIR", help="folder to write the site to")
    p_rep.add_argument("--results", action="append", default=None,
                       help="results folder (default ./leakbench-results); repeat to merge stores")
    p_rep.add_argument("--title", default=None,
                       help='heading and page title of the index (default "leakbench leaderboard")')
    p_rep.add_argument("--about", default=None, metavar="TEXT",
                       help="a short free text shown under the title (who ran what, where)")
    p_rep.set_defaults(func=_cmd_report)
    p_chk = sub.add_parser("check-store", help="say whether a results store is readable, and "
                                               "what of it (read-only; exit 1 if not healthy)")
    p_chk.add_argument("--results", action="append", default=None,
                       help="results folder (default ./leakbench-results); repeatable")
    p_chk.set_defaults(func=_cmd_check_store)
    p_exp = sub.add_parser("export", help="write a trained denoiser as a diffusers folder "
                                          "(loadable with --model)")
    p_exp.add_argument("--out", required=True, metavar="DIR", help="new folder to write")
    p_exp.add_argument("--dataset", default="digits", help="as for pytest benchmarks/")
    p_exp.add_argument("--defense", default="ddim", help="whose denoiser (default ddim)")
    p_exp.add_argument("--profile", default="default")
    p_exp.add_argument("--seed", type=int, default=0)
    p_exp.add_argument("--device", default="cpu")
    p_exp.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                       help="the precision the denoiser was trained in (as for pytest benchmarks/)")
    p_exp.add_argument("--cache-dir", default=None, metavar="DIR")
    p_exp.add_argument("--data-root", default=None, metavar="DIR")
    p_exp.set_defaults(func=_cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LeakbenchError as exc:
        print(f"leakbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM where a caller made it one
        print("leakbench: interrupted; nothing stored was changed.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
