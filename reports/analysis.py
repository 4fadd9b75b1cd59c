"""The numbers behind the report: pandas tables computed from ``ExperimentData``.

Every function returns plain DataFrames (written as CSV next to the report) and records anything it
had to leave out in ``data.issues``. Only runs with ``include`` (finished, not duplicated) are used.
"""

from __future__ import annotations

import math
import re
import warnings
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from harness.secrets import without_credentials
from reports.data import DETERMINISM, ENV_TAG, ExperimentData, algorithm_order, base_algorithm, is_control

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
# run_facts column -> the per-step prompt-group count it averages (harness/trainer.py collect_groups and
# algorithms/grpo.py effective_step_metrics log them; runs logged before them have none: NaN, shown as "—")
GROUP_METRICS = {
    "groups_generated": "groups/generated",
    "groups_kept": "groups/kept",
    "groups_dropped": "groups/dropped",
    "extra_rounds": "rollout/extra_rounds",
    "on_policy_signal": "groups/on_policy_nonzero_var",
    "replay_signal": "groups/replay_nonzero_var",
    "zv_replaced": "zv/replaced",
}


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
            "base_algorithm": r.get("base_algorithm", base_algorithm(r.algorithm)),
            "reward": r.get("reward", "verifier"),
            "control": bool(r.get("control", is_control(r.algorithm))),
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
        row.update(group_facts(data, rid))
        for k in ("replay/hit_rate", "replay/staleness_mean"):
            h = data.history(rid, k)
            row[k.split("/")[1]] = float(h.mean()) if not h.empty else np.nan
        rows.append(row)
    cols = ["run_id", "algorithm", "model", "seed", "steps"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)


def group_facts(data: ExperimentData, run_id: str) -> dict[str, float]:
    """A run's prompt-group counts, mean per step (``GROUP_METRICS``), and the split of the groups it trained on:
    ``rescued`` (no on-policy signal, gradient from replayed or substituted rows: effective/step x trained - on-policy
    groups with signal) and ``no_signal`` (trained without gradient: trained x (1 - effective/step)); NaN where the
    run did not log what they need."""
    out = {}
    for col, key in GROUP_METRICS.items():
        h = data.history(run_id, key)
        out[col] = float(h.mean()) if not h.empty else np.nan
    steps = pd.concat(
        {
            "kept": data.history(run_id, "groups/kept"),
            "eff": data.history(run_id, "effective/step"),
            "on": data.history(run_id, "groups/on_policy_nonzero_var"),
        },
        axis=1,
    ).dropna()
    effective = steps["eff"] * steps["kept"]
    out["rescued"] = float((effective - steps["on"]).clip(lower=0).mean()) if not steps.empty else np.nan
    out["no_signal"] = float((steps["kept"] - effective).clip(lower=0).mean()) if not steps.empty else np.nan
    return out


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
    their peaks), so each one has a cost; reward controls do not set it (unless there is nothing else). A user
    ``target`` (a fraction, e.g. 0.4) may leave some n/a (never reached).
    """
    m = mean_curves(curves)
    if m.empty:
        return pd.DataFrame()
    units = [u for u in list(UNITS) + ["steps"] if u in m]
    rows = []
    for model, mm in m.groupby("model", sort=False):
        peaks = mm.groupby("algorithm")["macro_accuracy"].max()
        real = peaks[[not is_control(a) for a in peaks.index]]
        tgt = float(target) if target is not None else float((real if not real.empty else peaks).min())
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
    """A run's replay strategy: the ``algorithm.strategy`` param, else the ``repo:STRATEGY`` suffix, else "-"."""
    p = data.params.loc[run_id] if run_id in data.params.index else pd.Series(dtype=object)
    s = p.get("algorithm.strategy") if "algorithm.strategy" in p.index else None
    if isinstance(s, str) and s and s != "nan":
        return s
    algorithm = base_algorithm(algorithm)
    return algorithm.split(":", 1)[1] if ":" in algorithm else "-"


def _ratio_minus_one(value: float, base: float) -> float:
    """value / base - 1, NaN (not a warning or inf) when the baseline is 0 or missing."""
    return float(value) / float(base) - 1 if base and np.isfinite(base) else np.nan


# power: two-sided alpha and power of the seeds-needed estimate
POWER_ALPHA = 0.05
POWER = 0.8


def seeds_needed(delta: float, sd: float, alpha: float = POWER_ALPHA, power: float = POWER) -> float:
    """Seeds per arm for a two-sided test at ``alpha`` to detect a difference of means ``delta`` with ``power``, when
    one seed's value has standard deviation ``sd`` in both arms (two-sample normal approximation):
    n = 2 (z_{1-alpha/2} + z_{power})^2 sd^2 / delta^2, not rounded; inf when ``delta`` is 0, NaN when not finite."""
    if not (np.isfinite(delta) and np.isfinite(sd)):
        return float("nan")
    if delta == 0:
        return float("inf")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return 2 * z**2 * sd**2 / delta**2


def pooled_sd(a, b) -> float:
    """The pooled standard deviation of two samples (each with ``ddof=1``); NaN when either has fewer than 2 values."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)))


def _finite(values) -> np.ndarray:
    """The finite entries of ``values`` as a float array."""
    v = np.asarray(list(values), dtype=float)
    return v[np.isfinite(v)]


def power_estimate(values, base_values) -> tuple[float, str]:
    """Seeds per algorithm needed to resolve the observed difference between two arms' per-seed values
    (:func:`seeds_needed` with their pooled SD), rounded up and at least 2, with "" — or NaN and why not."""
    a, b = _finite(values), _finite(base_values)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), "fewer than 2 seeds"
    delta = float(a.mean() - b.mean())
    if abs(delta) < 1e-12:
        return float("nan"), "Δ = 0"
    sd = pooled_sd(a, b)
    if sd == 0:
        return float("nan"), "no seed-to-seed variance"
    return float(max(2, math.ceil(seeds_needed(delta, sd) - 1e-9))), ""


# the ablation's prompt-group columns (means per step): GROUP_METRICS' and the split of the trained groups
GROUP_COLUMNS = [*GROUP_METRICS, "rescued", "no_signal", "zero_std_frac"]
ABLATION_COLUMNS = [
    "model",
    "algorithm",
    "base_algorithm",
    "control",
    "reward",
    "strategy",
    "n_runs",
    "accuracy",
    "ci_low",
    "ci_high",
    "delta",
    "acc_start",
    "gain",
    "acc_sd",
    "pooled_sd",
    "seeds_needed",
    "seeds_needed_note",
    "generated_tokens_per_step",
    "tokens_overhead",
    "flops_per_step",
    "flops_overhead",
    "wall_s_per_step",
    "wall_overhead",
    "target",
    "target_unit",
    "cost_to_target",
    "cost_to_target_vs_baseline",
    "effective_per_step",
    "effective_gain",
    "groups_generated",
    "groups_kept",
    "groups_dropped",
    "extra_rounds",
    "on_policy_signal",
    "replay_signal",
    "zv_replaced",
    "rescued",
    "no_signal",
    "zero_std_frac",
    "hit_rate",
    "staleness",
]


def ablation_table(
    data: ExperimentData,
    facts: pd.DataFrame,
    acc: pd.DataFrame,
    baseline: str = "grpo",
    to_target: pd.DataFrame | None = None,
    unit: str | None = None,
) -> pd.DataFrame:
    """Every algorithm (and reward control) side by side, one row per model x algorithm label (``ABLATION_COLUMNS``):
    final macro accuracy with its CI and Δ vs ``baseline`` (from ``acc``), gain over the starting model, the seeds
    needed to resolve Δ, cost per step, cost to the target accuracy (``to_target`` in ``unit``) and the prompt groups
    with and without signal per step (means over steps, then over seeds)."""
    if facts.empty:
        return pd.DataFrame(columns=ABLATION_COLUMNS)
    targets = _target_costs(to_target, unit)
    rows = []
    for model, f in facts.groupby("model"):
        _note_missing_groups(data, f, model)
        base = f[f["algorithm"] == baseline]
        macro = (
            acc[(acc["model"] == model) & (acc["benchmark"] == "macro")].set_index("algorithm")
            if not acc.empty
            else pd.DataFrame()
        )
        for algo in algorithm_order(f["algorithm"]):
            a = f[f["algorithm"] == algo]
            rows.append(
                {
                    "model": model,
                    "algorithm": algo,
                    **_ablation_identity(data, a, algo, baseline),
                    **_ablation_accuracy(macro, a, base, algo, baseline),
                    **_ablation_cost(a, base, algo, baseline),
                    **targets.get((model, algo), {}),
                    **{k: a[k].mean() for k in GROUP_COLUMNS if k in a},
                    "hit_rate": a["hit_rate"].mean(),
                    "staleness": a["staleness_mean"].mean(),
                }
            )
    return pd.DataFrame(rows).reindex(columns=ABLATION_COLUMNS)


def _note_missing_groups(data: ExperimentData, f: pd.DataFrame, model: str) -> None:
    """A note for the algorithms of one model whose runs logged no prompt-group counts (runs from before the trainer
    logged them): their group columns show "—"."""
    cols = [c for c in GROUP_COLUMNS if c != "zero_std_frac" and c in f]
    if not cols:
        return
    without = f[f[cols].isna().all(axis=1)]
    if without.empty:
        return
    algos = ", ".join(f"`{a}`" for a in algorithm_order(without["algorithm"]))
    data.issue(
        "ablation",
        f"Model {model}: {algos} logged no prompt-group counts (`groups/kept`, `groups/on_policy_nonzero_var`, ...: "
        "runs from before the trainer logged them); their group columns show —.",
        severity="note",
    )


def _ablation_identity(data: ExperimentData, a: pd.DataFrame, algo: str, baseline: str) -> dict[str, Any]:
    """What an ablation row is: its algorithm without the control suffix, whether it is a reward control, the reward,
    the replay strategy ("(no replay)" for the baseline) and the number of runs."""
    return {
        "base_algorithm": base_algorithm(algo),
        "control": bool(a["control"].any()) if "control" in a else is_control(algo),
        "reward": a["reward"].iloc[0] if "reward" in a else "verifier",
        "strategy": "(no replay)" if algo == baseline else strategy_of(data, a["run_id"].iloc[0], algo),
        "n_runs": len(a),
    }


def _ablation_accuracy(
    macro: pd.DataFrame, a: pd.DataFrame, base: pd.DataFrame, algo: str, baseline: str
) -> dict[str, Any]:
    """An ablation row's accuracy cells: the accuracy table's macro mean, CI and Δ, the gain over the starting model,
    the per-seed SD and the seeds needed to resolve the difference to ``baseline`` (``power_estimate``)."""
    m = macro.loc[algo] if algo in macro.index else None
    out = {
        "accuracy": m["mean"] if m is not None else np.nan,
        "ci_low": m["ci_low"] if m is not None else np.nan,
        "ci_high": m["ci_high"] if m is not None else np.nan,
        "delta": m["delta"] if m is not None and "delta" in m else np.nan,
        "acc_start": a["acc_start"].mean(),
        "gain": (a["acc_final"] - a["acc_start"]).mean(),
        "acc_sd": float(np.std(_finite(a["acc_final"]), ddof=1)) if len(_finite(a["acc_final"])) > 1 else np.nan,
    }
    if algo == baseline:
        return {**out, "pooled_sd": np.nan, "seeds_needed": np.nan, "seeds_needed_note": "baseline"}
    if base.empty:
        return {**out, "pooled_sd": np.nan, "seeds_needed": np.nan, "seeds_needed_note": f"no {baseline} run"}
    n, why = power_estimate(a["acc_final"], base["acc_final"])
    return {
        **out,
        "pooled_sd": pooled_sd(a["acc_final"], base["acc_final"]),
        "seeds_needed": n,
        "seeds_needed_note": why,
    }


def _ablation_cost(a: pd.DataFrame, base: pd.DataFrame, algo: str, baseline: str) -> dict[str, Any]:
    """An ablation row's cost per step (generated tokens, FLOPs, wall seconds, effective steps) and each one's change
    vs ``baseline`` (NaN for the baseline itself or without one)."""
    out = {}
    for col, fact, vs_col in (
        ("generated_tokens_per_step", "generated_tokens_per_step", "tokens_overhead"),
        ("flops_per_step", "flops_per_step", "flops_overhead"),
        ("wall_s_per_step", "wall_seconds_per_step", "wall_overhead"),
        ("effective_per_step", "effective_per_step", "effective_gain"),
    ):
        out[col] = a[fact].mean()
        out[vs_col] = _ratio_minus_one(out[col], base[fact].mean()) if algo != baseline and not base.empty else np.nan
    return out


def _target_costs(to_target: pd.DataFrame | None, unit: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, algorithm) -> the cost-to-target cells of the ablation table, in ``unit`` when ``cost_to_target``
    has it, else in its first unit (FLOPs, wall seconds, tokens, steps: ``UNITS``' order)."""
    if to_target is None or to_target.empty:
        return {}
    have = list(dict.fromkeys(to_target["unit"]))
    u = unit if unit in have else next((x for x in [*UNITS, "steps"] if x in have), have[0])
    return {
        (r.model, r.algorithm): {
            "target": r.target,
            "target_unit": u,
            "cost_to_target": r.cost if r.reached else np.nan,
            "cost_to_target_vs_baseline": r.vs_baseline,
        }
        for r in to_target[to_target["unit"] == u].itertuples()
    }


def control_gains(abl: pd.DataFrame, baseline: str = "grpo") -> pd.DataFrame:
    """Each verifier-reward algorithm's gain over the starting model next to a reward control's, same model (the
    control of the same algorithm, else the baseline's, else the first): ``beyond_control`` = gain - control gain,
    ``share_beyond`` = that / gain (NaN unless the gain is positive). Empty when there is no control."""
    cols = ["model", "algorithm", "gain", "control", "control_gain", "beyond_control", "share_beyond"]
    if abl.empty or not abl["control"].astype(bool).any():
        return pd.DataFrame(columns=cols)
    rows = []
    for model, m in abl.groupby("model", sort=False):
        controls = m[m["control"].astype(bool)]
        for r in m[~m["control"].astype(bool)].itertuples():
            if controls.empty:
                continue
            same = controls[controls["base_algorithm"] == r.algorithm]
            of_base = controls[controls["base_algorithm"] == baseline]
            c = (same if not same.empty else of_base if not of_base.empty else controls).iloc[0]
            beyond = r.gain - c["gain"]
            rows.append(
                {
                    "model": model,
                    "algorithm": r.algorithm,
                    "gain": r.gain,
                    "control": c["algorithm"],
                    "control_gain": c["gain"],
                    "beyond_control": beyond,
                    "share_beyond": beyond / r.gain if np.isfinite(r.gain) and r.gain > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=cols)


def smallest_difference(abl: pd.DataFrame) -> pd.Series | None:
    """The ablation row (reward controls aside) with the smallest |Δ| vs the baseline whose seeds-needed estimate
    exists (None when there is none)."""
    if abl.empty:
        return None
    ok = abl[~abl["control"].astype(bool) & abl["seeds_needed"].notna() & abl["delta"].notna()]
    if ok.empty:
        return None
    return ok.loc[ok["delta"].abs().idxmin()]


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
