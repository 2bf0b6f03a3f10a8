"""Matplotlib figures of the report, drawn from whatever arrays a finding stored.

Attacks are added all the time, so figures follow array *names*, not attack names:

- ``sample_sims`` + ``holdout_sims``: nearest-member similarity histograms (paper 001, Fig. 2);
- ``top_samples`` + ``top_members`` (+ ``top_sims``): most similar pairs side by side (Fig. 1);
- ``<p>fpr`` + ``<p>tpr``: a ROC curve on log–log axes;
- ``<p>_grid`` / ``<p>_t`` / ``<p>_ts`` (x) with other 1-D arrays of that prefix and
  length (y): curves, e.g. the SAF indicator over t or an AUC over the calibration grid;
- ``member_<s>`` + ``holdout_<s>``: overlaid histograms of a per-image statistic;
- any other (k, C, H, W) array in [-1, 1]: an image grid (uncurated samples, detections);
- any other 1-D float array: a histogram.

PNG output is byte-stable: the Agg renderer is deterministic and the ``Software``
metadata (matplotlib's version) is left out.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

X_SUFFIXES = ("_grid", "_t", "_ts")
RC = {"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "svg.hashsalt": "leakbench",
      "axes.spines.top": False, "axes.spines.right": False}


@dataclass
class Figure:
    name: str  # file-name stem, unique within a finding
    title: str
    png: bytes
    caption: str = ""


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _subplots(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(RC):
        return plt.subplots(*args, **kwargs)


def to_display(images: np.ndarray) -> np.ndarray:
    """(k, C, H, W) in [-1, 1] -> (k, H, W) or (k, H, W, 3) in [0, 1]."""
    x = np.clip((np.asarray(images, np.float32) + 1) / 2, 0, 1)
    return x[:, 0] if x.shape[1] == 1 else np.transpose(x[:, :3], (0, 2, 3, 1))


def similarity_histograms(sample_sims: np.ndarray, holdout_sims: np.ndarray,
                          threshold: float | None = None) -> bytes:
    """Nearest-member similarity of samples vs holdout images (paper 001, Fig. 2)."""
    fig, ax = _subplots(figsize=(5.5, 3.2))
    lo = float(min(sample_sims.min(), holdout_sims.min()))
    bins = np.linspace(lo, 1.0, 41)
    ax.hist(holdout_sims, bins=bins, density=True, alpha=0.55, color="#1f77b4",
            label=f"holdout (n={len(holdout_sims)})")
    ax.hist(sample_sims, bins=bins, density=True, alpha=0.55, color="#d62728",
            label=f"samples (n={len(sample_sims)})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity to the nearest member")
    ax.set_ylabel("density")
    ax.legend(frameon=False)
    return _png(fig)


def pairs_figure(samples: np.ndarray, members: np.ndarray, sims: np.ndarray | None) -> bytes:
    """The most similar (sample, member) pairs side by side (paper 001, Fig. 1)."""
    k = len(samples)
    cols = min(k, 8)
    rows = math.ceil(k / cols)
    fig, axes = _subplots(2 * rows, cols, figsize=(1.1 * cols, 2.3 * rows), squeeze=False)
    s, m = to_display(samples), to_display(members)
    for i in range(rows * cols):
        top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        for ax in (top, bottom):
            ax.axis("off")
        if i >= k:
            continue
        top.imshow(s[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        bottom.imshow(m[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if sims is not None:
            top.set_title(f"{float(sims[i]):.3f}", fontsize=7)
    fig.suptitle("top: sample, bottom: its nearest member (title: similarity)", fontsize=8)
    return _png(fig)


def image_grid(images: np.ndarray, cols: int = 8) -> bytes:
    """An uncurated grid of images in [-1, 1]."""
    x = to_display(images)
    k = len(x)
    cols = min(cols, max(k, 1))
    rows = max(1, math.ceil(k / cols))
    fig, axes = _subplots(rows, cols, figsize=(0.9 * cols, 0.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            ax.imshow(x[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    return _png(fig)


def roc_figure(fpr: np.ndarray, tpr: np.ndarray) -> bytes:
    """ROC on log–log axes, where the low-FPR regime the field reports is visible."""
    fig, ax = _subplots(figsize=(4, 4))
    floor = 1.0 / max(len(fpr), 1000)
    keep = (fpr > 0) & (tpr > 0)
    ax.loglog(fpr[keep], tpr[keep], color="#d62728", lw=1.5, label="attack")
    grid = np.logspace(math.log10(floor), 0, 50)
    ax.loglog(grid, grid, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(frameon=False, loc="lower right")
    return _png(fig)


def curves_figure(x: np.ndarray, ys: dict[str, np.ndarray], xlabel: str) -> bytes:
    fig, ax = _subplots(figsize=(5, 3.2))
    for name, y in sorted(ys.items()):
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.legend(frameon=False)
    return _png(fig)


def histograms_figure(series: dict[str, np.ndarray], xlabel: str) -> bytes:
    fig, ax = _subplots(figsize=(5, 3.2))
    values = np.concatenate([v.ravel() for v in series.values()])
    bins = np.histogram_bin_edges(values[np.isfinite(values)], bins=40)
    for name, v in sorted(series.items()):
        ax.hist(v[np.isfinite(v)], bins=bins, density=True, alpha=0.55, label=f"{name} (n={v.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(frameon=False)
    return _png(fig)


def _is_images(a: np.ndarray) -> bool:
    return (a.ndim == 4 and a.shape[1] in (1, 3) and a.size > 0 and np.issubdtype(a.dtype, np.floating)
            and float(a.min()) >= -1.0001 and float(a.max()) <= 1.0001)


def finding_figures(arrays: dict[str, np.ndarray], info: dict | None = None) -> list[Figure]:
    """Every figure the arrays of one finding support, in a fixed order."""
    info = info or {}
    used: set[str] = set()
    out: list[Figure] = []

    # Similarity histograms and the most similar pairs (replication-style findings).
    if "sample_sims" in arrays and "holdout_sims" in arrays:
        thr = info.get("threshold")
        out.append(Figure("similarity", "Nearest-member similarity: samples vs holdout",
                          similarity_histograms(arrays["sample_sims"], arrays["holdout_sims"],
                                                thr if isinstance(thr, float) else None),
                          "paper 001, Fig. 2"))
        used |= {"sample_sims", "holdout_sims"}
    if "top_samples" in arrays and "top_members" in arrays:
        out.append(Figure("pairs", "Most similar (sample, member) pairs",
                          pairs_figure(arrays["top_samples"], arrays["top_members"],
                                       arrays.get("top_sims")), "paper 001, Fig. 1"))
        used |= {"top_samples", "top_members", "top_sims", "top_sample_idx", "top_member_idx"}

    # ROC curves: <prefix>fpr with <prefix>tpr.
    for key in sorted(arrays):
        if key.endswith("fpr") and key[:-3] + "tpr" in arrays:
            prefix = key[:-3]
            out.append(Figure(f"roc_{prefix.strip('_') or 'main'}", "ROC curve (log–log)",
                              roc_figure(arrays[key], arrays[prefix + "tpr"])))
            used |= {key, prefix + "tpr"}

    # Curves over a grid: <prefix>_grid / _t / _ts with same-prefix, same-length arrays.
    for key in sorted(arrays):
        suffix = next((s for s in X_SUFFIXES if key.endswith(s)), None)
        x = arrays[key]
        if suffix is None or key in used or x.ndim != 1:
            continue
        prefix = key[: -len(suffix)]
        ys = {k: v for k, v in arrays.items()
              if k != key and k.startswith(prefix + "_") and v.ndim == 1 and len(v) == len(x)}
        if ys:
            out.append(Figure(f"curve_{prefix}", f"{prefix} over {key}",
                              curves_figure(x, ys, key)))
            used |= {key, *ys}

    # Per-image statistics of members vs holdout.
    for key in sorted(arrays):
        if key.startswith("member_") and "holdout_" + key[7:] in arrays and key not in used:
            other = "holdout_" + key[7:]
            out.append(Figure(f"hist_{key[7:]}", f"{key[7:]}: members vs holdout",
                              histograms_figure({"members": arrays[key], "holdout": arrays[other]},
                                                key[7:])))
            used |= {key, other}

    # Image stacks (uncurated samples, detections) and any other 1-D statistic.
    for key in sorted(arrays):
        a = arrays[key]
        if key in used:
            continue
        if _is_images(a):
            title = "Uncurated samples" if key == "sample_grid" else key
            out.append(Figure(f"images_{key}", f"{title} ({len(a)})", image_grid(a)))
        elif a.ndim == 1 and a.size > 1 and np.issubdtype(a.dtype, np.floating):
            out.append(Figure(f"hist_{key}", f"{key}", histograms_figure({key: a}, key)))
    return out


def axis_limits(values: list[float], pad: float = 0.12) -> tuple[float, float]:
    """Axis limits that show one or two points sensibly.

    Non-negative values start at 0 (an FID or a leak fraction is read against zero, and a
    single point must not sit on an axis spanning its rounding error); the top is the
    largest value plus ``pad`` of the span; all values 0 give [0, 1].
    """
    lo, hi = min(values), max(values)
    if lo >= 0:
        lo = 0.0
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
        return (lo - span if lo < 0 else 0.0), hi + span
    return lo - (pad * span if lo < 0 else 0.0), hi + pad * span


def privacy_quality_figure(points: list[tuple[str, float, float]], front: list[int],
                           ylabel: str, reference: str | None = None) -> bytes:
    """Privacy (lower is safer) against FID, every defense variant, the Pareto front joined.

    The ``reference`` (undefended) point is drawn as an open square and labelled so.
    """
    fig, ax = _subplots(figsize=(6, 4))
    labels: dict[tuple[float, float], list[str]] = {}  # points that coincide share one label
    for i, (label, x, y) in enumerate(points):
        on = i in front
        if label == reference:
            ax.scatter([x], [y], s=60, facecolors="none", edgecolors="#d62728", zorder=4,
                       marker="s", linewidths=1.5)
            label = f"{label} (reference)"
        else:
            ax.scatter([x], [y], s=36, color="#2ca02c" if on else "#7f7f7f", zorder=3,
                       marker="*" if on else "o")
        labels.setdefault((x, y), []).append(label)
    for (x, y), names in labels.items():
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, 4),
                    fontsize=7)
    if front:
        f = sorted((points[i][1], points[i][2]) for i in front)
        ax.step([p[0] for p in f], [p[1] for p in f], where="post", color="#2ca02c", lw=1,
                label="Pareto front (safe and good)")
        ax.legend(frameon=False)
    if points:
        ax.set_xlim(*axis_limits([p[1] for p in points]))
        ax.set_ylim(*axis_limits([p[2] for p in points]))
    ax.set_xlabel("FID (lower: closer to real images)")
    ax.set_ylabel(f"{ylabel} (lower: safer)")
    return _png(fig)
