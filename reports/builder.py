"""The report itself: `generate_report` loads an experiment (reports.data), computes its tables (reports.analysis),
draws its figures (reports.figures) and writes report.md and report.html (reports.render), figures/ and tables/.

Imports pandas and matplotlib: `harness report` (reports.cli) imports this module only when it writes a report.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.secrets import mask_secrets, mask_uri
from harness.tracking import resolve_tracking_uri
from reports import analysis, figures
from reports.data import ExperimentData, Issue, algorithm_order, base_algorithm, is_control, load_experiment
from reports.render import Document, to_html, to_markdown

# ------------------------------------------------------------------------------------------------
# formatting (numbers -> table cells; "n/a" for a missing or non-finite value)


def _is_number(v) -> bool:
    """A finite number (Python or numpy); False for None, NaN and inf."""
    return v is not None and isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)


def fmt_percent(v, digits: int = 1) -> str:
    """A fraction in percent, without the sign: 0.123 -> "12.3"."""
    return f"{100 * v:.{digits}f}" if _is_number(v) else "n/a"


def fmt_points(v, digits: int = 1) -> str:
    """A difference of fractions in percentage points, signed: 0.05 -> "+5.0"."""
    return f"{100 * v:+.{digits}f}" if _is_number(v) else "n/a"


def fmt_ci(lo, hi, sign: bool = False) -> str:
    """A confidence interval to append to a value, in percent: " [10.0, 12.5]" ("" when a bound is missing)."""
    if not (_is_number(lo) and _is_number(hi)):
        return ""
    f = (lambda x: f"{100 * x:+.1f}") if sign else (lambda x: f"{100 * x:.1f}")
    return f" [{f(lo)}, {f(hi)}]"


def fmt_change(v) -> str:
    """A relative change (ratio - 1) in percent, signed: 0.15 -> "+15.0%"."""
    return f"{100 * v:+.1f}%" if _is_number(v) else "n/a"


def fmt_number(v, unit: str = "") -> str:
    """A cost: scientific notation for FLOPs and values from a million up, else a few significant digits."""
    if not _is_number(v):
        return "n/a"
    a = abs(v)
    if unit == "FLOPs" or a >= 1e6:
        return f"{v:.3g}" if a < 1e3 else f"{v:.3e}"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


# ------------------------------------------------------------------------------------------------
# the report


def default_out_dir(experiment: str) -> Path:
    """``reports/<experiment>-<timestamp>/`` (relative to the working directory), the experiment name made path-safe."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("reports") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', experiment).strip('-') or 'experiment'}-{stamp}"


class _ReportFiles:
    """The report folder's figures/ and tables/: writes them and lists what was written (relative paths)."""

    def __init__(self, root: Path, svg: bool):
        self.root = root
        self.svg = svg
        (root / "figures").mkdir(parents=True, exist_ok=True)
        (root / "tables").mkdir(parents=True, exist_ok=True)
        self.figures: list[str] = []
        self.tables: list[str] = []

    def write_csv(self, df: pd.DataFrame, name: str, index: bool = False) -> str:
        """``df`` as tables/<name>.csv; returns that relative path."""
        path = f"tables/{name}.csv"
        df.to_csv(self.root / path, index=index)
        self.tables.append(path)
        return path

    def write_figure(self, fig, name: str) -> str:
        """``fig`` as figures/<name>.png (and .svg with ``svg``), then closed; returns the PNG's relative path."""
        path = f"figures/{name}.png"
        figures.save(fig, self.root / path, svg=self.svg)
        self.figures.append(path)
        return path


@dataclass
class _Tables:
    """What reports.analysis computes from the loaded runs (DataFrames, written as CSV) for the sections."""

    accuracy: pd.DataFrame
    overhead: pd.DataFrame
    phases: pd.DataFrame
    effective: pd.DataFrame
    effective_curves: pd.DataFrame
    unit: str  # x axis of the accuracy-vs-compute curves
    curves: pd.DataFrame  # accuracy vs compute, one row per evaluation
    matched: pd.DataFrame
    to_target: pd.DataFrame
    ablation: pd.DataFrame


def generate_report(
    tracking_uri: str | None = None,
    experiment: str = "harness",
    out_dir: str | Path | None = None,
    *,
    parent_run_id: str | None = None,
    all_runs: bool = False,
    sweep_run_id: str | None = "auto",
    baseline: str = "grpo",
    compute_unit: str | None = None,
    n_bootstrap: int = 1000,
    include_unfinished: bool = False,
    svg: bool = False,
    title: str | None = None,
    load_samples: bool = True,
    sweep_only: bool = False,
    target_accuracy: float | None = None,
) -> Path:
    """Write the report of ``experiment`` (at ``tracking_uri``) to ``out_dir`` and return that folder.

    ``parent_run_id``: report that experiment parent's children (what `harness run` passes); otherwise the
    newest parent run of the experiment (``all_runs``: every training run). ``sweep_run_id``: a sweep parent
    run id (what `harness sweep` passes), ``"auto"`` (the newest sweep of the experiment) or None (no sweep section).
    ``sweep_only``: leave out the experiment-matrix sections (for `harness sweep`). ``baseline``: the algorithm
    deltas and overheads are relative to; ``compute_unit`` (flops, wall_seconds, generated_tokens, trained_tokens,
    steps): the x axis of the accuracy-vs-compute curves (default: the runs' budget unit); ``target_accuracy``:
    the macro accuracy (0-1) of the cost-to-target table (default: the best one every compared algorithm reaches).
    ``n_bootstrap``: bootstrap resamples for the CIs; ``include_unfinished``: use FAILED/KILLED/RUNNING runs in the
    aggregates too (else listed, not used); ``load_samples=False``: skip the per-sample eval records (the CIs then
    resample seeds only); ``title``: the report's title.

    ``out_dir`` defaults to :func:`default_out_dir`; it receives report.md, report.html (figures inlined as
    data URIs), figures/*.png (and .svg with ``svg``) and tables/*.csv.
    """
    t0 = time.perf_counter()
    uri = resolve_tracking_uri(tracking_uri)
    root = Path(out_dir) if out_dir else default_out_dir(experiment)
    files = _ReportFiles(root, svg)
    data = load_experiment(
        uri,
        experiment,
        parent_run_id=parent_run_id,
        all_runs=all_runs,
        sweep_run_id=sweep_run_id,
        include_unfinished=include_unfinished,
        load_samples=load_samples,
        members=not sweep_only,
    )
    t_load = time.perf_counter() - t0
    figures.setup()
    colors = figures.palette(list(data.runs["algorithm"]) if not data.runs.empty else [])
    tables = _analyse(data, baseline, n_bootstrap, compute_unit, target_accuracy)

    doc = Document(title or f"Experiment report: {experiment}")
    n_used = int(data.runs["include"].sum()) if not data.runs.empty else 0
    doc.p(_intro(data, uri, experiment, baseline, n_used))
    if not sweep_only:
        _summary(doc, tables.accuracy, tables.overhead, tables.effective, baseline)
        _summary_controls(doc, tables.ablation, baseline)
    issues_at = len(doc.blocks)  # the sections add issues too: the issues section is made last, placed here
    _results(doc, files, data, tables, experiment, baseline, colors, n_used, sweep_only, target_accuracy)
    _provenance(doc, files, data, uri)
    doc.blocks[issues_at:issues_at] = _issues(files, data.issues).blocks

    elapsed = time.perf_counter() - t0
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    footer = (
        f"Generated {stamp} by `harness report` in {elapsed:.1f} s (loading {t_load:.1f} s). Figures: "
        f"{len(files.figures)}, tables: {len(files.tables)} (CSV, in `tables/`)."
    )
    (root / "report.md").write_text(to_markdown(doc) + "\n" + footer + "\n")
    (root / "report.html").write_text(to_html(doc, root, footer))
    return root


def _analyse(
    data: ExperimentData, baseline: str, n_bootstrap: int, compute_unit: str | None, target_accuracy: float | None
) -> _Tables:
    """Every table the sections show (in this order: each records its own issues in ``data``)."""
    facts = analysis.run_facts(data)
    acc = analysis.accuracy_table(data, baseline=baseline, n_boot=n_bootstrap)
    overhead = analysis.compute_overhead(data, facts, baseline)
    phases = analysis.phase_breakdown(data)
    effective = analysis.effective_summary(facts, baseline)
    effective_curves = analysis.effective_curves(data)
    unit = analysis.choose_unit(data, compute_unit)
    curves = analysis.accuracy_vs_compute(data)
    matched = analysis.matched_compute(curves)
    to_target = analysis.cost_to_target(curves, baseline, target_accuracy)
    ablation = analysis.ablation_table(data, facts, acc, baseline, to_target, unit)
    return _Tables(acc, overhead, phases, effective, effective_curves, unit, curves, matched, to_target, ablation)


def _intro(data: ExperimentData, uri: str, experiment: str, baseline: str, n_used: int) -> str:
    """The paragraph under the title: the store (masked), the experiment, the run selection and the baseline."""
    experiment_id = f" (id {data.experiment_id})" if data.experiment_id else ""
    return (
        f"MLflow `{mask_uri(uri)}`, experiment **{experiment}**{experiment_id}; runs: {data.selection}. "
        f"{len(data.runs)} member run(s), {n_used} used in the aggregates. Baseline for deltas: `{baseline}`."
    )


def _results(
    doc, files, data, tables: _Tables, experiment, baseline, colors, n_used, sweep_only, target_accuracy
) -> None:
    """Sections 1-5 (a sweep report: only the sweep, as section 5)."""
    if sweep_only:
        doc.h(2, "Results")
        doc.p(
            "A sweep report: the experiment-matrix sections (accuracy, compute, effective steps, accuracy vs compute) "
            "are left out; `harness report --experiment " + experiment + "` reports the matrix runs."
        )
        doc.h(2, "5. Sweep", anchor="sweep")
        _sweep(doc, files, data, level=2)
        return
    if n_used:
        _accuracy(doc, files, tables.accuracy, baseline, colors)
        _compute(doc, files, tables.overhead, tables.phases, baseline, colors)
        _effective(doc, files, tables.effective, tables.effective_curves, baseline, colors)
        _curves(doc, files, data, tables.curves, tables.matched, tables.unit, colors)
        _cost_to_target(doc, files, tables.to_target, baseline, target_accuracy)
    else:
        doc.h(2, "Results")
        doc.p(
            "No finished member run is available, so sections 1-4 (accuracy, compute, effective steps, accuracy vs "
            "compute) are empty" + (" — this report covers a sweep; see section 5." if data.sweep else "."),
            css="warning",
        )
    _ablation(doc, files, tables.ablation, data, baseline, colors)


def _issues(files, issues: list[Issue]) -> Document:
    """The "Missing data and caveats" section (a Document of its own, spliced in after the summary)."""
    section = Document("")
    section.h(2, "Missing data and caveats", anchor="missing-data")
    if issues:
        n_warnings = sum(i.severity == "warning" for i in issues)
        n_notes = sum(i.severity == "note" for i in issues)
        section.p(
            f"{n_warnings} warning(s), {n_notes} note(s). Runs that did not finish are listed here and in the "
            "provenance table but not used in any aggregate."
        )
        section.bullets(
            [f"{'⚠ ' if i.severity == 'warning' else ''}[{i.section}] {i.message}" for i in issues], css="issues"
        )
        csv = files.write_csv(pd.DataFrame([vars(i) for i in issues]), "missing_data")
        section.p(f"Data: [`{csv}`]({csv}).")
    else:
        section.p("None: every run finished and logged every metric and artifact the report uses.")
    return section


# ------------------------------------------------------------------------------------------------
# sections


def _summary(doc, acc, overhead, eff, baseline) -> None:
    doc.h(2, "Summary vs the paper", anchor="summary")
    doc.p(
        "The paper (RePO, arXiv 2506.09340, §4): RePO vs GRPO gains **+18.4** accuracy points on average on "
        "Qwen2.5-Math-1.5B and **+4.1** on Qwen3-1.7B; on Qwen3-1.7B with 8 on-policy + 8 off-policy samples it costs "
        "**+15%** compute and gives **+48%** effective optimization steps. The paper does not define its compute unit "
        'or "effective step"; here effective steps are prompt groups that carry gradient (README), and compute is '
        "shown in every recorded unit."
    )
    rows = []
    models = sorted(
        set(acc["model"])
        | set(overhead["model"] if not overhead.empty else [])
        | set(eff["model"] if not eff.empty else [])
    )
    for model in models:
        algos = set(acc[acc["model"] == model]["algorithm"]) | set(
            eff[eff["model"] == model]["algorithm"] if not eff.empty else []
        )
        for algo in [a for a in algorithm_order(algos) if a != baseline]:
            m = acc[(acc["model"] == model) & (acc["algorithm"] == algo) & (acc["benchmark"] == "macro")]
            d = m.iloc[0] if not m.empty else None
            o = (
                overhead[(overhead["model"] == model) & (overhead["algorithm"] == algo)]
                if not overhead.empty
                else pd.DataFrame()
            )
            ov = {r.unit: r.overhead for r in o.itertuples()}
            e = eff[(eff["model"] == model) & (eff["algorithm"] == algo)] if not eff.empty else pd.DataFrame()
            paper = _paper_cells(algo, model)
            rows.append(
                {
                    "model": model,
                    "algorithm": algo,
                    f"Δ macro acc vs {baseline} (pts)": (
                        fmt_points(d["delta"]) + fmt_ci(d.get("delta_ci_low"), d.get("delta_ci_high"), sign=True)
                    )
                    if d is not None and "delta" in d
                    else "n/a",
                    "paper Δ (pts)": paper["Δ"],
                    "cost/step: wall": fmt_change(ov.get("wall seconds")),
                    "cost/step: FLOPs": fmt_change(ov.get("FLOPs")),
                    "cost/step: trained tokens": fmt_change(ov.get("trained tokens")),
                    "paper cost": paper["cost"],
                    "effective steps/step": fmt_change(e["gain_per_step"].iloc[0]) if not e.empty else "n/a",
                    "effective steps (total)": fmt_change(e["gain_total"].iloc[0]) if not e.empty else "n/a",
                    "paper effective": paper["effective"],
                }
            )
    if rows:
        doc.table(
            pd.DataFrame(rows),
            caption=f"Every non-{baseline} variant vs {baseline} (same model). Accuracy: final evaluation, "
            "macro average over benchmarks, mean over seeds with a 95% bootstrap CI.",
        )
    else:
        doc.p(f"No comparison against `{baseline}` is possible with these runs.", css="warning")


def _paper_cells(algo: str, model: str) -> dict[str, str]:
    """The paper's RePO-vs-GRPO numbers for a summary row: "—" (and why) for a reward control or another algorithm."""
    if is_control(algo) or not base_algorithm(algo).startswith("repo"):
        why = "— (reward control)" if is_control(algo) else "— (not RePO)"
        return {"Δ": why, "cost": "—", "effective": "—"}
    gain = analysis.paper_accuracy_gain(model)
    return {
        "Δ": f"{gain:+.1f}" if gain is not None else "— (not a paper model)",
        "cost": "+15%",
        "effective": "+48%",
    }


def _summary_controls(doc, abl, baseline) -> None:
    """The summary's reward-control and power sentences (from the ablation table)."""
    if abl.empty:
        return
    gains = analysis.control_gains(abl, baseline)
    if not abl["control"].astype(bool).any():
        doc.p(
            "**Reward control.** No reward-control run (`reward.kind=random` or `format_only`) among these runs, so "
            "how much of each gain a spurious reward would also give is not measured."
        )
    elif gains.empty:
        doc.p("**Reward control.** Reward-control runs only: no verifier-reward run of the same model to compare with.")
    else:
        doc.p(
            "**Reward control** (Spurious Rewards, arXiv 2506.10947): each algorithm's gain in final macro accuracy "
            "over the starting model (mean over seeds) next to the gain of a run trained on a reward that carries no "
            "information about correctness; the difference is the part of the gain that needs the verifier's reward."
        )
        doc.bullets([_control_sentence(r) for r in gains.itertuples()])
    row = analysis.smallest_difference(abl)
    if row is not None:
        doc.p(
            f"**Seeds.** Resolving the smallest observed difference ({fmt_points(row['delta'])} pts, "
            f"`{row['algorithm']}` vs `{baseline}` on {row['model']}) would need ~{row['seeds_needed']:.0f} seeds per algorithm (two-sided "
            f"α = {analysis.POWER_ALPHA:g}, power {analysis.POWER:g}, seed-to-seed SD pooled over both arms; "
            "section 5 gives the number for every difference)."
        )
    elif not abl.empty and (abl["algorithm"] != baseline).any():
        why = sorted({w for w in abl["seeds_needed_note"].dropna() if w and w != "baseline"})
        doc.p(
            "**Seeds.** The seeds needed to resolve the observed differences cannot be estimated"
            + (f" ({'; '.join(why)})." if why else ".")
        )


def _control_sentence(r) -> str:
    """One algorithm's gain vs the reward control's, in points: ``control_gains``' row ``r``."""
    beyond = (
        f"{fmt_points(r.beyond_control)} pts beyond the control"
        + (f" ({100 * r.share_beyond:.0f}% of its gain)" if _is_number(r.share_beyond) else "")
        if _is_number(r.beyond_control)
        else "the difference is not available"
    )
    return (
        f"{r.model}: `{r.algorithm}` {fmt_points(r.gain)} pts over its starting accuracy vs the control "
        f"`{r.control}`'s {fmt_points(r.control_gain)} pts: {beyond}."
    )


def _accuracy(doc, files, acc, baseline, colors) -> None:
    doc.h(2, "1. Accuracy", anchor="accuracy")
    if acc.empty:
        doc.p("No finished run logged an evaluation.", css="warning")
        return
    doc.p(
        "Final evaluation of each run (its last `eval/*` step), mean over seeds. 95% CI: percentile bootstrap that "
        "resamples seeds, then prompts within each drawn seed from the per-sample eval records "
        "(`eval/<tag>-step<N>.jsonl`; a prompt's samples stay together). Seeds without per-sample records contribute "
        f"their logged accuracy. *before* = the starting model (step 0). Δ = difference of means vs `{baseline}` with "
        "the CI of the difference. The best algorithm of each row is highlighted."
    )
    csv = files.write_csv(acc, "accuracy")
    algos = algorithm_order(acc["algorithm"])
    nseeds = acc[acc["benchmark"] == "macro"].groupby(["algorithm"])["n_seeds"].max().to_dict()
    rows, marks = [], []
    for (model, bench), g in acc.groupby(["model", "benchmark"], sort=False):
        g = g.set_index("algorithm")
        row = {
            "model": model,
            "benchmark": "**macro average**" if bench == "macro" else bench,
            "before": fmt_percent(g["start"].iloc[0]),
        }
        mark = {"model": False, "benchmark": False, "before": False}
        means = g["mean"].reindex(algos)
        best = means.max() if means.notna().any() and means.dropna().nunique() > 1 else None  # no winner among equals
        for a in algos:
            col = f"{a} (n={nseeds.get(a, 0)})"
            if a in g.index:
                r = g.loc[a]
                row[col] = fmt_percent(r["mean"]) + fmt_ci(r["ci_low"], r["ci_high"])
                mark[col] = best is not None and _is_number(r["mean"]) and np.isclose(r["mean"], best)
            else:
                row[col], mark[col] = "n/a", False
        for a in algos:
            if a == baseline:
                continue
            col = f"Δ {a}"
            if a in g.index and "delta" in g.columns and _is_number(g.loc[a].get("delta")):
                r = g.loc[a]
                row[col] = fmt_points(r["delta"]) + fmt_ci(r["delta_ci_low"], r["delta_ci_high"], sign=True)
            else:
                row[col] = "n/a"
            mark[col] = False
        rows.append(row)
        marks.append(mark)
    table = pd.DataFrame(rows)
    # macro rows last within each model
    table["_m"] = table["benchmark"].str.startswith("**")
    order = table.sort_values(["model", "_m"], kind="stable").index
    table = table.loc[order].drop(columns="_m").reset_index(drop=True)
    hl = pd.DataFrame(marks).loc[order].reset_index(drop=True)[table.columns]
    doc.table(table, highlight=hl, csv=csv, caption="Final accuracy (%) [95% CI]; Δ in points vs " + baseline + ".")
    fig = figures.accuracy_bars(acc, colors)
    if fig is not None:
        doc.figure(
            files.write_figure(fig, "accuracy"),
            "Final accuracy per benchmark and macro average; error bars: 95% bootstrap CI; black lines: the model "
            "before training.",
        )


def _compute(doc, files, overhead, phases, baseline, colors) -> None:
    doc.h(2, "2. Compute overhead", anchor="compute")
    if overhead.empty:
        doc.p("No finished run logged per-step cost metrics (`time/step_s`, `tokens/*`, `flops/*`).", css="warning")
        return
    doc.p(
        "Cost per optimizer step (mean over steps, then over seeds) in every recorded unit, its overhead vs "
        f"`{baseline}` (the paper: **+15%** compute for RePO on Qwen3-1.7B), the total over the run, and the cost per "
        "accuracy point gained (total / (final − before macro accuracy in points); n/a when the run did not improve)."
    )
    csv = files.write_csv(overhead, "compute_overhead")
    t = pd.DataFrame(
        {
            "model": overhead["model"],
            "algorithm": overhead["algorithm"],
            "unit": overhead["unit"],
            "per step": [fmt_number(v, u) for v, u in zip(overhead["per_step"], overhead["unit"])],
            f"vs {baseline}": [fmt_change(v) if _is_number(v) else "—" for v in overhead["overhead"]],
            "paper": ["+15%"] * len(overhead),
            "total": [fmt_number(v, u) for v, u in zip(overhead["total"], overhead["unit"])],
            "acc gain (pts)": [f"{v:+.1f}" if _is_number(v) else "n/a" for v in overhead["gain_points"]],
            "per acc point": [fmt_number(v, u) for v, u in zip(overhead["per_point"], overhead["unit"])],
        }
    )
    doc.table(t, csv=csv, caption="Cost per step, overhead and cost per accuracy point.")
    if not phases.empty:
        pcsv = files.write_csv(phases, "phase_breakdown")
        wide = phases.pivot_table(
            index=["model", "algorithm", "kind"], columns="phase", values="per_step", sort=False
        ).reset_index()
        for c in wide.columns[3:]:
            wide[c] = [fmt_number(v, "FLOPs" if k == "FLOPs" else "") for v, k in zip(wide[c], wide["kind"])]
        doc.table(
            wide.fillna("—"),
            csv=pcsv,
            caption="Mean cost per step by phase (`time/<phase>_s`, `flops/<phase>`); "
            "*other* = step time outside the named phases.",
        )
    fig = figures.compute_phases(phases, overhead, baseline, colors)
    if fig is not None:
        doc.figure(
            files.write_figure(fig, "compute"),
            f"Per-phase cost per step (stacked; labels: overhead vs {baseline}; dashed: {baseline} +15%, the paper's "
            "RePO overhead) and the overhead per unit.",
        )


def _effective(doc, files, eff, curves, baseline, colors) -> None:
    doc.h(2, "3. Effective optimization steps", anchor="effective")
    if eff.empty:
        doc.p("No finished run logged `effective/step` or `effective/steps_total`.", css="warning")
        return
    doc.p(
        "A prompt group carries gradient when any of its rows has a non-zero advantage; `effective/steps_total` sums "
        f"the per-step fraction of such groups (units of full steps). Gain vs `{baseline}`: per step (the paper's "
        "**+48%** compares at equal steps) and in total over the run (under a matched compute budget a costlier "
        "algorithm takes fewer steps)."
    )
    csv = files.write_csv(eff, "effective_steps")
    t = pd.DataFrame(
        {
            "model": eff["model"],
            "algorithm": eff["algorithm"],
            "runs": eff["n_runs"],
            "steps": [f"{v:.0f}" for v in eff["steps"]],
            "effective steps": [fmt_number(v) for v in eff["effective_total"]],
            "effective / step": [fmt_percent(v) + "%" if _is_number(v) else "n/a" for v in eff["effective_per_step"]],
            "zero-variance groups": [fmt_percent(v) + "%" if _is_number(v) else "n/a" for v in eff["zero_std_frac"]],
            f"gain/step vs {baseline}": [fmt_change(v) if _is_number(v) else "—" for v in eff["gain_per_step"]],
            f"gain total vs {baseline}": [fmt_change(v) if _is_number(v) else "—" for v in eff["gain_total"]],
            "paper": ["+48%"] * len(eff),
        }
    )
    doc.table(t, csv=csv, caption="Effective optimization steps (mean over seeds).")
    fig = figures.effective_steps(curves, eff, baseline, colors)
    if fig is not None:
        doc.figure(
            files.write_figure(fig, "effective_steps"),
            "Cumulative effective steps (band: range over seeds; dotted: every group effective), the fraction of "
            f"zero-variance groups, and the gain vs {baseline} (dashed: the paper's +48%).",
        )
    if not curves.empty:
        ccsv = files.write_csv(curves, "effective_curves")
        doc.p(f"Curve data (per run and step): [`{ccsv}`]({ccsv}).")


def _cost_to_target(doc, files, table, baseline, explicit) -> None:
    """Cost to reach a target accuracy, per unit: the other half of the compute overhead (per step is in section 2)."""
    if table.empty:
        return
    how = (
        "the target given with `--target-accuracy`"
        if explicit is not None
        else "the best macro accuracy that every compared algorithm's seed-mean curve reaches "
        "(the lowest of their peaks)"
    )
    doc.p(
        f"**Cost to reach a target accuracy.** Target: {how}. Cost: where the seed-mean curve first reaches it (linear "
        f"between evaluations), in every recorded unit, and its ratio to `{baseline}`'s. Evaluations are sparse, so "
        "this is coarse."
    )
    csv = files.write_csv(table, "cost_to_target")
    t = pd.DataFrame(
        {
            "model": table["model"],
            "algorithm": table["algorithm"],
            "target": [f"{100 * v:.1f}%" for v in table["target"]],
            "unit": [analysis.unit_label(u) for u in table["unit"]],
            "cost to target": [
                fmt_number(v, analysis.unit_label(u)) if r else "not reached"
                for v, u, r in zip(table["cost"], table["unit"], table["reached"])
            ],
            f"vs {baseline}": [fmt_change(v) if _is_number(v) else "—" for v in table["vs_baseline"]],
            "seeds": table["n_runs"],
        }
    )
    doc.table(t, csv=csv, caption="Cost for the seed-mean accuracy curve to first reach the target.")


def _common_budget(data, unit) -> float | None:
    """The budget value when every used run has the same budget in ``unit`` (drawn as a line)."""
    runs = data.finished
    if runs.empty or not all(analysis.unit_for_budget(u) == unit for u in runs["budget_unit"]):
        return None
    vals = set(runs["budget_value"])
    try:
        return float(vals.pop()) if len(vals) == 1 else None
    except (TypeError, ValueError):
        return None


def _curves(doc, files, data, curves, matched, unit, colors) -> None:
    doc.h(2, "4. Accuracy vs compute", anchor="accuracy-vs-compute")
    if curves.empty:
        doc.p("No finished run logged `eval/macro_accuracy`.", css="warning")
        return
    label = analysis.unit_label(unit)
    doc.p(
        "Macro accuracy at every evaluation (before training, at fixed budget fractions, after training) against the "
        f"cumulative {label} spent so far: the matched-compute view. Thick lines: mean over seeds at each budget "
        "fraction; thin lines: each seed. The table gives the mean over seeds at each budget fraction."
    )
    csv = files.write_csv(curves, "accuracy_vs_compute")
    budget = _common_budget(data, unit)
    fig = figures.accuracy_vs_compute(curves, unit, label, colors, budget=budget)
    if fig is not None:
        doc.figure(
            files.write_figure(fig, "accuracy_vs_compute"),
            f"Macro accuracy vs cumulative {label}; one panel per model; thick: mean over seeds at each budget "
            "fraction, thin: each seed" + (", dashed: the budget." if budget else "."),
        )
        doc.p(f"Curve data (every evaluation of every run, cumulative cost in every recorded unit): [`{csv}`]({csv}).")
    elif unit != "steps":
        doc.p(
            f"The runs did not record cumulative {label}; no curve drawn (see `{csv}` for the other units).",
            css="warning",
        )
    if not matched.empty:
        mcsv = files.write_csv(matched, "matched_compute")
        wide = matched.pivot_table(index=["model", "fraction"], columns="algorithm", values="mean", sort=True)
        wide = wide[algorithm_order(wide.columns)]
        best = wide.eq(wide.max(axis=1), axis=0) & wide.notna()
        best[wide.nunique(axis=1) <= 1] = False  # e.g. every run's step-0 evaluation: no winner
        disp = wide.map(fmt_percent)
        disp = disp.reset_index()
        disp["fraction"] = [f"{100 * f:.0f}%" for f in disp["fraction"]]
        disp = disp.rename(columns={"fraction": "budget spent"})
        hl = pd.concat(
            [pd.DataFrame(False, index=best.index, columns=["model", "budget spent"]), best], axis=1
        ).reset_index(drop=True)
        hl.columns = disp.columns
        doc.table(
            disp,
            highlight=hl,
            csv=mcsv,
            caption="Macro accuracy (%) at each budget fraction, mean over seeds; best per row highlighted.",
        )


def _dash(v, fmt) -> str:
    """``fmt(v)`` for a number, "—" for a missing one (a metric the run did not log)."""
    return fmt(v) if _is_number(v) else "—"


def _ablation(doc, files, abl, data, baseline, colors) -> None:
    """Section 5: every algorithm and reward control side by side (accuracy, power, cost, groups with signal)."""
    doc.h(2, "5. Algorithm ablation", anchor="ablation")
    if abl.empty:
        doc.p("No finished run to compare.", css="warning")
    else:
        _ablation_text(doc, abl, baseline)
        csv = files.write_csv(abl, "ablation")
        t, hl = _ablation_cost_table(abl, baseline)
        doc.table(
            t,
            highlight=hl,
            csv=csv,
            caption="Every algorithm side by side (mean over seeds; best accuracy highlighted)"
            + (
                "; reward controls (`[reward=...]`) after the algorithms." if abl["control"].astype(bool).any() else "."
            ),
        )
        groups = [c for c in abl.columns if c in analysis.GROUP_COLUMNS]
        gcsv = files.write_csv(abl[["model", "algorithm", *groups]], "ablation_groups")
        doc.table(
            _ablation_groups_table(abl),
            csv=gcsv,
            caption="Prompt groups per step (mean over steps, then seeds): generated, trained (kept) and dropped "
            "(resampling algorithms), and how the trained ones split by signal. — : not logged by these runs.",
        )
        gains = analysis.control_gains(abl, baseline)
        if not gains.empty:
            gcsv = files.write_csv(gains, "reward_control")
            doc.p(f"Gains vs the reward control (sentences in the summary): [`{gcsv}`]({gcsv}).")
        else:
            doc.p("No reward-control run (`reward.kind` other than `verifier`) among these runs.")
        fig = figures.ablation(abl, colors)
        if fig is not None:
            doc.figure(
                files.write_figure(fig, "ablation"),
                "Every algorithm side by side: final macro accuracy (95% CI), cost per step, and the prompt groups per "
                "step split into on-policy with signal, rescued by replay or substitution, trained without signal and "
                "dropped (hatched bars: reward controls).",
            )
    _sweep(doc, files, data)


def _ablation_text(doc, abl, baseline) -> None:
    """The paragraph above the ablation tables: what the columns are, the target and the warnings."""
    unit = abl["target_unit"].dropna()
    label = analysis.unit_label(unit.iloc[0]) if not unit.empty else None
    doc.p(
        "One row per algorithm (and reward control) and model. *seeds needed*: seeds per algorithm for a two-sided "
        f"test at α = {analysis.POWER_ALPHA:g} to resolve the observed Δ vs `{baseline}` with power "
        f"{analysis.POWER:g} (two-sample normal approximation, n = 2 (z₀.₉₇₅ + z₀.₈)² σ² / Δ², σ pooled from the "
        "seed-to-seed SD of both arms' final macro accuracy; at least 2). *cost per step*: mean over steps of "
        "`tokens/generated` (every sample generated, dropped ones too), `flops/total` and `time/step_s`. "
        + (
            f"*{label} to target*: cumulative {label} at which the seed-mean curve first reaches the target of the "
            "cost-to-target table (section 4)."
            if label
            else ""
        )
    )
    if abl["algorithm"].nunique() < 2:
        doc.p("A single algorithm among the finished runs: nothing to compare it with.", css="warning")


def _ablation_cost_table(abl, baseline) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ablation's accuracy, power and cost table and its highlight (best accuracy per model)."""
    unit = abl["target_unit"].dropna()
    label = analysis.unit_label(unit.iloc[0]) if not unit.empty else "cost"
    t = pd.DataFrame(
        {
            "model": abl["model"],
            "algorithm": abl["algorithm"],
            "reward": abl["reward"],
            "strategy": [s if s != "-" else "—" for s in abl["strategy"]],
            "runs": abl["n_runs"],
            "macro acc (%)": [
                _dash(v, fmt_percent) + fmt_ci(lo, hi)
                for v, lo, hi in zip(abl["accuracy"], abl["ci_low"], abl["ci_high"])
            ],
            f"Δ vs {baseline} (pts)": [_dash(v, fmt_points) for v in abl["delta"]],
            "gain vs start (pts)": [_dash(v, fmt_points) for v in abl["gain"]],
            "seeds needed": [_seeds_cell(n, why) for n, why in zip(abl["seeds_needed"], abl["seeds_needed_note"])],
            "gen. tokens / step": [_dash(v, fmt_number) for v in abl["generated_tokens_per_step"]],
            "FLOPs / step": [_dash(v, lambda x: fmt_number(x, "FLOPs")) for v in abl["flops_per_step"]],
            "wall s / step": [_dash(v, fmt_number) for v in abl["wall_s_per_step"]],
            f"wall vs {baseline}": [_dash(v, fmt_change) for v in abl["wall_overhead"]],
            f"{label} to target": [
                _target_cell(c, vs, tgt, label)
                for c, vs, tgt in zip(abl["cost_to_target"], abl["cost_to_target_vs_baseline"], abl["target"])
            ],
            "effective / step": [_dash(v, lambda x: fmt_percent(x) + "%") for v in abl["effective_per_step"]],
        }
    )
    hl = pd.DataFrame(False, index=t.index, columns=t.columns)
    for _, g in abl.groupby("model"):
        v = g["accuracy"].dropna()
        if v.nunique() > 1:
            hl.loc[v[v == v.max()].index, "macro acc (%)"] = True
    return t, hl


def _seeds_cell(n, why) -> str:
    """The "seeds needed" cell: the number, "—" for the baseline, else "n/a (why)"."""
    if _is_number(n):
        return f"{n:.0f}"
    return "—" if why == "baseline" else f"n/a ({why})" if isinstance(why, str) and why else "n/a"


def _target_cell(cost, vs, target, label) -> str:
    """The cost-to-target cell: the cost and its change vs the baseline, "not reached", or "—" without a target."""
    if not _is_number(target):
        return "—"
    if not _is_number(cost):
        return "not reached"
    return fmt_number(cost, label) + (f" ({fmt_change(vs)})" if _is_number(vs) else "")


def _ablation_groups_table(abl) -> pd.DataFrame:
    """The ablation's prompt-group table: counts per step ("—" where a run did not log them)."""
    count = lambda v: _dash(v, lambda x: f"{x:.2f}")  # noqa: E731
    return pd.DataFrame(
        {
            "model": abl["model"],
            "algorithm": abl["algorithm"],
            "generated": [count(v) for v in abl["groups_generated"]],
            "trained": [count(v) for v in abl["groups_kept"]],
            "dropped": [count(v) for v in abl["groups_dropped"]],
            "extra rounds": [count(v) for v in abl["extra_rounds"]],
            "on-policy with signal": [count(v) for v in abl["on_policy_signal"]],
            "replayed with signal": [count(v) for v in abl["replay_signal"]],
            "rescued by replay/substitution": [count(v) for v in abl["rescued"]],
            "trained without signal": [count(v) for v in abl["no_signal"]],
            "zero-variance (%)": [_dash(v, fmt_percent) for v in abl["zero_std_frac"]],
            "replay hit rate": [_dash(v, lambda x: fmt_percent(x) + "%") for v in abl["hit_rate"]],
            "staleness (steps)": [_dash(v, fmt_number) for v in abl["staleness"]],
        }
    )


def _sweep(doc, files, data, level: int = 3) -> None:
    """The sweep (a subsection of section 5, or with ``level=2`` a section whose heading the caller wrote)."""
    sw = data.sweep
    if level == 3:
        doc.h(3, "Sweep", anchor="sweep")
    if sw is None:
        doc.p("No sweep (`harness sweep`) in this experiment.")
        return
    t = sw.trials
    n = len(t) if t is not None else 0
    states = t["state"].value_counts().to_dict() if t is not None and "state" in t else {}
    doc.p(
        f"Study **{sw.name}**, sweep run `{sw.run_id}` ({sw.status}); {n} trial(s)"
        + (" (" + ", ".join(f"{v} {k.lower()}" for k, v in states.items()) + ")" if states else "")
        + f"; direction: {sw.direction}."
    )
    best_number = _sweep_best(doc, sw)
    if t is not None and not t.empty:
        _sweep_trials(doc, files, t, sw.direction)
    if sw.importances:
        icsv = files.write_csv(
            pd.Series(sw.importances, name="importance").rename_axis("param").reset_index(), "sweep_importances"
        )
        doc.table(
            pd.DataFrame({"param": list(sw.importances), "importance": [f"{v:.3f}" for v in sw.importances.values()]}),
            csv=icsv,
            caption="Parameter importances (`importances.json`).",
        )
    else:
        doc.p("No parameter importances were recorded (`importances.json`).")
    fig = figures.sweep(t, sw.importances, sw.direction, best_number)
    if fig is not None:
        doc.figure(
            files.write_figure(fig, "sweep"), "Optuna optimization history (best so far) and parameter importances."
        )
    else:
        doc.p("No completed trial with an objective value: no history plot.", css="warning")
    if sw.trial_runs is not None and not sw.trial_runs.empty:
        _sweep_unfinished_trials(data, sw, t)


def _sweep_best(doc, sw) -> int | None:
    """The best trial's table (``best_trial.json``, when there is one); returns its trial number."""
    if not sw.best:
        return None
    try:
        best_number = int(sw.best.get("number")) if sw.best.get("number") is not None else None
    except (TypeError, ValueError):
        best_number = None
    rows = []
    for k, v in sw.best.items():
        if isinstance(v, dict):
            rows += [{"field": f"{k}.{kk}", "value": str(vv)} for kk, vv in v.items()]
        else:
            rows.append({"field": k, "value": f"`{v}`" if k.endswith("run_id") else str(v)})
    doc.table(pd.DataFrame(rows), caption="Best trial (`best_trial.json`).")
    return best_number


def _sweep_trials(doc, files, t: pd.DataFrame, direction: str) -> None:
    """The top 10 trials by objective (every trial in the CSV)."""
    csv = files.write_csv(t, "sweep_trials")
    show = t.copy()
    if "value" in show:
        show["value"] = pd.to_numeric(show["value"], errors="coerce")
        show = show.sort_values("value", ascending=direction == "minimize")
    if "duration" in show:
        show["duration"] = pd.to_timedelta(show["duration"], errors="coerce").dt.total_seconds()
        show = show.rename(columns={"duration": "duration (s)"})
    keep = [
        c
        for c in show.columns
        if c in ("number", "value", "state", "duration (s)") or c.startswith(("params_", "user_attrs_"))
    ]
    show = show[keep].head(10).rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    show = show.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
    doc.table(show.reset_index(drop=True), csv=csv, caption=f"Top {len(show)} trial(s) by objective (all trials: CSV).")


def _sweep_unfinished_trials(data, sw, t: pd.DataFrame | None) -> None:
    """Issues for the trial runs that did not finish: pruned (a note) or failed (a warning)."""
    # Optuna's own state says why a trial's run ended early: pruning is the pruner's decision, not a failure
    trial_states = {}
    if t is not None and {"number", "state"} <= set(t.columns):
        trial_states = {int(n): str(st) for n, st in zip(t["number"], t["state"]) if pd.notna(n)}
    bad = sw.trial_runs[sw.trial_runs["status"] != "FINISHED"]
    pruned = [r for r in bad.itertuples() if trial_states.get(r.trial) == "PRUNED"]
    failed = [r for r in bad.itertuples() if trial_states.get(r.trial) != "PRUNED"]
    if pruned:
        data.issue(
            "sweep",
            f"{len(pruned)} trial(s) stopped early by the study's pruner: "
            + ", ".join(f"trial {r.trial} `{r.run_id}`" for r in pruned),
            severity="note",
        )
    if failed:
        data.issue(
            "sweep",
            f"{len(failed)} sweep trial run(s) did not finish: "
            + ", ".join(f"trial {r.trial} `{r.run_id}` ({trial_states.get(r.trial, r.status)})" for r in failed),
        )


def _provenance(doc, files, data, uri) -> None:
    shown = mask_uri(uri)  # the real URI only builds links (without credentials); the text shows it masked
    doc.h(2, "6. Provenance", anchor="provenance")
    runs = analysis.provenance_runs(data)
    if data.parent:
        doc.p(
            f"Experiment parent run: `{data.parent['run_id']}` ({data.parent.get('run_name') or ''}, "
            f"{data.parent.get('status')})."
        )
    sw = data.sweep
    if sw is not None and sw.trial_runs is not None and not sw.trial_runs.empty:
        tcsv = files.write_csv(sw.trial_runs, "sweep_trial_runs")
        t = sw.trial_runs.copy()
        t["run_id"] = _run_links(uri, data.experiment_id, t["run_id"])
        doc.table(t.fillna(""), csv=tcsv, caption=f"Sweep trial runs (children of sweep run `{sw.run_id}`).")
    if runs.empty:
        if not (sw is not None and data.selection.startswith("none")):
            doc.p("No member runs.", css="warning")
        if not uri.startswith(("http://", "https://")):
            doc.p(f"Open the runs in the MLflow UI: `mlflow ui --backend-store-uri {shown}`.")
        return
    csv = files.write_csv(runs, "runs")
    show = runs.copy()
    show["run_id"] = _run_links(uri, data.experiment_id, show["run_id"])
    show["used"] = ["yes" if u else "**no**" for u in show["used"]]
    show["status"] = [s if s == "FINISHED" else f"**{s}**" for s in show["status"]]
    show["duration_s"] = [f"{v:.0f}" if _is_number(v) else "" for v in show["duration_s"]]
    show["final_eval_step"] = [str(int(v)) if _is_number(v) else "none" for v in show["final_eval_step"]]
    doc.table(show.fillna(""), csv=csv, caption="Member runs (MLflow run ids).")
    if not uri.startswith(("http://", "https://")):
        doc.p(
            f"Open them in the MLflow UI: `mlflow ui --backend-store-uri {shown}` (experiment id {data.experiment_id})."
        )
    env = analysis.environment(data)
    if not env.empty:
        ecsv = files.write_csv(env, "environment")
        doc.table(
            env[["kind", "key", "values", "runs_without"]].rename(columns={"runs_without": "runs without it"}),
            csv=ecsv,
            caption="Versions, hardware, engine (run tags) and determinism settings (seed params/tags); "
            "values across runs.",
        )
    diff = analysis.config_diff(data)
    diff = diff.map(mask_secrets)  # runs logged before params were masked may hold a password in a URI param
    if diff.empty:
        doc.p("Config: every member run has identical params.")
    else:
        dcsv = files.write_csv(diff, "config_diff")
        other = diff[diff["category"] == "other (check)"]
        doc.p(
            f"Config differences between member runs: {len(diff)} param(s) differ; "
            + (
                f"**{len(other)} outside the algorithm section and per-run fields** "
                f"({', '.join('`' + p + '`' for p in other['param'])}), check these are intended."
                if not other.empty
                else "all in the algorithm section or per-run fields (seed, run name, output folder)."
            )
        )
        show = (
            diff
            if diff.shape[1] <= 14
            else diff[["param", "category"]].assign(
                values=diff.iloc[:, 2:].astype(str).apply(lambda r: " | ".join(sorted(set(r))), axis=1)
            )
        )
        doc.table(show, csv=dcsv, caption="Params that differ between member runs (columns: run names).")


def _run_links(uri: str, experiment_id: str | None, run_ids) -> list[str]:
    """Run ids as Markdown links to the MLflow UI (a server URI), else as code."""
    cells = []
    for run_id in run_ids:
        link = analysis.mlflow_link(uri, experiment_id, run_id)
        cells.append(f"[{run_id}]({link})" if link else f"`{run_id}`")
    return cells
