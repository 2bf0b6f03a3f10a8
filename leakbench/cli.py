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
    from leakbench.leaderboard import leaderboard_frame, render_csv, render_json, render_table

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
        from reports.tables import leaderboard_rows, reference_defenses
        from reports.verdicts import verdict_lines

        refs = {(dataset, ref) for (dataset, _), ref in reference_defenses(findings).items()}
        out = render_table(df, references=refs)
        lines = verdict_lines(leaderboard_rows(df, findings)) if len(df) else []
        out += "".join(["\nverdicts against the reference:", *(f"\n  {x}" for x in lines)]
                       if lines else [])
    else:
        out = {"csv": render_csv, "json": render_json}[args.format](df)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0


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
