"""Seaborn/matplotlib figures (Agg backend). Each figure function returns a Figure, or None when there is nothing
to draw; `save` writes one."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

from reports.analysis import PAPER_COMPUTE_OVERHEAD, PAPER_EFFECTIVE_GAIN, mean_curves  # noqa: E402
from reports.data import algorithm_order  # noqa: E402

PAPER_STYLE = {"color": "0.25", "linestyle": "--", "linewidth": 1.2}


def setup() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 110,
            "axes.titleweight": "bold",
            "legend.frameon": True,
            "svg.fonttype": "none",
        }
    )


def save(fig: plt.Figure, path: Path, svg: bool = False) -> None:
    """Write ``fig`` as PNG at ``path`` (and as SVG next to it with ``svg``), then close it."""
    fig.savefig(path)
    if svg:
        fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def palette(algorithms) -> dict[str, tuple]:
    algos = algorithm_order(algorithms)
    colors = sns.color_palette("tab10", max(len(algos), 3))
    return {a: colors[i % len(colors)] for i, a in enumerate(algos)}


def _si(x, _=None) -> str:
    for div, suf in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suf}"
    return f"{x:g}"


def _pct_label(v: float) -> str:
    return f"{100 * v:+.0f}%"


# ------------------------------------------------------------------------------------------------


def accuracy_bars(acc: pd.DataFrame, colors: dict) -> plt.Figure | None:
    """Grouped bars: benchmark (and macro) x algorithm, bootstrap CIs as error bars; one panel per model."""
    if acc.empty:
        return None
    models = sorted(acc["model"].unique())
    fig, axes = plt.subplots(
        len(models),
        1,
        figsize=(max(6.5, 1.6 * acc["benchmark"].nunique() + 3), 3.6 * len(models)),
        squeeze=False,
        layout="constrained",
    )
    for ax, model in zip(axes[:, 0], models):
        a = acc[acc["model"] == model]
        benches = [b for b in sorted(a["benchmark"].unique()) if b != "macro"] + (
            ["macro"] if "macro" in set(a["benchmark"]) else []
        )
        algos = algorithm_order(a["algorithm"])
        w = 0.8 / max(len(algos), 1)
        for i, algo in enumerate(algos):
            sub = a[a["algorithm"] == algo].set_index("benchmark").reindex(benches)
            x = np.arange(len(benches)) + (i - (len(algos) - 1) / 2) * w
            y = 100 * sub["mean"].to_numpy(dtype=float)
            lo = np.clip(y - 100 * sub["ci_low"].to_numpy(dtype=float), 0, None)
            hi = np.clip(100 * sub["ci_high"].to_numpy(dtype=float) - y, 0, None)
            ax.bar(
                x,
                y,
                w * 0.95,
                color=colors[algo],
                label=algo,
                yerr=np.nan_to_num(np.vstack([lo, hi])),
                capsize=3,
                error_kw={"elinewidth": 1},
            )
        starts = a.drop_duplicates("benchmark").set_index("benchmark").reindex(benches)["start"].to_numpy(dtype=float)
        if np.isfinite(starts).any():
            xs = np.arange(len(benches))
            ax.hlines(
                100 * starts,
                xs - 0.42,
                xs + 0.42,
                colors="black",
                linestyles="-",
                linewidth=2,
                zorder=5,
                label="before training",
            )
        ax.grid(axis="x", visible=False)
        ax.set_xticks(np.arange(len(benches)), ["macro avg" if b == "macro" else b for b in benches])
        ax.set_ylabel("final accuracy (%)")
        ax.set_title(f"{model}: final accuracy (95% bootstrap CI over seeds and prompts)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


# the phases of the stacked cost-per-step bars, bottom to top (each with its own colour)
PHASES = ["generate", "score", "logprob", "ref", "train", "build_batch", "after_step", "other"]


def compute_phases(phases: pd.DataFrame, overhead: pd.DataFrame, baseline: str, colors: dict) -> plt.Figure | None:
    """Stacked per-phase cost per step (wall seconds, FLOPs) per algorithm, and overhead vs baseline per unit."""
    if phases.empty and overhead.empty:
        return None
    models = sorted(set(phases["model"]) | set(overhead["model"]) if not phases.empty else set(overhead["model"]))
    kinds = [k for k in ("wall seconds", "FLOPs") if not phases.empty and k in set(phases["kind"])]
    ncols = len(kinds) + (1 if not overhead.empty and overhead["overhead"].notna().any() else 0)
    if ncols == 0:
        return None
    fig, axes = plt.subplots(
        len(models), ncols, figsize=(4.6 * ncols + 1.5, 3.8 * len(models)), squeeze=False, layout="constrained"
    )
    phase_colors = dict(zip(PHASES, sns.color_palette("Set2", 8)))
    for row, model in enumerate(models):
        for col, kind in enumerate(kinds):
            p = phases[(phases["model"] == model) & (phases["kind"] == kind)]
            _phase_bars(axes[row, col], p, f"{model}: {kind} per step by phase", kind, baseline, phase_colors)
        if ncols > len(kinds):
            o = overhead[(overhead["model"] == model) & overhead["overhead"].notna()]
            _overhead_bars(axes[row, -1], o, model, baseline, colors)
    return fig


def _phase_bars(ax, p: pd.DataFrame, title: str, kind: str, baseline: str, phase_colors: dict) -> None:
    """One model's cost per step in one unit (``kind``), stacked by phase, one bar per algorithm; labels: the
    overhead vs ``baseline``, dashed: ``baseline`` + the paper's overhead."""
    algos = algorithm_order(p["algorithm"])
    bottom = np.zeros(len(algos))
    for phase in [ph for ph in phase_colors if ph in set(p["phase"])]:
        vals = p[p["phase"] == phase].set_index("algorithm").reindex(algos)["per_step"].fillna(0).to_numpy()
        if not vals.any():
            continue
        ax.bar(
            algos, vals, 0.6, bottom=bottom, color=phase_colors[phase], label=phase, edgecolor="white", linewidth=0.5
        )
        bottom += vals
    if baseline in algos:
        b = bottom[algos.index(baseline)]
        ax.axhline(b * (1 + PAPER_COMPUTE_OVERHEAD), **PAPER_STYLE, label=f"{baseline} +15% (paper)")
        label_box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
        for i, a in enumerate(algos):
            if a != baseline and b > 0:
                ax.text(
                    i,
                    bottom[i] * 0.98,
                    _pct_label(bottom[i] / b - 1),
                    ha="center",
                    va="top",
                    fontsize=8,
                    fontweight="bold",
                    bbox=label_box,
                )
    ax.set_title(title)
    ax.set_ylabel(f"{kind} / step")
    if kind == "FLOPs":
        ax.yaxis.set_major_formatter(FuncFormatter(_si))
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")
    ax.grid(axis="x", visible=False)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def _overhead_bars(ax, o: pd.DataFrame, model: str, baseline: str, colors: dict) -> None:
    """One model's overhead per step vs ``baseline`` in every unit (``o``: its overhead rows), the paper's dashed."""
    if o.empty:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"no {baseline} baseline", ha="center", transform=ax.transAxes)
        return
    sns.barplot(
        o,
        x="unit",
        y="overhead",
        hue="algorithm",
        palette=colors,
        ax=ax,
        hue_order=algorithm_order(o["algorithm"]),
        saturation=1,
    )
    _vs_baseline_axes(
        ax, PAPER_COMPUTE_OVERHEAD, "paper: +15%", f"{model}: cost per step vs {baseline}", f"overhead vs {baseline}"
    )
    ax.tick_params(axis="x", rotation=20, labelsize=8)
    ax.legend(fontsize=7)


def effective_steps(
    curves: pd.DataFrame, summary: pd.DataFrame, baseline: str, colors: dict, smooth: int = 5
) -> plt.Figure | None:
    """Cumulative effective steps and zero-variance group fraction over training; gain vs baseline with the paper's
    +48%."""
    if curves.empty or curves["effective_steps_total"].isna().all():
        return None
    models = sorted(curves["model"].unique())
    has_gain = not summary.empty and summary["gain_per_step"].notna().any()
    ncols = 3 if has_gain else 2
    fig, axes = plt.subplots(
        len(models), ncols, figsize=(4.8 * ncols + 1, 3.8 * len(models)), squeeze=False, layout="constrained"
    )
    for row, model in enumerate(models):
        c = curves[curves["model"] == model].copy()
        order = algorithm_order(c["algorithm"])
        _cumulative_effective(axes[row, 0], c, model, order, colors)
        _zero_variance(axes[row, 1], c, model, order, colors, smooth)
        if has_gain:
            s = summary[(summary["model"] == model) & summary["gain_per_step"].notna()]
            _effective_gain(axes[row, 2], s, model, baseline, colors)
    return fig


def _cumulative_effective(ax, c: pd.DataFrame, model: str, order: list[str], colors: dict) -> None:
    """Cumulative effective steps per algorithm (band: range over seeds) against the steps taken (dotted)."""
    sns.lineplot(
        c,
        x="step",
        y="effective_steps_total",
        hue="algorithm",
        hue_order=order,
        palette=colors,
        errorbar=("pi", 100),
        ax=ax,
    )
    ax.plot(
        [0, c["step"].max()],
        [0, c["step"].max()],
        color="0.6",
        linestyle=":",
        linewidth=1,
        label="every group effective",
    )
    ax.set_title(f"{model}: cumulative effective steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("effective steps (full-step units)")
    ax.legend(fontsize=8)


def _zero_variance(ax, c: pd.DataFrame, model: str, order: list[str], colors: dict, smooth: int) -> None:
    """The fraction of zero-variance prompt groups per step (rolling mean over ``smooth`` steps)."""
    c = c.sort_values("step")
    c["zero_std_smooth"] = c.groupby("run_id")["zero_std_frac"].transform(
        lambda s: s.rolling(smooth, min_periods=1).mean()
    )
    if c["zero_std_smooth"].notna().any():
        sns.lineplot(
            c,
            x="step",
            y="zero_std_smooth",
            hue="algorithm",
            hue_order=order,
            palette=colors,
            errorbar=("pi", 100),
            ax=ax,
        )
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "groups/zero_std_frac not logged", ha="center", transform=ax.transAxes)
    ax.set_title(f"{model}: zero-variance groups (rolling {smooth})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fraction of prompt groups")


def _effective_gain(ax, s: pd.DataFrame, model: str, baseline: str, colors: dict) -> None:
    """Effective-step gain vs ``baseline`` per step and in total (``s``: the model's summary rows with a gain)."""
    if s.empty:
        ax.set_axis_off()
        return
    long = pd.concat(
        [
            s.assign(kind="per step", gain=s["gain_per_step"]),
            s.assign(kind="total (matched budget)", gain=s["gain_total"]),
        ]
    )
    sns.barplot(
        long,
        x="kind",
        y="gain",
        hue="algorithm",
        hue_order=algorithm_order(s["algorithm"]),
        palette=colors,
        ax=ax,
        saturation=1,
    )
    _vs_baseline_axes(
        ax, PAPER_EFFECTIVE_GAIN, "paper: +48%", f"{model}: effective steps vs {baseline}", f"gain vs {baseline}"
    )
    ax.legend(fontsize=8)


def _vs_baseline_axes(ax, paper_value: float, paper_label: str, title: str, ylabel: str) -> None:
    """Relative-to-baseline bar panel: percent axis, zero line and the paper's figure as a dashed line."""
    ax.grid(axis="x", visible=False)
    ax.axhline(paper_value, **PAPER_STYLE, label=paper_label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(title)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)


def accuracy_vs_compute(
    curves: pd.DataFrame, unit: str, label: str, colors: dict, budget: float | None = None
) -> plt.Figure | None:
    """Macro accuracy at each evaluation against cumulative compute, one panel per model: a thin line per run and a
    thick one per algorithm (the seed mean, as in the tables); dashed: ``budget``."""
    if curves.empty or unit not in curves or curves[unit].isna().all():
        return None
    models = sorted(curves["model"].unique())
    fig, axes = plt.subplots(
        1, len(models), figsize=(6.2 * len(models) + 1.5, 4.2), squeeze=False, layout="constrained"
    )
    for ax, model in zip(axes[0], models):
        c = curves[(curves["model"] == model)].dropna(subset=[unit]).sort_values(["run_id", "step"])
        c = c.assign(acc=100 * c["macro_accuracy"])
        for algo in algorithm_order(c["algorithm"]):
            a = c[c["algorithm"] == algo]
            for _, run in a.groupby("run_id"):  # every seed, thin
                ax.plot(run[unit], run["acc"], color=colors[algo], alpha=0.35, linewidth=1, marker=".", markersize=4)
            m = mean_curves(a).assign(acc=lambda d: 100 * d["macro_accuracy"])  # the seed mean the tables use
            n = a["run_id"].nunique()
            ax.plot(
                m[unit],
                m["acc"],
                color=colors[algo],
                linewidth=2.4,
                marker="o",
                markersize=6,
                label=f"{algo} (mean of {n})",
            )
        if budget:
            ax.axvline(budget, **PAPER_STYLE, label="budget")
        if unit != "steps":
            ax.xaxis.set_major_formatter(FuncFormatter(_si))
        ax.set_xlabel(f"cumulative {label}")
        ax.set_ylabel("macro accuracy (%)")
        ax.set_title(f"{model}: accuracy vs compute")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


# the ablation's cost panels: (column, title, axis formatter)
ABLATION_COSTS = [
    ("flops_per_step", "FLOPs per step", FuncFormatter(_si)),
    ("generated_tokens_per_step", "generated tokens per step", FuncFormatter(_si)),
    ("wall_s_per_step", "wall seconds per step", None),
]
# the stacked prompt-group bar, bottom to top: (column, label, colour)
GROUP_STACK = [
    ("on_policy_signal", "on-policy with signal", "#4c956c"),
    ("rescued", "rescued by replay/substitution", "#90be6d"),
    ("no_signal", "trained without signal", "#bdbdbd"),
    ("groups_dropped", "generated and dropped", "#e07a5f"),
]


def ablation(table: pd.DataFrame, colors: dict) -> plt.Figure | None:
    """Every algorithm side by side, one row of panels per model: final macro accuracy (95% CI), cost per step (the
    units some run recorded) and the prompt groups per step, stacked by signal; reward controls hatched."""
    if table.empty or len(table) < 2:
        return None
    panels = [("accuracy", "final macro accuracy", PercentFormatter(1.0))]
    panels += [p for p in ABLATION_COSTS if table[p[0]].notna().any()]
    has_groups = any(table[c].notna().any() for c, _, _ in GROUP_STACK)
    ncols = len(panels) + has_groups
    models = sorted(table["model"].unique())
    width = max(3.3, 0.38 * table.groupby("model").size().max() + 1.0)
    fig, axes = plt.subplots(
        len(models), ncols, figsize=(width * ncols + 1.5, 4.0 * len(models)), squeeze=False, layout="constrained"
    )
    for row, model in enumerate(models):
        t = table[table["model"] == model].reset_index(drop=True)
        for col, (key, title, fmt) in enumerate(panels):
            _ablation_bars(axes[row, col], t, key, f"{model}: {title}" if col == 0 else title, fmt, colors)
        if has_groups:
            _group_stack(axes[row, -1], t)
    return fig


def _ablation_bars(ax, t: pd.DataFrame, key: str, title: str, fmt, colors: dict) -> None:
    """One bar per algorithm of ``t[key]`` ("n/a" where missing; CI error bars for the accuracy; controls hatched)."""
    labels = list(t["algorithm"])
    y = t[key].to_numpy(dtype=float)
    bars = ax.bar(labels, np.nan_to_num(y), color=[colors.get(a, "0.5") for a in labels], width=0.65)
    for bar, control in zip(bars, t["control"].astype(bool)):
        if control:
            bar.set_hatch("//")
            bar.set_edgecolor("white")
    if key == "accuracy":
        lo = np.clip(y - t["ci_low"].to_numpy(dtype=float), 0, None)
        hi = np.clip(t["ci_high"].to_numpy(dtype=float) - y, 0, None)
        ax.errorbar(
            labels,
            np.nan_to_num(y),
            yerr=np.nan_to_num(np.vstack([lo, hi])),
            fmt="none",
            ecolor="black",
            capsize=3,
            elinewidth=1,
        )
    for i, v in enumerate(y):
        if not np.isfinite(v):
            ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
    if fmt is not None:
        ax.yaxis.set_major_formatter(fmt)
    _ablation_axes(ax, title)


def _group_stack(ax, t: pd.DataFrame) -> None:
    """Prompt groups per step per algorithm, stacked: with on-policy signal, rescued, trained without signal,
    dropped ("not logged" where a run has none of them)."""
    labels = list(t["algorithm"])
    bottom = np.zeros(len(labels))
    for key, label, color in GROUP_STACK:
        vals = np.nan_to_num(t[key].to_numpy(dtype=float))
        if vals.any():
            ax.bar(labels, vals, 0.65, bottom=bottom, color=color, label=label, edgecolor="white", linewidth=0.5)
            bottom += vals
    for i, (total, control) in enumerate(zip(bottom, t["control"].astype(bool))):
        if total == 0:
            ax.text(i, 0, "not logged", ha="center", va="bottom", fontsize=7, rotation=90)
        elif control:
            ax.text(i, total, "control", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("groups per step")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _ablation_axes(ax, "prompt groups per step")


def _ablation_axes(ax, title: str) -> None:
    """An ablation panel's title and slanted algorithm labels."""
    ax.grid(axis="x", visible=False)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")


def sweep(trials: pd.DataFrame, importances: dict | None, direction: str, best_number: int | None) -> plt.Figure | None:
    """Optuna's optimization history (value per trial and best so far) and parameter importances."""
    if trials is None or trials.empty or "value" not in trials:
        return None
    t = trials.copy()
    t["value"] = pd.to_numeric(t["value"], errors="coerce")
    if "state" in t:
        t = t[t["state"].astype(str).str.upper().str.contains("COMPLETE")]
    t = t.dropna(subset=["value"]).sort_values("number")
    if t.empty:
        return None
    has_imp = bool(importances)
    fig, axes = plt.subplots(
        1, 2 if has_imp else 1, figsize=(11 if has_imp else 6.5, 3.8), squeeze=False, layout="constrained"
    )
    ax = axes[0, 0]
    best = t["value"].cummax() if direction == "maximize" else t["value"].cummin()
    ax.scatter(t["number"], t["value"], color=sns.color_palette("tab10")[0], label="trial", zorder=3)
    ax.step(t["number"], best, where="post", color=sns.color_palette("tab10")[3], label="best so far")
    if best_number is not None and best_number in set(t["number"]):
        b = t[t["number"] == best_number].iloc[0]
        ax.scatter(
            [b["number"]],
            [b["value"]],
            s=160,
            facecolors="none",
            edgecolors="black",
            linewidths=1.5,
            label=f"best: trial {best_number}",
            zorder=4,
        )
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(f"optimization history ({direction})")
    ax.legend(fontsize=8)
    if has_imp:
        ax = axes[0, 1]
        imp = pd.Series(importances).sort_values()
        ax.barh(imp.index, imp.values, color=sns.color_palette("tab10")[2])
        ax.set_xlabel("importance (Optuna)")
        ax.set_title("parameter importances")
    return fig
