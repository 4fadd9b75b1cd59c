"""Section 5 of `harness report` for the algorithm family, on a synthetic MLflow store (reports/synthetic.py).

`build_family_store` logs grpo, repo:recent_k, dapo, zv_substitute and prioritized_replay (2 seeds, prompt-group
counts per step except prioritized_replay's, as a run from before they were logged) as one `harness run`, and a
random-reward grpo control (``reward.kind=random``, the same seeds) as a second one in the same experiment. Every
expected number below is recomputed from the store with the MLflow client.
"""

from __future__ import annotations

import html.parser
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CONTROL = "grpo [reward=random p=0.5]"
ALGOS = ["grpo", "dapo", "prioritized_replay", "repo:recent_k", "zv_substitute"]
# the ablation's group columns and the per-step metric each one averages (the producer's names)
GROUP_KEYS = {
    "groups_generated": "groups/generated",
    "groups_kept": "groups/kept",
    "groups_dropped": "groups/dropped",
    "extra_rounds": "rollout/extra_rounds",
    "on_policy_signal": "groups/on_policy_nonzero_var",
    "replay_signal": "groups/replay_nonzero_var",
    "zero_std_frac": "groups/zero_std_frac",
}
Z = 1.959964 + 0.841621  # z_0.975 + z_0.8, by hand


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    from reports.synthetic import build_family_store

    root = tmp_path_factory.mktemp("family-store")
    return build_family_store(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")


@pytest.fixture(scope="module")
def report(family, tmp_path_factory):
    from reports.cli import generate_report

    out = tmp_path_factory.mktemp("family-report") / "report"
    # the control is a second `harness run` in the experiment: --all-runs reports both
    return generate_report(
        family.tracking_uri, experiment="family", out_dir=out, all_runs=True, sweep_run_id=None, n_bootstrap=300
    )


@pytest.fixture(scope="module")
def abl(report) -> pd.DataFrame:
    return pd.read_csv(report / "tables" / "ablation.csv").set_index("algorithm")


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store.tracking_uri)


def _history(client, run_id: str, key: str) -> dict[int, float]:
    """step -> value of one metric of one run, straight from MLflow."""
    return {
        m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    }


def _runs(store, label: str) -> list[str]:
    return [rid for (a, _, _), rid in store.members.items() if a == label]


def _per_step_mean(client, store, label: str, key: str) -> float:
    """Mean over steps per run, then over the label's runs (NaN when no run logged ``key``)."""
    vals = [np.mean(list(h.values())) for h in (_history(client, r, key) for r in _runs(store, label)) if h]
    return float(np.mean(vals)) if vals else float("nan")


def _final_and_start(client, store, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Each run's last and step-0 ``eval/macro_accuracy``."""
    hs = [_history(client, r, "eval/macro_accuracy") for r in _runs(store, label)]
    return np.array([h[max(h)] for h in hs]), np.array([h[0] for h in hs])


class _Tables(html.parser.HTMLParser):
    """Every <table> of the HTML as its data-csv attribute and rows of cell text."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"csv": dict(attrs).get("data-csv", ""), "rows": []})
        elif tag == "tr" and self.tables:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1]["rows"].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _html_table(path: Path, csv: str) -> pd.DataFrame:
    """The report.html table whose data comes from ``csv``, as the reader sees it (header row = columns)."""
    p = _Tables()
    p.feed((path / "report.html").read_text())
    t = next(t for t in p.tables if t["csv"] == csv)
    return pd.DataFrame(t["rows"][1:], columns=t["rows"][0])


# ------------------------------------------------------------------------------------------------


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_one_row_per_algorithm_and_the_control_row_apart(family, report, abl):
    assert list(abl.index) == [*ALGOS, CONTROL]  # the baseline first, the control last
    assert (abl["n_runs"] == 2).all()  # the control's seeds equal grpo's: nothing merged or dropped as a duplicate
    assert abl.loc[CONTROL, "control"] and abl.loc[CONTROL, "reward"] == "random p=0.5"
    assert abl.loc[CONTROL, "base_algorithm"] == "grpo"
    assert not abl.loc[ALGOS, "control"].any() and set(abl.loc[ALGOS, "reward"]) == {"verifier"}
    assert abl.loc["repo:recent_k", "strategy"] == "recent_k"
    runs = pd.read_csv(report / "tables" / "runs.csv")
    assert len(runs) == 12 and runs["used"].all()
    assert set(runs[runs["algorithm"] == CONTROL]["run_id"]) == set(_runs(family, CONTROL))
    md = (report / "report.md").read_text()
    assert "duplicates a newer run" not in md
    t = _html_table(report, "tables/ablation.csv")
    assert list(t["algorithm"]) == [*ALGOS, CONTROL]
    assert t.set_index("algorithm").loc[CONTROL, "reward"] == "random p=0.5"


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_accuracy_cost_and_seeds_needed_match_mlflow(family, report, abl):
    client = _client(family)
    base_final, _ = _final_and_start(client, family, "grpo")
    for label in [*ALGOS, CONTROL]:
        final, start = _final_and_start(client, family, label)
        row = abl.loc[label]
        assert row["accuracy"] == pytest.approx(final.mean(), abs=1e-9)
        assert row["gain"] == pytest.approx((final - start).mean(), abs=1e-9)
        for col, key in (
            ("generated_tokens_per_step", "tokens/generated"),
            ("flops_per_step", "flops/total"),
            ("wall_s_per_step", "time/step_s"),
        ):
            assert row[col] == pytest.approx(_per_step_mean(client, family, label, key), rel=1e-9), (label, col)
        if label == "grpo":
            assert math.isnan(row["seeds_needed"]) and row["seeds_needed_note"] == "baseline"
            continue
        delta = final.mean() - base_final.mean()
        sd2 = (np.var(final, ddof=1) + np.var(base_final, ddof=1)) / 2  # pooled, 2 seeds each
        assert row["seeds_needed"] == max(2, math.ceil(2 * Z**2 * sd2 / delta**2)), label
    # DAPO pays for the groups it drops: more generated tokens per step than GRPO
    assert abl.loc["dapo", "generated_tokens_per_step"] > 1.3 * abl.loc["grpo", "generated_tokens_per_step"]
    t = _html_table(report, "tables/ablation.csv").set_index("algorithm")
    assert t.loc["grpo", "seeds needed"] == "—"
    assert t.loc["dapo", "seeds needed"] == f"{abl.loc['dapo', 'seeds_needed']:.0f}"
    assert t.loc["dapo", "macro acc (%)"].startswith(f"{100 * abl.loc['dapo', 'accuracy']:.1f} [")


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_group_columns_come_from_the_metrics(family, report, abl):
    client = _client(family)
    for label in ["grpo", "dapo", "repo:recent_k", "zv_substitute", CONTROL]:
        for col, key in GROUP_KEYS.items():
            assert abl.loc[label, col] == pytest.approx(_per_step_mean(client, family, label, key), abs=1e-9), (
                label,
                col,
            )
        # trained groups = on-policy with signal + rescued + without signal
        r = abl.loc[label]
        assert r["on_policy_signal"] + r["rescued"] + r["no_signal"] == pytest.approx(r["groups_kept"])
    dapo = abl.loc["dapo"]
    assert dapo["groups_dropped"] > 0 and dapo["extra_rounds"] > 0
    assert dapo["groups_generated"] == pytest.approx(dapo["groups_kept"] + dapo["groups_dropped"])
    assert abl.loc["grpo", "groups_dropped"] == 0 and abl.loc["grpo", "rescued"] == pytest.approx(0, abs=1e-12)
    # a zero-variance group substituted is a rescued one
    zv = _per_step_mean(client, family, "zv_substitute", "zv/replaced")
    assert zv > 0 and abl.loc["zv_substitute", "rescued"] == pytest.approx(zv, abs=1e-9)
    assert abl.loc["repo:recent_k", "rescued"] > 0
    t = _html_table(report, "tables/ablation_groups.csv").set_index("algorithm")
    assert t.loc["dapo", "dropped"] == f"{dapo['groups_dropped']:.2f}"
    assert t.loc["zv_substitute", "rescued by replay/substitution"] == f"{zv:.2f}"


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_missing_group_metrics_show_a_dash(report, abl):
    cols = ["groups_generated", "groups_kept", "groups_dropped", "on_policy_signal", "rescued", "no_signal"]
    assert abl.loc["prioritized_replay", cols].isna().all()
    t = _html_table(report, "tables/ablation_groups.csv").set_index("algorithm")
    per = t.loc["prioritized_replay"]
    assert (per[["generated", "trained", "dropped", "on-policy with signal", "trained without signal"]] == "—").all()
    assert per["zero-variance (%)"] != "—"  # logged by every run
    assert t.loc["grpo", "generated"] != "—"
    costs = _html_table(report, "tables/ablation.csv").set_index("algorithm")
    assert costs.loc["prioritized_replay", "FLOPs / step"] != "—"
    section = (report / "report.md").read_text().split("## Missing data and caveats", 1)[1].split("\n## ", 1)[0]
    assert "`prioritized_replay` logged no prompt-group counts" in section


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_cost_to_target_column_and_the_control_does_not_set_the_target(report, abl):
    ctt = pd.read_csv(report / "tables" / "cost_to_target.csv")
    assert set(abl["target_unit"]) == {"flops"}  # the runs' budget unit
    ctt = ctt[ctt["unit"] == "flops"].set_index("algorithm")
    for label, row in abl.iterrows():
        if ctt.loc[label, "reached"]:
            assert row["cost_to_target"] == pytest.approx(ctt.loc[label, "cost"])
        else:
            assert math.isnan(row["cost_to_target"])
    curves = pd.read_csv(report / "tables" / "accuracy_vs_compute.csv")
    control = curves[curves["algorithm"] == CONTROL].sort_values(["run_id", "step"])
    control_peak = control.groupby(control.groupby("run_id").cumcount())["macro_accuracy"].mean().max()
    assert abl["target"].iloc[0] > control_peak  # left to the control, the target would be its (lower) peak
    t = _html_table(report, "tables/ablation.csv").set_index("algorithm")
    assert t.loc[CONTROL, "FLOPs to target"] == "not reached"
    assert t.loc["grpo", "FLOPs to target"] != "not reached"


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_summary_gain_against_the_reward_control(family, report):
    client = _client(family)
    final, start = _final_and_start(client, family, CONTROL)
    control_gain = (final - start).mean()
    md = (report / "report.md").read_text()
    summary = md.split("## Summary vs the paper", 1)[1].split("\n## ", 1)[0]
    for label in ALGOS:
        final, start = _final_and_start(client, family, label)
        gain = (final - start).mean()
        assert (
            f"`{label}` {100 * gain:+.1f} pts over its starting accuracy vs the control `{CONTROL}`'s "
            f"{100 * control_gain:+.1f} pts: {100 * (gain - control_gain):+.1f} pts beyond the control"
        ) in summary, label
    assert f"| {CONTROL} |" in summary and "— (reward control)" in summary
    gains = pd.read_csv(report / "tables" / "reward_control.csv")
    assert list(gains["algorithm"]) == ALGOS and set(gains["control"]) == {CONTROL}


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_summary_seeds_for_the_smallest_difference(report, abl):
    real = abl[~abl["control"] & abl["seeds_needed"].notna()]
    smallest = real.loc[real["delta"].abs().idxmin()]
    md = (report / "report.md").read_text()
    summary = md.split("## Summary vs the paper", 1)[1].split("\n## ", 1)[0]
    assert (
        f"Resolving the smallest observed difference ({100 * smallest['delta']:+.1f} pts, `{smallest.name}` vs `grpo`"
        in summary
    )
    assert f"would need ~{smallest['seeds_needed']:.0f} seeds per algorithm" in summary


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_without_a_control_one_line_says_so(family, tmp_path):
    from reports.cli import generate_report

    out = generate_report(
        family.tracking_uri,
        experiment="family",
        out_dir=tmp_path / "no-control",
        parent_run_id=family.parent_run_id,
        sweep_run_id=None,
        n_bootstrap=100,
    )
    md = (out / "report.md").read_text()
    assert "**Reward control.** No reward-control run (`reward.kind=random` or `format_only`) among these runs" in md
    abl = pd.read_csv(out / "tables" / "ablation.csv")
    assert list(abl["algorithm"]) == ALGOS and not abl["control"].any()
    assert not (out / "tables" / "reward_control.csv").exists()


@pytest.mark.slow  # builds the synthetic family store (~6 s): out of the fast subset
def test_section_renders_in_markdown_and_html(report):
    md = (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    assert "## 5. Algorithm ablation" in md and '<h2 id="ablation">5. Algorithm ablation</h2>' in page
    assert '<a href="#ablation">' in page  # the contents link still lands on it
    png = report / "figures" / "ablation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](figures/ablation.png)" in md and 'data-file="figures/ablation.png"' in page
    for csv in ("tables/ablation.csv", "tables/ablation_groups.csv"):
        t = _html_table(report, csv)
        assert len(t) == 6 and CONTROL in set(t["algorithm"])
        cells = [str(c).lower() for c in t.to_numpy().ravel()]
        assert not any("nan" in c.split() or c in ("", "none", "inf") for c in cells), csv


def test_seeds_needed_by_hand():
    from reports.analysis import pooled_sd, power_estimate, seeds_needed

    # 2 x (1.959964 + 0.841621)^2 x 0.1^2 / 0.05^2 = 2 x 7.848879 x 4 = 62.791
    assert seeds_needed(0.05, 0.1) == pytest.approx(62.791, abs=1e-3)
    assert seeds_needed(-0.05, 0.1) == pytest.approx(62.791, abs=1e-3)
    assert seeds_needed(0.0, 0.1) == math.inf and math.isnan(seeds_needed(float("nan"), 0.1))
    # two seeds each, variances 0.02 and 0.02: pooled SD sqrt(0.02)
    assert pooled_sd([0.1, 0.3], [0.2, 0.4]) == pytest.approx(math.sqrt(0.02))
    # Δ = 0.1, pooled variance 0.005: 15.698 x 0.005 / 0.01 = 7.85 -> 8 seeds
    assert power_estimate([0.5, 0.6], [0.4, 0.5]) == (8.0, "")
    n, why = power_estimate([0.5], [0.4, 0.5])
    assert math.isnan(n) and why == "fewer than 2 seeds"
    n, why = power_estimate([0.5, 0.6], [0.6, 0.5])
    assert math.isnan(n) and why == "Δ = 0"
    assert power_estimate([0.1, 0.1001], [0.9, 0.9001]) == (2.0, "")  # a huge effect: still 2 seeds


def test_control_labels_and_order():
    from reports.data import algorithm_order, base_algorithm, control_label, is_control, reward_kind

    assert control_label("grpo", "random", 0.5) == CONTROL
    assert control_label("grpo", "verifier", 0.5) == "grpo"
    assert control_label("repo:recent_k", "format_only") == "repo:recent_k [reward=format_only]"
    assert is_control(CONTROL) and not is_control("repo:recent_k") and base_algorithm(CONTROL) == "grpo"
    assert reward_kind({"reward.kind": "random", "reward.random_p": "0.25"}, {}) == ("random", 0.25)
    assert reward_kind({}, {"reward": "format_only"}) == ("format_only", None)
    assert reward_kind({}, {}) == ("verifier", None)  # runs from before the reward section
    assert algorithm_order([CONTROL, "repo:recent_k", "grpo", "dapo"]) == ["grpo", "dapo", "repo:recent_k", CONTROL]
