"""The numbers behind the report: pandas tables computed from ``ExperimentData``.

Every function returns plain DataFrames (written as CSV next to the report) and records anything it
had to leave out in ``data.issues``. Only runs with ``include`` (finished, not duplicated) are used.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from harness.secrets import without_credentials
from reports.data import DETERMINISM, ENV_TAG, ExperimentData, algorithm_order

# The paper's claims (RePO, arXiv 2506.09340, §4): RePO vs GRPO.
PAPER_COMPUTE_OVERHEAD = 0.15  # +15% compute, Qwen3-1.7B, 8 on-policy + 8 off-policy samples
PAPER_EFFECTIVE_GAIN = 0.48  # +48% effective optimization steps (same setting)
PAPER_ACCURACY_GAIN = {"qwen2.5-math-1.5b": 18.4, "qwen3-1.7b": 4.1}  # average absolute gain, points

# unit -> (per-step metric, cumulative metric, label); the order is the report's column order.
UNITS: dict[str, tuple[str, str, str]] = {
    "wall_seconds": ("time/step_s", "time/step_s_total", "wall seconds"),
    "generated_tokens": ("tokens/generated", "tokens/generated_total", "generated tokens"),
    "trained_tokens": ("tokens/trained", "tokens/trained_total", "trained tokens"),
    "flops": ("flops/total", "flops/total_cum", "FLOPs"),
}
# The trainer logs every summed per-step metric's running total as ``<metric>_total``, so cumulative FLOPs
# arrive as "flops/total_total"; the name is the trainer's (harness/trainer.py) and must stay as it is.
TRAINER_CUMULATIVE_FLOPS = "flops/total_total"
# other names a cumulative counter may have been logged under, tried after ``UNITS``' own
CUMULATIVE_ALIASES = {"flops": (TRAINER_CUMULATIVE_FLOPS,)}
TIME_PHASES = ("generate_s", "score_s", "logprob_s", "ref_s", "train_s", "build_batch_s", "after_step_s")
FLOP_PHASES = ("generate", "train", "logprob", "ref")
PER_RUN_PARAM = re.compile(r"(^|\.)(seed|run_name|output_dir)$")


def unit_for_budget(unit: str | None) -> str | None:
    """Map a ``harness.budget_unit`` tag (steps, generated_tokens, trained_tokens, flops, wall_seconds) to a unit
    name (a key of ``UNITS``, or ``"steps"``); None when it names none of them."""
    if not unit:
        return None
    u = unit.lower()
    if "flop" in u:
        return "flops"
    if "wall" in u or "sec" in u or "time" in u:
        return "wall_seconds"
    if "gen" in u:
        return "generated_tokens"
    if "train" in u:
        return "trained_tokens"
    if "step" in u:
        return "steps"
    return None


def _nanmean(a, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _fmt_seeds(seeds) -> str:
    return ", ".join(str(s) for s in sorted(s for s in seeds if s is not None))


# ------------------------------------------------------------------------------------------------
# per-run facts


def macro_at(data: ExperimentData, run_id: str, step: int) -> float:
    h = data.history(run_id, "eval/macro_accuracy")
    if step in h.index:
        return float(h[step])
    vals = [data.history(run_id, k).get(step) for k in data.keys(run_id) if re.fullmatch(r"eval/[^/]+/accuracy", k)]
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def cumulative(data: ExperimentData, run_id: str, unit: str) -> pd.Series:
    """step -> cumulative cost in ``unit`` (``steps``: the step itself); empty when the run did not record it."""
    if unit == "steps":
        steps = training_steps(data, run_id)
        return pd.Series(steps, index=steps, dtype=float)
    per_step, cum, _ = UNITS[unit]
    for key in (cum, *CUMULATIVE_ALIASES.get(unit, ())):
        h = data.history(run_id, key)
        if not h.empty:
            return h
    h = data.history(run_id, per_step)
    return h.sort_index().cumsum() if not h.empty else h


def training_steps(data: ExperimentData, run_id: str) -> list[int]:
    for key in ("effective/step", "time/step_s", "reward/mean", "tokens/generated", "flops/total"):
        h = data.history(run_id, key)
        if not h.empty:
            return [int(s) for s in h.index]
    return []


def run_facts(data: ExperimentData) -> pd.DataFrame:
    """One row per included run: steps, accuracy before/final, per-unit per-step mean and total, effective steps,
    replay."""
    rows = []
    for _, r in data.finished.iterrows():
        rid = r.run_id
        steps = training_steps(data, rid)
        final = data.final_steps.get(rid)
        ev = data.history(rid, "eval/macro_accuracy")
        first = (
            0
            if 0 in ev.index
            or any(0 in data.history(rid, k).index for k in data.keys(rid) if re.fullmatch(r"eval/[^/]+/accuracy", k))
            else None
        )
        row: dict[str, Any] = {
            "run_id": rid,
            "algorithm": r.algorithm,
            "model": r.model,
            "seed": r.seed,
            "steps": len(steps),
            "last_step": max(steps) if steps else np.nan,
            "final_eval_step": final,
            "acc_start": macro_at(data, rid, first) if first is not None else np.nan,
            "acc_final": macro_at(data, rid, final) if final is not None else np.nan,
        }
        if final is None:
            data.issue("accuracy", f"Run `{rid}` ({r.algorithm}, {r.model}, seed {r.seed}) logged no evaluation.", rid)
        elif steps and final < max(steps):
            data.issue(
                "accuracy",
                f"Run `{rid}`: last evaluation at step {final} but training ran to step {max(steps)}.",
                rid,
                severity="note",
            )
        if not steps:
            data.issue(
                "compute", f"Run `{rid}` ({r.algorithm}, seed {r.seed}) logged no per-step training metrics.", rid
            )
        for unit, (per_step, _, _) in UNITS.items():
            h = data.history(rid, per_step)
            c = cumulative(data, rid, unit)
            row[f"{unit}_per_step"] = float(h.mean()) if not h.empty else np.nan
            row[f"{unit}_total"] = float(c.iloc[-1]) if not c.empty else np.nan
        eff = data.history(rid, "effective/steps_total")
        eff_step = data.history(rid, "effective/step")
        row["effective_total"] = (
            float(eff.iloc[-1]) if not eff.empty else (float(eff_step.sum()) if not eff_step.empty else np.nan)
        )
        row["effective_per_step"] = (
            float(eff_step.mean()) if not eff_step.empty else (row["effective_total"] / len(steps) if steps else np.nan)
        )
        z = data.history(rid, "groups/zero_std_frac")
        row["zero_std_frac"] = float(z.mean()) if not z.empty else np.nan
        for k in ("replay/hit_rate", "replay/staleness_mean"):
            h = data.history(rid, k)
            row[k.split("/")[1]] = float(h.mean()) if not h.empty else np.nan
        rows.append(row)
    cols = ["run_id", "algorithm", "model", "seed", "steps"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)


# ------------------------------------------------------------------------------------------------
# 1. accuracy with a hierarchical bootstrap


def _inner_means(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` bootstrap means of ``values`` (prompts resampled with replacement), chunked to bound memory."""
    P = values.size
    out = np.empty(n)
    chunk = max(1, 2_000_000 // max(P, 1))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        out[s:e] = values[rng.integers(0, P, (e - s, P))].mean(axis=1)
    return out


def hierarchical_bootstrap(
    units: list[dict[str, Any]], benchmarks: list[str], n_boot: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Resample seeds, then prompts within each drawn seed; returns bench -> ``n_boot`` means, and ``"macro"``.

    ``units``: one dict per seed, bench -> per-prompt accuracies (np.ndarray, resampled) or a float
    (the logged accuracy: no within-seed resampling), missing benches are skipped. The same seed draw
    is used for every benchmark so the macro average resamples whole seeds.
    """
    S = len(units)
    idx = rng.integers(0, S, (n_boot, S))
    out: dict[str, np.ndarray] = {}
    for b in benchmarks:
        vals = np.full((n_boot, S), np.nan)
        for j, u in enumerate(units):
            v = u.get(b)
            if v is None:
                continue
            mask = idx == j
            k = int(mask.sum())
            if not k:
                continue
            if isinstance(v, np.ndarray) and v.size > 1:
                vals[mask] = _inner_means(v, k, rng)
            else:
                vals[mask] = float(np.mean(v))
        out[b] = _nanmean(vals, axis=1)
    out["macro"] = _nanmean(np.stack([out[b] for b in benchmarks]), axis=0) if benchmarks else np.full(n_boot, np.nan)
    return out


ACCURACY_COLUMNS = [
    "model",
    "benchmark",
    "algorithm",
    "n_seeds",
    "seeds",
    "mean",
    "ci_low",
    "ci_high",
    "start",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "resampling",
]

# one run's final evaluation: benchmark -> per-prompt accuracies (np.ndarray) or the logged accuracy (float)
SeedUnit = dict[str, Any]


def accuracy_table(
    data: ExperimentData, baseline: str = "grpo", n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """Final accuracy per model x benchmark (and ``macro``) x algorithm: mean over seeds, bootstrap CI, delta vs
    ``baseline`` (columns: ``ACCURACY_COLUMNS``)."""
    runs = data.finished
    if runs.empty or data.metrics.empty:
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    per_prompt = _per_prompt_accuracies(data)
    rng = np.random.default_rng(seed)
    rows = []
    for model, model_runs in runs.groupby("model", sort=True):
        units_by_algo, starts = _final_eval_units(data, model_runs, per_prompt)
        rows += _model_accuracy_rows(model, units_by_algo, starts, baseline, n_boot, rng, alpha)
        if baseline not in units_by_algo and units_by_algo:
            data.issue("accuracy", f"Model {model}: no finished `{baseline}` run, so no deltas vs {baseline}.")
        for algo, units in units_by_algo.items():
            if len(units) == 1:
                data.issue(
                    "accuracy",
                    f"Model {model}, {algo}: a single finished seed; its CI covers prompt sampling only.",
                    severity="note",
                )
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def _per_prompt_accuracies(data: ExperimentData) -> dict[tuple[str, str], np.ndarray]:
    """(run id, benchmark) -> each prompt's mean reward over its samples, from the per-sample eval records."""
    per_prompt = {}
    if not data.samples.empty:
        g = data.samples.groupby(["run_id", "benchmark", "id"], sort=False)["reward"].mean()
        for (rid, b), s in g.groupby(level=[0, 1], sort=False):
            per_prompt[(rid, b)] = s.to_numpy(dtype=float)
    return per_prompt


def _final_eval_units(
    data: ExperimentData, model_runs: pd.DataFrame, per_prompt: dict[tuple[str, str], np.ndarray]
) -> tuple[dict[str, list[tuple[Any, SeedUnit]]], dict[str, list[float]]]:
    """algorithm -> [(seed, unit)] over the runs that evaluated (a unit per run: its final evaluation, per-prompt
    where the per-sample records exist), and benchmark -> the accuracies logged before training (step 0)."""
    units_by_algo: dict[str, list[tuple[Any, SeedUnit]]] = {}
    starts: dict[str, list[float]] = {}
    for _, r in model_runs.iterrows():
        final = data.final_steps.get(r.run_id)
        if final is None:
            continue
        unit: SeedUnit = {}
        for k in data.keys(r.run_id):
            m = re.fullmatch(r"eval/([^/]+)/accuracy", k)
            if not m:
                continue
            b = m[1]
            h = data.history(r.run_id, k)
            if final in h.index and np.isfinite(h[final]):
                logged = float(h[final])
                pp = per_prompt.get((r.run_id, b))
                if pp is not None:
                    if abs(pp.mean() - logged) > 1e-6:
                        data.issue(
                            "accuracy",
                            f"Run `{r.run_id}` {b}: per-sample records give {100 * pp.mean():.2f}% but the logged "
                            f"accuracy is {100 * logged:.2f}%; the per-sample records are used.",
                            r.run_id,
                        )
                    unit[b] = pp
                else:
                    unit[b] = logged
            if 0 in h.index and np.isfinite(h[0]):  # the evaluation before training
                starts.setdefault(b, []).append(float(h[0]))
        units_by_algo.setdefault(r.algorithm, []).append((r.seed, unit))
    return units_by_algo, starts


def _model_accuracy_rows(
    model: str,
    units_by_algo: dict[str, list[tuple[Any, SeedUnit]]],
    starts: dict[str, list[float]],
    baseline: str,
    n_boot: int,
    rng: np.random.Generator,
    alpha: float,
) -> list[dict[str, Any]]:
    """One model's rows of the accuracy table: per algorithm, each benchmark and the macro average."""
    benches = sorted({b for seed_units in units_by_algo.values() for _, unit in seed_units for b in unit})
    boots: dict[str, dict[str, np.ndarray]] = {}
    points: dict[str, dict[str, float]] = {}
    for algo in algorithm_order(units_by_algo):  # every bootstrap first, in this order: they share ``rng``
        units = [u for _, u in units_by_algo[algo]]
        boots[algo] = hierarchical_bootstrap(units, benches, n_boot, rng)
        means = {b: _nanmean([np.mean(u[b]) if b in u else np.nan for u in units]) for b in benches}
        means["macro"] = _nanmean([_nanmean([np.mean(u[b]) for b in benches if b in u]) for u in units])
        points[algo] = means
    start_macro = _nanmean([_nanmean(v) for v in starts.values()]) if starts else np.nan
    q = [alpha / 2, 1 - alpha / 2]
    rows = []
    for algo in algorithm_order(units_by_algo):
        units = [u for _, u in units_by_algo[algo]]
        seeds = [s for s, _ in units_by_algo[algo]]
        for b in [*benches, "macro"]:
            has = [u for u in units if (b in u if b != "macro" else bool(u))]
            if not has:
                continue
            arr = boots[algo][b]
            lo, hi = np.nanquantile(arr, q) if np.isfinite(arr).any() else (np.nan, np.nan)
            row = {
                "model": model,
                "benchmark": b,
                "algorithm": algo,
                "n_seeds": len(has),
                "seeds": _fmt_seeds(seeds),
                "mean": points[algo][b],
                "ci_low": float(lo),
                "ci_high": float(hi),
                "start": _nanmean(starts.get(b, [np.nan])) if b != "macro" else start_macro,
                "resampling": _resampling(has, b),
            }
            if baseline in boots and algo != baseline:
                d = arr - boots[baseline][b]
                row["delta"] = points[algo][b] - points[baseline][b]
                dl, dh = np.nanquantile(d, q) if np.isfinite(d).any() else (np.nan, np.nan)
                row["delta_ci_low"], row["delta_ci_high"] = float(dl), float(dh)
            rows.append(row)
    return rows


def _resampling(units: list[SeedUnit], bench: str) -> str:
    """What the CI of ``bench`` (or ``"macro"``) over these seeds' units resamples."""
    if bench != "macro":
        sampled = [isinstance(u.get(bench), np.ndarray) for u in units]
    else:
        sampled = [any(isinstance(v, np.ndarray) for v in u.values()) for u in units]
    if len(units) == 1:
        return "prompts (1 seed)" if all(sampled) else "none (1 seed, no per-sample records)"
    if all(sampled):
        return "seeds x prompts"
    return "seeds x prompts (some seeds: seeds only)" if any(sampled) else "seeds only"


# ------------------------------------------------------------------------------------------------
# 2. compute overhead


def compute_overhead(data: ExperimentData, facts: pd.DataFrame, baseline: str = "grpo") -> pd.DataFrame:
    """Per model x algorithm x unit: cost per step, overhead vs baseline, total, accuracy gain and cost per accuracy
    point."""
    rows = []
    if facts.empty:
        return pd.DataFrame(
            columns=[
                "model",
                "algorithm",
                "unit",
                "n_runs",
                "per_step",
                "overhead",
                "total",
                "gain_points",
                "per_point",
            ]
        )
    for model, f in facts.groupby("model"):
        base = f[f["algorithm"] == baseline]
        for unit, (_, _, label) in UNITS.items():
            if f[f"{unit}_per_step"].isna().all():
                continue
            base_ps = base[f"{unit}_per_step"].mean() if not base.empty else np.nan
            for algo in algorithm_order(f["algorithm"]):
                a = f[f["algorithm"] == algo]
                ps = a[f"{unit}_per_step"].mean()
                total = a[f"{unit}_total"].mean()
                gain = 100 * (a["acc_final"] - a["acc_start"]).mean()
                rows.append(
                    {
                        "model": model,
                        "algorithm": algo,
                        "unit": label,
                        "n_runs": int(a[f"{unit}_per_step"].notna().sum()),
                        "per_step": ps,
                        "overhead": ps / base_ps - 1
                        if np.isfinite(base_ps) and base_ps > 0 and algo != baseline
                        else np.nan,
                        "total": total,
                        "gain_points": gain,
                        "per_point": total / gain if np.isfinite(gain) and gain > 0 else np.nan,
                    }
                )
        missing = [UNITS[u][2] for u in UNITS if f[f"{u}_per_step"].isna().all()]
        if missing:
            data.issue(
                "compute",
                f"Model {model}: no run recorded {', '.join(missing)}; those units are left out.",
                severity="note",
            )
        partial = f[f[[f"{u}_per_step" for u in UNITS if not f[f"{u}_per_step"].isna().all()]].isna().any(axis=1)]
        for _, r in partial.iterrows():
            data.issue(
                "compute",
                f"Run `{r.run_id}` ({r.algorithm}, seed {r.seed}) lacks some cost metrics other runs have.",
                r.run_id,
            )
    return pd.DataFrame(rows)


def phase_breakdown(data: ExperimentData) -> pd.DataFrame:
    """Mean per-step cost of each phase (time and FLOPs) per model x algorithm; ``other`` = step time not in a phase."""
    rows = []
    for _, r in data.finished.iterrows():
        total_t = data.history(r.run_id, "time/step_s")
        phases_t = {p: data.history(r.run_id, f"time/{p}") for p in TIME_PHASES}
        if not total_t.empty or any(not h.empty for h in phases_t.values()):
            known = 0.0
            for p, h in phases_t.items():
                if not h.empty:
                    rows.append(
                        {
                            "run_id": r.run_id,
                            "model": r.model,
                            "algorithm": r.algorithm,
                            "kind": "wall seconds",
                            "phase": p.removesuffix("_s"),
                            "value": float(h.mean()),
                        }
                    )
                    known += float(h.mean())
            if not total_t.empty:
                rows.append(
                    {
                        "run_id": r.run_id,
                        "model": r.model,
                        "algorithm": r.algorithm,
                        "kind": "wall seconds",
                        "phase": "other",
                        "value": max(float(total_t.mean()) - known, 0.0),
                    }
                )
        for p in FLOP_PHASES:
            h = data.history(r.run_id, f"flops/{p}")
            if not h.empty:
                rows.append(
                    {
                        "run_id": r.run_id,
                        "model": r.model,
                        "algorithm": r.algorithm,
                        "kind": "FLOPs",
                        "phase": p,
                        "value": float(h.mean()),
                    }
                )
    if not rows:
        return pd.DataFrame(columns=["model", "algorithm", "kind", "phase", "per_step"])
    df = pd.DataFrame(rows)
    out = (
        df.groupby(["model", "algorithm", "kind", "phase"], sort=False)["value"].mean().rename("per_step").reset_index()
    )
    out["share"] = out["per_step"] / out.groupby(["model", "algorithm", "kind"])["per_step"].transform("sum")
    return out


# ------------------------------------------------------------------------------------------------
# 3. effective optimization steps


def effective_summary(facts: pd.DataFrame, baseline: str = "grpo") -> pd.DataFrame:
    cols = [
        "model",
        "algorithm",
        "n_runs",
        "steps",
        "effective_total",
        "effective_per_step",
        "zero_std_frac",
        "gain_total",
        "gain_per_step",
    ]
    if facts.empty or facts["effective_total"].isna().all():
        return pd.DataFrame(columns=cols)
    rows = []
    for model, f in facts.groupby("model"):
        base = f[f["algorithm"] == baseline]
        b_tot, b_ps = base["effective_total"].mean(), base["effective_per_step"].mean()
        for algo in algorithm_order(f["algorithm"]):
            a = f[f["algorithm"] == algo]
            tot, ps = a["effective_total"].mean(), a["effective_per_step"].mean()
            rows.append(
                {
                    "model": model,
                    "algorithm": algo,
                    "n_runs": int(a["effective_total"].notna().sum()),
                    "steps": a["steps"].mean(),
                    "effective_total": tot,
                    "effective_per_step": ps,
                    "zero_std_frac": a["zero_std_frac"].mean(),
                    "gain_total": tot / b_tot - 1 if algo != baseline and b_tot > 0 else np.nan,
                    "gain_per_step": ps / b_ps - 1 if algo != baseline and b_ps > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=cols)


def effective_curves(data: ExperimentData) -> pd.DataFrame:
    rows = []
    for _, r in data.finished.iterrows():
        eff = data.history(r.run_id, "effective/steps_total")
        if eff.empty:
            e1 = data.history(r.run_id, "effective/step")
            eff = e1.sort_index().cumsum() if not e1.empty else eff
        z = data.history(r.run_id, "groups/zero_std_frac")
        bf = data.history(r.run_id, "budget/fraction")
        steps = sorted(set(eff.index) | set(z.index))
        for s in steps:
            rows.append(
                {
                    "run_id": r.run_id,
                    "model": r.model,
                    "algorithm": r.algorithm,
                    "seed": r.seed,
                    "step": int(s),
                    "effective_steps_total": eff.get(s, np.nan),
                    "zero_std_frac": z.get(s, np.nan),
                    "budget_fraction": bf.get(s, np.nan),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "run_id",
            "model",
            "algorithm",
            "seed",
            "step",
            "effective_steps_total",
            "zero_std_frac",
            "budget_fraction",
        ],
    )


# ------------------------------------------------------------------------------------------------
# 4. accuracy vs compute


def choose_unit(data: ExperimentData, requested: str | None = None) -> str:
    """The x-axis unit: the requested one, else the runs' budget unit, else the first of FLOPs, wall seconds and
    generated tokens that every run recorded, else steps."""
    if requested:
        u = unit_for_budget(requested) or requested
        if u in UNITS or u == "steps":
            return u
        data.issue("compute", f"Unknown compute unit '{requested}'; choosing one from the data.", severity="note")
    runs = data.finished
    if not runs.empty:
        tagged = {unit_for_budget(u) for u in runs["budget_unit"] if u}
        tagged.discard(None)
        if len(tagged) == 1:
            return tagged.pop()
        if len(tagged) > 1:
            data.issue(
                "general",
                f"The runs use different budget units ({', '.join(sorted(map(str, tagged)))}): they are not matched on "
                "compute.",
            )
    for unit in ("flops", "wall_seconds", "generated_tokens"):
        if not runs.empty and all(not cumulative(data, rid, unit).empty for rid in runs["run_id"]):
            return unit
    return "steps"


def unit_label(unit: str) -> str:
    return "optimizer steps" if unit == "steps" else UNITS[unit][2]


def accuracy_vs_compute(data: ExperimentData) -> pd.DataFrame:
    """One row per (run, evaluation): macro accuracy, budget fraction and the cumulative cost in every unit recorded."""
    rows = []
    for _, r in data.finished.iterrows():
        macro = data.history(r.run_id, "eval/macro_accuracy")
        if macro.empty:
            continue
        bf_eval = data.history(r.run_id, "eval/budget_fraction")
        bf_step = data.history(r.run_id, "budget/fraction")
        steps = training_steps(data, r.run_id)
        last = max(steps) if steps else None
        cums = {u: cumulative(data, r.run_id, u) for u in list(UNITS) + ["steps"]}
        for step, acc in macro.items():
            row = {
                "run_id": r.run_id,
                "model": r.model,
                "algorithm": r.algorithm,
                "seed": r.seed,
                "step": int(step),
                "macro_accuracy": float(acc),
            }
            if step in bf_eval.index:
                row["budget_fraction"] = float(bf_eval[step])
            elif step in bf_step.index:
                row["budget_fraction"] = float(bf_step[step])
            elif step == 0:
                row["budget_fraction"] = 0.0
            else:
                row["budget_fraction"] = step / last if last else np.nan
            for u, c in cums.items():
                if c.empty:
                    row[u] = np.nan
                elif step in c.index:
                    row[u] = float(c[step])
                elif step < c.index.min():
                    row[u] = 0.0
                else:
                    row[u] = float(c[c.index <= step].iloc[-1])
            rows.append(row)
    return pd.DataFrame(rows)


def matched_compute(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean macro accuracy per model x algorithm at each budget fraction.

    An evaluation fires at the first step past its fraction, so runs land on e.g. 0.50, 0.51 and 0.52
    for the same planned point. When every run of a model evaluated equally often (one schedule, as in
    a matrix), the i-th evaluations are one point, labelled with the smallest fraction any run reached
    there; otherwise fractions are rounded to 0.01.
    """
    if curves.empty or "budget_fraction" not in curves:
        return pd.DataFrame()
    c = curves.dropna(subset=["budget_fraction"]).sort_values(["run_id", "step"]).copy()
    c["fraction"] = c["budget_fraction"].round(2)
    for _, m in c.groupby("model"):
        if m.groupby("run_id").size().nunique() == 1:
            index = m.groupby("run_id").cumcount()
            c.loc[m.index, "fraction"] = m["budget_fraction"].groupby(index).transform("min").round(2)
    out = c.groupby(["model", "fraction", "algorithm"])["macro_accuracy"].agg(["mean", "count"]).reset_index()
    return out


def mean_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Seed-mean accuracy-vs-compute curve per model x algorithm: the i-th evaluations of runs that share a
    schedule are one point (else budget fractions to one decimal), accuracy and every cost column averaged."""
    if curves.empty:
        return pd.DataFrame()
    cost_cols = [c for c in list(UNITS) + ["steps"] if c in curves]
    out = []
    for (model, algo), a in curves.sort_values(["run_id", "step"]).groupby(["model", "algorithm"], sort=False):
        counts = a.groupby("run_id").size()
        if counts.nunique() == 1 or "budget_fraction" not in a or a["budget_fraction"].isna().any():
            key = a.groupby("run_id").cumcount()
        else:
            key = a["budget_fraction"].round(1)
        m = a.groupby(key)[["macro_accuracy", *cost_cols]].mean().sort_index().reset_index(drop=True)
        m.insert(0, "algorithm", algo)
        m.insert(0, "model", model)
        m["n_runs"] = a["run_id"].nunique()
        out.append(m)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _first_crossing(acc: np.ndarray, cost: np.ndarray, target: float) -> float:
    """Cost at which a curve first reaches ``target`` (linear between evaluations; NaN if never)."""
    for i in range(len(acc)):
        if acc[i] >= target - 1e-12:
            if i == 0 or not np.isfinite(cost[i - 1]) or acc[i] == acc[i - 1]:
                return float(cost[i])
            w = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
            return float(cost[i - 1] + w * (cost[i] - cost[i - 1]))
    return float("nan")


def cost_to_target(curves: pd.DataFrame, baseline: str = "grpo", target: float | None = None) -> pd.DataFrame:
    """Cost for each algorithm's seed-mean curve to first reach a target macro accuracy, in every unit, and its
    ratio to the baseline's.

    Default target per model: the best accuracy that every compared algorithm's mean curve reaches (the lowest of
    their peaks), so each one has a cost; a user ``target`` (a fraction, e.g. 0.4) may leave some n/a (never reached).
    """
    m = mean_curves(curves)
    if m.empty:
        return pd.DataFrame()
    units = [u for u in list(UNITS) + ["steps"] if u in m]
    rows = []
    for model, mm in m.groupby("model", sort=False):
        peaks = mm.groupby("algorithm")["macro_accuracy"].max()
        tgt = float(target) if target is not None else float(peaks.min())
        costs = {}
        for algo, a in mm.groupby("algorithm", sort=False):
            for u in units:
                costs[(algo, u)] = _first_crossing(a["macro_accuracy"].to_numpy(float), a[u].to_numpy(float), tgt)
        for algo in algorithm_order(mm["algorithm"]):
            for u in units:
                c, b = costs[(algo, u)], costs.get((baseline, u), float("nan"))
                rows.append(
                    {
                        "model": model,
                        "algorithm": algo,
                        "unit": u,
                        "target": tgt,
                        "cost": c,
                        "vs_baseline": (c / b - 1)
                        if algo != baseline and np.isfinite(c) and np.isfinite(b) and b > 0
                        else np.nan,
                        "reached": bool(np.isfinite(c)),
                        "n_runs": int(mm[mm["algorithm"] == algo]["n_runs"].iloc[0]),
                    }
                )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# 5. ablation


def strategy_of(data: ExperimentData, run_id: str, algorithm: str) -> str:
    p = data.params.loc[run_id] if run_id in data.params.index else pd.Series(dtype=object)
    s = p.get("algorithm.strategy") if "algorithm.strategy" in p.index else None
    if isinstance(s, str) and s and s != "nan":
        return s
    return algorithm.split(":", 1)[1] if ":" in algorithm else "-"


def _ratio_minus_one(value: float, base: float) -> float:
    """value / base - 1, NaN (not a warning or inf) when the baseline is 0 or missing."""
    return float(value) / float(base) - 1 if base and np.isfinite(base) else np.nan


def ablation_table(
    data: ExperimentData, facts: pd.DataFrame, acc: pd.DataFrame, baseline: str = "grpo"
) -> pd.DataFrame:
    if facts.empty:
        return pd.DataFrame()
    rows = []
    for model, f in facts.groupby("model"):
        base = f[f["algorithm"] == baseline]
        for algo in algorithm_order(f["algorithm"]):
            a = f[f["algorithm"] == algo]
            mac = (
                acc[(acc["model"] == model) & (acc["algorithm"] == algo) & (acc["benchmark"] == "macro")]
                if not acc.empty
                else pd.DataFrame()
            )
            m = mac.iloc[0] if not mac.empty else None
            rows.append(
                {
                    "model": model,
                    "algorithm": algo,
                    "strategy": strategy_of(data, a["run_id"].iloc[0], algo) if algo != baseline else "(no replay)",
                    "n_runs": len(a),
                    "accuracy": m["mean"] if m is not None else np.nan,
                    "ci_low": m["ci_low"] if m is not None else np.nan,
                    "ci_high": m["ci_high"] if m is not None else np.nan,
                    "delta": m["delta"] if m is not None and "delta" in m else np.nan,
                    "effective_per_step": a["effective_per_step"].mean(),
                    "effective_gain": _ratio_minus_one(
                        a["effective_per_step"].mean(), base["effective_per_step"].mean()
                    )
                    if algo != baseline and not base.empty
                    else np.nan,
                    "wall_s_per_step": a["wall_seconds_per_step"].mean(),
                    "wall_overhead": _ratio_minus_one(
                        a["wall_seconds_per_step"].mean(), base["wall_seconds_per_step"].mean()
                    )
                    if algo != baseline and not base.empty
                    else np.nan,
                    "hit_rate": a["hit_rate"].mean(),
                    "staleness": a["staleness_mean"].mean(),
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# 6. provenance


def provenance_runs(data: ExperimentData) -> pd.DataFrame:
    if data.runs.empty:
        return pd.DataFrame()
    r = data.runs.copy()
    r["duration_s"] = (r["end_time"] - r["start_time"]).dt.total_seconds()
    r["steps"] = [data.summaries.get(rid, {}).get("steps", len(training_steps(data, rid))) for rid in r["run_id"]]
    r["final_eval_step"] = [data.final_steps.get(rid) for rid in r["run_id"]]
    r["used"] = r["include"]
    r["start_time"] = r["start_time"].dt.strftime("%Y-%m-%d %H:%M:%S")
    r["budget"] = [f"{u}:{v}" if u else "" for u, v in zip(r["budget_unit"], r["budget_value"])]
    return r[
        [
            "run_id",
            "run_name",
            "status",
            "used",
            "algorithm",
            "model",
            "seed",
            "engine",
            "torch",
            "num_processes",
            "budget",
            "steps",
            "final_eval_step",
            "start_time",
            "duration_s",
        ]
    ]


def environment(data: ExperimentData) -> pd.DataFrame:
    """Environment tags (versions, hardware, engine) and determinism settings: one row per key, values across runs."""
    rows = []
    if data.tags.empty and data.params.empty:
        return pd.DataFrame(columns=["kind", "key", "values"])

    def add(kind, frame, pattern, skip=()):
        if frame.empty:
            return
        for key in sorted(frame.columns):
            if not pattern.search(key) or key in skip or key.startswith("mlflow.") and "git" not in key:
                continue
            vals = frame[key].dropna().astype(str)
            uniq = sorted(set(vals))
            rows.append(
                {
                    "kind": kind,
                    "key": key,
                    "values": uniq[0] if len(uniq) == 1 else " | ".join(uniq),
                    "n_distinct": len(uniq),
                    "runs_without": int(len(frame) - len(vals)),
                }
            )

    add("environment", data.tags, ENV_TAG, skip=("harness.role",))
    add("determinism", data.params, DETERMINISM)
    add("determinism", data.tags, DETERMINISM)
    return pd.DataFrame(rows)


def config_diff(data: ExperimentData) -> pd.DataFrame:
    """Params that differ between member runs: key, category and the value per run (columns = run names)."""
    p = data.params
    if p.empty or len(p) < 2:
        return pd.DataFrame()
    p = p.reindex(data.runs["run_id"])
    diff = [c for c in p.columns if p[c].astype(str).nunique(dropna=False) > 1]
    if not diff:
        return pd.DataFrame()
    names = dict(zip(data.runs["run_id"], data.runs["run_name"]))
    out = p[diff].T
    out.columns = [names.get(c, c) for c in out.columns]
    cat = [
        "per-run (expected)"
        if PER_RUN_PARAM.search(k)
        else "algorithm"
        if k.startswith("algorithm.")
        else "other (check)"
        for k in diff
    ]
    out.insert(0, "category", cat)
    out.index.name = "param"
    order = {"other (check)": 0, "algorithm": 1, "per-run (expected)": 2}
    out = out.reset_index()
    out["_o"] = out["category"].map(order)
    return out.sort_values(["_o", "param"]).drop(columns="_o").reset_index(drop=True).fillna("(unset)")


def mlflow_link(tracking_uri: str, experiment_id: str | None, run_id: str) -> str | None:
    """A link to the run in the MLflow UI (servers only); never with the URI's credentials."""
    if tracking_uri.startswith(("http://", "https://")) and experiment_id:
        return f"{without_credentials(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def paper_accuracy_gain(model: str) -> float | None:
    m = model.lower()
    for k, v in PAPER_ACCURACY_GAIN.items():
        if k in m and not (k == "qwen3-1.7b" and "nothink" in m):
            return v
    return None
