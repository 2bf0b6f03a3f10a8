"""The harness: resolves specs, builds targets (cached), runs cells, stores findings.

Both the pytest benchmark suite and the ``leakbench`` CLI drive this one class.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from leakbench.api import Attack, AuditTarget, Defense, Finding
from leakbench.cache import ArtifactCache, source_hash
from leakbench.config import Profile, get_profile
from leakbench.context import RunContext, resolve_device
from leakbench.registry import ATTACKS, DEFENSES
from leakbench.results import ResultsStore, Run
from leakbench.specs import canonical, params_dict, parse_spec, resolve_params, split_specs


def resolve_plugin(registry, text: str):
    """A spec string -> a plugin instance with validated params."""
    spec = parse_spec(text)
    cls = registry.get(spec.name)
    params = resolve_params(cls.Params, spec, owner=f"{registry.kind} {spec.name!r}")
    return cls(params)


def expand(values: list[str] | None, registry, default_all: bool = True) -> list[str]:
    """Repeated, comma-separated option values -> canonical specs (validated)."""
    texts: list[str] = []
    for v in values or []:
        texts.extend(split_specs(v))
    if not texts and default_all:
        texts = registry.names()
    out: list[str] = []
    for t in texts:
        plugin = resolve_plugin(registry, t)
        c = canonical(plugin.name, plugin.params)
        if c not in out:
            out.append(c)
    return out


def validate_dataset(spec: str) -> str:
    """Check a dataset spec's name, argument and params (the files are read later).

    Returns the canonical spec: ``name[:argument]`` and only the params that differ from
    the defaults, sorted (``digits[members=64, canary=false]`` ->
    ``digits[canary=false,members=64]``), so two ways of writing a dataset are one cell.
    """
    from leakbench.data.sources import canonical_dataset, parse_dataset_spec
    from leakbench.errors import UsageError
    from leakbench.registry import DATASETS

    name, arg, options = parse_dataset_spec(spec)
    cls = DATASETS.get(name)
    if cls.needs_argument and not arg:
        raise UsageError(f"Dataset {name!r} needs an argument: write {cls.usage()}.")
    if not cls.needs_argument and arg:
        raise UsageError(f"Dataset {name!r} takes no argument; write just {name!r}.")
    return canonical_dataset(name, arg, options)


def check_locations(*, cache_dir=None, results=None, data_root=None, model=None) -> None:
    """Up front, before any work: every folder a run reads or writes, one sentence per problem.

    The cache and results folders must be creatable and writable, the results store
    (if any) must be a leakbench store this version reads, and a data root and a user's
    model (``--model``, a diffusers folder) must be readable folders.  Raises a
    :class:`~leakbench.errors.StorageError`.
    """
    from leakbench.paths import readable_dir, writable_dir

    writable_dir(ArtifactCache(cache_dir).root, what="the artifact cache",
                 option="--cache-dir (or LEAKBENCH_CACHE_DIR)")
    ResultsStore(results).check(write=True)
    if data_root:
        readable_dir(data_root, what="the data root", option="--data-root")
    elif os.environ.get("LEAKBENCH_DATA_ROOT"):
        readable_dir(os.environ["LEAKBENCH_DATA_ROOT"], what="the data root",
                     option="LEAKBENCH_DATA_ROOT")
    if model:
        readable_dir(model, what="the model folder", option="--model")


REFERENCE_DEFENSE = "ddim"
"""The undefended reference every run also attacks: the leaderboard compares each defense
with it (a user's own model replaces it where the harness is given another spec)."""


def with_reference(defenses: list[str], reference: str = REFERENCE_DEFENSE) -> list[str]:
    """Canonical defense specs with the reference first (added when it was not asked for)."""
    ref = expand([reference], DEFENSES)[0]
    return [ref, *(d for d in defenses if d != ref)] if ref not in defenses else list(defenses)


@dataclass
class BuiltTarget:
    defense: Defense
    target: AuditTarget
    figures_recorded: bool = False
    reference_only: bool = False  # built only as an attack's reference: no figures of its own


@dataclass
class Harness:
    """One benchmark session: a profile, a seed, a cache, a results store."""

    profile: Profile
    seed: int = 0
    device: str = "cpu"
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    store: ResultsStore = field(default_factory=ResultsStore)
    data_root: str | os.PathLike | None = None
    progress: bool = True
    command: str = ""
    reference: str = REFERENCE_DEFENSE
    model: str | os.PathLike | None = None  # a user's diffusers model folder: the audited denoiser
    precision: str = "fp32"  # the networks' forward precision: fp32 or bf16 (autocast)
    _run: Run | None = None
    _contexts: dict[str, RunContext] = field(default_factory=dict)
    _targets: dict[tuple[str, str], BuiltTarget] = field(default_factory=dict)
    cells: list[dict[str, Any]] = field(default_factory=list)
    _attempted: set[tuple[str, str, str]] = field(default_factory=set)

    @classmethod
    def create(cls, *, profile: str = "default", seed: int = 0, device: str | None = "cpu",
               cache_dir=None, results=None, data_root=None, progress: bool = True,
               command: str = "", model=None, precision: str | None = "fp32") -> Harness:
        """``model``: a diffusers model folder (pipeline or UNet2DModel) audited instead of the
        denoiser leakbench trains; it is loaded from local files only.  ``precision``: fp32
        (default) or bf16 autocast for training, sampling and white-box noise predictions."""
        from leakbench.diffusion.precision import resolve_precision

        precision = resolve_precision(precision)
        check_locations(cache_dir=cache_dir, results=results, data_root=data_root, model=model)
        if model is not None:
            from leakbench.diffusion.external import load_diffusers_model

            load_diffusers_model(model)  # a folder that is not a usable model: one sentence now
        return cls(profile=get_profile(profile), seed=int(seed), device=resolve_device(device),
                   cache=ArtifactCache(cache_dir), store=ResultsStore(results),
                   data_root=data_root, progress=progress, command=command, model=model,
                   precision=precision)

    @property
    def run(self) -> Run:
        if self._run is None:
            self._run = self.store.start_run(profile=self.profile.name, seed=self.seed,
                                             command=self.command)
        return self._run

    def context(self, dataset: str) -> RunContext:
        if dataset not in self._contexts:
            self._contexts[dataset] = RunContext(
                profile=self.profile, dataset=dataset, seed=self.seed, device=self.device,
                cache=self.cache, data_root=self.data_root, progress=self.progress,
                model=self.model, precision=self.precision,
            )
        return self._contexts[dataset]

    def target(self, dataset: str, defense_spec: str, *, reference_only: bool = False
               ) -> BuiltTarget:
        """Train (or load) and wrap the defense's target on ``dataset``; memoised per session."""
        key = (dataset, defense_spec)
        if key in self._targets and not reference_only:
            self._targets[key].reference_only = False
        if key not in self._targets:
            ctx = self.context(dataset)
            defense: Defense = resolve_plugin(DEFENSES, defense_spec)
            if self.model is not None and defense.trains_denoiser:
                raise ctx.retraining_refused(f"Defense {defense.name!r}")
            t0 = time.perf_counter()
            artifacts = defense.train(ctx)
            target = defense.wrap(artifacts, ctx)
            target.info.setdefault("setup_seconds", time.perf_counter() - t0)
            self._targets[key] = BuiltTarget(defense, target, reference_only=reference_only)
        return self._targets[key]

    def run_cell(self, dataset: str, defense_spec: str, attack_spec: str) -> Finding:
        """Run one attack on one defended target and store what it found."""
        self._attempted.add((dataset, defense_spec, attack_spec))
        built = self.target(dataset, defense_spec)
        attack: Attack = resolve_plugin(ATTACKS, attack_spec)
        ctx = self.context(dataset)
        t0 = time.perf_counter()
        finding = self.attack_finding(built, attack, ctx)
        finding.metrics.extend(self.reference_metrics(dataset, built, attack, ctx, finding))
        # Which row the report compares this one with, and the data it was measured on (its
        # hashes; for MedMNIST the MD5 beside the official one), stored with the finding's info.
        finding.info = {**finding.info, "reference_defense": self.reference_spec,
                        "data": ctx.splits.manifest["dataset"], **ctx.precision_spec()}
        seconds = time.perf_counter() - t0
        self.store.record(
            self.run, dataset=dataset, defense=defense_spec,
            defense_params=params_dict(built.defense.params), attack=attack_spec,
            attack_params=params_dict(attack.params), finding=finding,
        )
        self.cells.append({"dataset": dataset, "defense": defense_spec, "attack": attack_spec,
                           "seconds": seconds})
        return finding

    def attack_finding(self, built: BuiltTarget, attack: Attack, ctx: RunContext) -> Finding:
        """``attack.run`` on the target, cached: same target, attack, params and seed ⇒ same finding.

        The target's sampling figures travel with the cached finding, so a warm rerun
        reports the same defense costs without drawing samples again.
        """
        spec = {"target": built.target.key, "attack": attack.name, "version": attack.version,
                "code": source_hash(type(attack)), "params": params_dict(attack.params),
                "profile": self.profile.to_dict(), "seed": self.seed}

        def build():
            finding = attack.run(built.target, ctx)
            finding.info = {**attack.threat_info(built.target), **finding.info}
            return finding_to_payload(finding, built.target.sample_info)

        payload = self.cache.get_or_build("finding", spec, build,
                                          label=f"{attack.name} on {built.defense.name}")
        finding, sample_info = finding_from_payload(payload)
        for k, v in sample_info.items():
            built.target.sample_info.setdefault(k, v)
        return finding

    def reference_metrics(self, dataset: str, built: BuiltTarget, attack: Attack,
                          ctx: RunContext, finding: Finding) -> list:
        """``attack.compare`` against the same attack on its reference defense's target.

        The reference target and finding come from the cache when they were built
        before; on the reference target itself there is nothing to compare (no metrics).
        """
        if attack.reference_defense is None:
            return []
        ref_spec = expand([attack.reference_defense], DEFENSES)[0]
        ref = self.target(dataset, ref_spec, reference_only=True)
        if ref.target.key == built.target.key:
            return []
        return attack.compare(finding, self.attack_finding(ref, attack, ctx))

    @property
    def reference_spec(self) -> str:
        """The reference defense as a canonical spec (``ddim`` unless told otherwise)."""
        return expand([self.reference], DEFENSES)[0]

    def missing_reference_cells(self) -> list[tuple[str, str, str]]:
        """(dataset, reference, attack) cells this session still owes the leaderboard.

        Every attack that ran on a defense also runs on the reference at the same
        dataset, profile and seed, so each defense has a row to be compared with.
        """
        ref = self.reference_spec
        owed = []
        for c in self.cells:
            cell = (c["dataset"], ref, c["attack"])  # one that ran (or failed) is not owed
            if c["defense"] != ref and cell not in self._attempted and cell not in owed:
                owed.append(cell)
        return owed

    def run_reference_cells(self) -> list[tuple[str, str, str]]:
        """Run the reference cells still owed (found in the cache when they ran before)."""
        from leakbench.errors import NotApplicable

        owed = self.missing_reference_cells()
        for dataset, ref, attack in owed:
            try:
                self.run_cell(dataset, ref, attack)
            except NotApplicable:  # the attack does not apply here (skipped for the defense too)
                pass
        return owed

    def finish(self, *, reference: bool = True) -> None:
        """Run the owed reference cells, then store the defense figures (idempotent).

        A target whose cells were all interrupted or failed gets no figures: the store
        then holds nothing of a cell that did not finish.  ``reference=False`` (an
        interrupted session) stores the figures only.
        """
        if reference:
            self.run_reference_cells()
        done = {(c["dataset"], c["defense"]) for c in self.cells}
        for dataset, defense_spec in list(self._targets):
            if (dataset, defense_spec) in done:
                self.record_defense_figures(dataset, defense_spec)

    def record_defense_figures(self, dataset: str, defense_spec: str) -> None:
        """Store the defense's own figures (costs) once per target, under attack ``defense``."""
        built = self._targets[(dataset, defense_spec)]
        if built.figures_recorded or built.reference_only:
            return
        metrics = built.defense.figures(built.target)
        if not metrics:
            return
        built.figures_recorded = True
        self.store.record(
            self.run, dataset=dataset, defense=defense_spec,
            defense_params=params_dict(built.defense.params), attack="defense",
            attack_params={}, finding=Finding(metrics, info=dict(built.target.info)),
        )


def finding_to_payload(finding: Finding, sample_info: dict) -> dict[str, Any]:
    """A Finding as a cache payload: JSON for the metrics and info, tensors for the arrays."""
    import dataclasses
    import json

    import numpy as np
    import torch

    doc = {
        "metrics": [dataclasses.asdict(m) for m in finding.metrics],
        "info": finding.info,
        "headline": finding.headline,
        "sample_info": [[n, seed, info] for (n, seed), info in sample_info.items()],
    }
    return {
        "json": json.dumps(doc, sort_keys=True, default=_json_default),
        "arrays": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in finding.arrays.items()},
    }


def finding_from_payload(payload: dict[str, Any]) -> tuple[Finding, dict]:
    import json

    from leakbench.api import Metric

    doc = json.loads(payload["json"])
    metrics = [Metric(**{**m, "bounds": tuple(m["bounds"])}) for m in doc["metrics"]]
    arrays = {k: v.numpy() for k, v in payload["arrays"].items()}
    sample_info = {(n, seed): info for n, seed, info in doc["sample_info"]}
    return Finding(metrics, arrays=arrays, info=doc["info"], headline=doc["headline"]), sample_info


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
