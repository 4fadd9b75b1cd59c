"""`harness report` on a synthetic MLflow store (reports/synthetic.py): files, values vs MLflow, missing data, rendering.

The store follows the producer layout (experiment parent + members for grpo, repo:recent_k and
repo:highest_k x 2 seeds x 1 model, evaluations at budget fractions with per-sample JSONL, one FAILED
member, one member without per-sample artifacts, and a sweep parent with trials.csv/best_trial.json).
The HTML is opened in headless Chromium when it is installed (Debian package `chromium`).
"""

from __future__ import annotations

import argparse
import html.parser
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from reports.synthetic import build_synthetic_store

    root = tmp_path_factory.mktemp("mlflow-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    s = build_synthetic_store(uri, root / "artifacts", experiment="synthetic")
    # a second experiment in the same store: only a sweep (what `harness sweep` leaves)
    s.sweep_only = build_synthetic_store(uri, root / "artifacts2", experiment="sweep-only", algorithms=())
    # a third: a finished member that logged almost nothing and a KILLED one that logged nothing
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    eid = c.create_experiment("sparse", artifact_location=(root / "artifacts3").as_uri())
    parent = c.create_run(
        eid, run_name="sparse-matrix", tags={"harness.role": "experiment", "harness.experiment": "sparse"}
    )
    tags = {"mlflow.parentRunId": parent.info.run_id, "harness.role": "member", "model": "tiny"}
    r0 = c.create_run(
        eid,
        run_name="grpo-tiny-s42",
        tags={**tags, "algorithm": "grpo", "seed": "42"},
        start_time=int(time.time() * 1000) - 60_000,
    )
    c.set_terminated(r0.info.run_id, status="FAILED")  # crashed, then re-run (resume) as r1
    r1 = c.create_run(eid, run_name="grpo-tiny-s42", tags={**tags, "algorithm": "grpo", "seed": "42"})
    for step in range(1, 4):
        c.log_metric(r1.info.run_id, "reward/mean", 0.1 * step, step=step)
    c.set_terminated(r1.info.run_id)
    r2 = c.create_run(eid, run_name="repo-tiny-s42", tags={**tags, "algorithm": "repo:recent_k", "seed": "42"})
    c.set_terminated(r2.info.run_id, status="KILLED")
    # the parent planned a third member that never started
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "matrix.json").write_text(
            json.dumps({"members": ["grpo|tiny|42", "repo:recent_k|tiny|42", "repo:highest_k|tiny|42"]})
        )
        c.log_artifact(parent.info.run_id, str(Path(d) / "matrix.json"))
    s.sparse = (parent.info.run_id, r1.info.run_id, r2.info.run_id)
    s.superseded = r0.info.run_id
    return s


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    from reports.cli import generate_report

    out = tmp_path_factory.mktemp("report") / "synthetic-report"
    t0 = time.perf_counter()
    path = generate_report(store.tracking_uri, experiment="synthetic", out_dir=out)
    elapsed = time.perf_counter() - t0
    print(f"report generated in {elapsed:.1f} s")
    return path, elapsed


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store.tracking_uri)


def _final(client, run_id: str, key: str) -> float:
    h = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return h[-1].value


class _Tables(html.parser.HTMLParser):
    """Every <table> of the HTML as (data-csv, header, rows of cell text)."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

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
    p = _Tables()
    p.feed((path / "report.html").read_text())
    t = next(t for t in p.tables if t["csv"] == csv)
    return pd.DataFrame(t["rows"][1:], columns=t["rows"][0])


# ------------------------------------------------------------------------------------------------


def test_report_writes_markdown_html_figures_and_csvs(report):
    path, elapsed = report
    assert elapsed < 30, f"report took {elapsed:.1f} s"
    md = (path / "report.md").read_text()
    page = (path / "report.html").read_text()
    for fig in ("accuracy", "compute", "effective_steps", "accuracy_vs_compute", "ablation", "sweep"):
        png = path / "figures" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
        assert f"](figures/{fig}.png)" in md
        assert f'data-file="figures/{fig}.png"' in page
    for table in (
        "accuracy",
        "compute_overhead",
        "phase_breakdown",
        "effective_steps",
        "effective_curves",
        "accuracy_vs_compute",
        "matched_compute",
        "ablation",
        "sweep_trials",
        "sweep_importances",
        "runs",
        "environment",
        "config_diff",
        "missing_data",
    ):
        assert not pd.read_csv(path / "tables" / f"{table}.csv").empty, table
        assert f"tables/{table}.csv" in md
    # self-contained: every image is a data URI, nothing is fetched
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(srcs) == 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and 'src="http' not in page
    assert "](" not in page  # no Markdown link left unrendered
    for heading in (
        "1. Accuracy",
        "2. Compute overhead",
        "3. Effective optimization steps",
        "4. Accuracy vs compute",
        "5. Algorithm ablation",
        "6. Provenance",
        "Missing data and caveats",
        "Summary vs the paper",
    ):
        assert heading in md and heading in page


def test_accuracy_table_matches_mlflow(store, report):
    path, _ = report
    client = _client(store)
    acc = pd.read_csv(path / "tables" / "accuracy.csv")
    failed = set(store.failed)
    means: dict[tuple[str, str], float] = {}
    for algo in ("grpo", "repo:recent_k", "repo:highest_k"):
        rids = [rid for (a, _, _), rid in store.members.items() if a == algo and rid not in failed]
        for bench in ("arith", "gsm8k"):
            vals = [_final(client, rid, f"eval/{bench}/accuracy") for rid in rids]
            row = acc[(acc["algorithm"] == algo) & (acc["benchmark"] == bench)].iloc[0]
            assert row["mean"] == pytest.approx(np.mean(vals), abs=1e-9)
            assert row["n_seeds"] == len(rids)
            assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["ci_high"] > row["ci_low"]
            means[(algo, bench)] = np.mean(vals)
        macro = acc[(acc["algorithm"] == algo) & (acc["benchmark"] == "macro")].iloc[0]
        per_seed = [_final(client, rid, "eval/macro_accuracy") for rid in rids]
        assert macro["mean"] == pytest.approx(np.mean(per_seed), abs=1e-9)
        means[(algo, "macro")] = macro["mean"]
    for algo in ("repo:recent_k", "repo:highest_k"):
        for bench in ("arith", "gsm8k", "macro"):
            row = acc[(acc["algorithm"] == algo) & (acc["benchmark"] == bench)].iloc[0]
            assert row["delta"] == pytest.approx(means[(algo, bench)] - means[("grpo", bench)], abs=1e-9)
            assert row["delta_ci_low"] <= row["delta"] <= row["delta_ci_high"]
    # the FAILED seed is left out; the seed without per-sample records is resampled at seed level only
    assert acc[(acc["algorithm"] == "repo:highest_k")]["seeds"].astype(str).unique().tolist() == ["42"]
    assert (
        acc[(acc["algorithm"] == "grpo") & (acc["benchmark"] == "arith")]["resampling"].iloc[0]
        == "seeds x prompts (some seeds: seeds only)"
    )
    # the HTML table shows the same numbers, best per row highlighted
    t = _html_table(path, "tables/accuracy.csv")
    for _, r in t.iterrows():
        bench = "macro" if "macro" in r["benchmark"] else r["benchmark"]
        for algo in ("grpo", "repo:recent_k", "repo:highest_k"):
            col = next(c for c in t.columns if c.startswith(algo + " (n="))
            assert r[col].startswith(f"{100 * means[(algo, bench)]:.1f} ["), (bench, algo, r[col])
    page = (path / "report.html").read_text()
    assert page.count('class="num best"') >= 3


def test_compute_effective_and_curves_match_mlflow(store, report):
    path, _ = report
    client = _client(store)
    over = pd.read_csv(path / "tables" / "compute_overhead.csv")
    eff = pd.read_csv(path / "tables" / "effective_steps.csv")
    curves = pd.read_csv(path / "tables" / "accuracy_vs_compute.csv")
    failed = set(store.failed)
    per_step, totals = {}, {}
    for algo in ("grpo", "repo:recent_k", "repo:highest_k"):
        rids = [rid for (a, _, _), rid in store.members.items() if a == algo and rid not in failed]
        wall = np.mean([np.mean([m.value for m in client.get_metric_history(r, "time/step_s")]) for r in rids])
        flops = np.mean([np.mean([m.value for m in client.get_metric_history(r, "flops/total")]) for r in rids])
        per_step[algo] = wall
        row = over[(over["algorithm"] == algo) & (over["unit"] == "wall seconds")].iloc[0]
        assert row["per_step"] == pytest.approx(wall, rel=1e-9)
        assert over[(over["algorithm"] == algo) & (over["unit"] == "FLOPs")].iloc[0]["per_step"] == pytest.approx(
            flops, rel=1e-9
        )
        totals[algo] = np.mean([_final(client, r, "effective/steps_total") for r in rids])
        assert eff[eff["algorithm"] == algo].iloc[0]["effective_total"] == pytest.approx(totals[algo], rel=1e-9)
        for r in rids:  # every evaluation of every used run is a point of the accuracy-vs-compute curves
            evals = client.get_metric_history(r, "eval/macro_accuracy")
            pts = curves[curves["run_id"] == r].sort_values("step")
            assert len(pts) == len(evals)
            assert pts["macro_accuracy"].tolist() == pytest.approx(
                [m.value for m in sorted(evals, key=lambda m: m.step)]
            )
            cum = {m.step: m.value for m in client.get_metric_history(r, "flops/total_cum")}
            for _, p in pts.iterrows():
                assert p["flops"] == pytest.approx(cum.get(p["step"], 0.0))
    for algo in ("repo:recent_k", "repo:highest_k"):
        row = over[(over["algorithm"] == algo) & (over["unit"] == "wall seconds")].iloc[0]
        assert row["overhead"] == pytest.approx(per_step[algo] / per_step["grpo"] - 1, rel=1e-9)
        assert eff[eff["algorithm"] == algo].iloc[0]["gain_total"] == pytest.approx(
            totals[algo] / totals["grpo"] - 1, rel=1e-9
        )
    assert set(curves["run_id"]).isdisjoint(failed)


def test_failed_run_and_missing_artifacts_are_reported(store, report):
    path, _ = report
    md = (path / "report.md").read_text()
    section = md.split("## Missing data and caveats", 1)[1].split("\n## ", 1)[0]
    (failed,) = store.failed
    assert failed in section and "FAILED" in section
    assert store.without_samples[0] in section
    runs = pd.read_csv(path / "tables" / "runs.csv")
    assert runs.set_index("run_id").loc[failed, "used"] == False  # noqa: E712
    assert len(runs) == len(store.members)
    assert "FAILED" in _html_table(path, "tables/runs.csv").to_string()


def test_sweep_section(store, report):
    import json

    path, _ = report
    client = _client(store)
    best = json.loads(
        Path(client.download_artifacts(store.sweep_run_id, "sweep/best_trial.json", str(path.parent))).read_text()
    )
    trials = pd.read_csv(path / "tables" / "sweep_trials.csv")
    assert len(trials) == len(store.trial_run_ids)
    assert trials.loc[trials["value"].idxmax(), "number"] == best["number"]
    md = (path / "report.md").read_text()
    assert store.sweep_run_id in md and best["run_id"] in md


def test_provenance_config_diff(store, report):
    path, _ = report
    diff = pd.read_csv(path / "tables" / "config_diff.csv")
    assert {"algorithm.name", "algorithm.strategy", "train.seed"} <= set(diff["param"])
    assert "model.name" not in set(diff["param"])  # identical across members
    env = pd.read_csv(path / "tables" / "environment.csv")
    assert {"torch", "engine", "hardware"} <= set(env["key"])


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def _dump_dom(browser: str, page: Path, profile: Path) -> str:
    res = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_html_renders_in_headless_chromium(report, tmp_path):
    """Skipped without a browser, unless REPORTS_REQUIRE_CHROMIUM=1 (CI installs `chromium`) makes that a failure."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("REPORTS_REQUIRE_CHROMIUM") == "1":
            pytest.fail(
                "chromium is required (REPORTS_REQUIRE_CHROMIUM=1) but not installed: apt-get install -y chromium"
            )
        pytest.skip("chromium not installed (Debian package `chromium`)")
    path, _ = report
    dom = _dump_dom(browser, path / "report.html", tmp_path / "profile")
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images-loaded="true"' in body, body
    assert 'data-images-total="6"' in body and 'data-images-ok="6"' in body
    assert dom.count('data-loaded="true"') == 6
    # the check itself catches a broken image
    broken = tmp_path / "broken.html"
    broken.write_text(
        re.sub(
            r'src="data:image/png;base64,[^"]{0,40}',
            'src="data:image/png;base64,AAAA',
            (path / "report.html").read_text(),
            count=1,
        )
    )
    dom = _dump_dom(browser, broken, tmp_path / "profile2")
    assert 'data-images-loaded="false"' in re.search(r"<body[^>]*>", dom).group(0)
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile3'}",
            "--window-size=1400,2400",
            f"--screenshot={shot}",
            (path / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_sparse_runs_never_crash_or_draw_empty_plots(store, tmp_path):
    from reports.cli import generate_report

    parent, finished, killed = store.sparse
    out = generate_report(store.tracking_uri, experiment="sparse", out_dir=tmp_path / "sparse", sweep_run_id=None)
    md = (out / "report.md").read_text()
    assert killed in md and "KILLED" in md
    assert "Planned member `repo:highest_k|tiny|42` has no MLflow run" in md
    assert (
        f"Run `{store.superseded}` (grpo, tiny, seed 42) ended with status **FAILED**; it is superseded by the finished run `{finished}`"
        in md
    )
    assert f"Run `{finished}` (grpo, tiny, seed 42) logged no evaluation" in md
    assert "No finished run logged an evaluation." in md
    assert "No finished run logged per-step cost metrics" in md
    assert list((out / "figures").glob("*.png")) == []  # nothing to draw: no empty figure either
    assert "<img" not in (out / "report.html").read_text()


def test_sweep_only_and_unknown_experiment(store, tmp_path):
    from reports.cli import generate_report

    out = generate_report(store.tracking_uri, experiment="sweep-only", out_dir=tmp_path / "sweep")
    md = (out / "report.md").read_text()
    assert "No member runs were found" in md and "this report covers a sweep" in md
    assert store.sweep_only.sweep_run_id in md
    assert [p.name for p in (out / "figures").glob("*.png")] == ["sweep.png"]
    # what `harness sweep` asks for: the sweep alone, even where the experiment also holds a matrix
    out = generate_report(
        store.tracking_uri,
        experiment="synthetic",
        out_dir=tmp_path / "sweep2",
        sweep_run_id=store.sweep_run_id,
        sweep_only=True,
    )
    md = (out / "report.md").read_text()
    assert "A sweep report" in md and "## 1. Accuracy" not in md and "No member runs" not in md
    assert all(rid in md for rid in store.trial_run_ids)
    assert [p.name for p in (out / "figures").glob("*.png")] == ["sweep.png"]
    out = generate_report(store.tracking_uri, experiment="does-not-exist", out_dir=tmp_path / "none")
    assert "was not found" in (out / "report.md").read_text()


def test_inline_markdown_to_html():
    from reports.render import inline_html

    assert (
        inline_html("see [`t/a.csv`](t/a.csv) and **b** `x<y>`")
        == 'see <a href="t/a.csv"><code>t/a.csv</code></a> and <strong>b</strong> <code>x&lt;y&gt;</code>'
    )
    assert inline_html("[run](http://h/#/r?a=1&b=2)") == '<a href="http://h/#/r?a=1&amp;b=2">run</a>'
    assert inline_html("a*b and *it*") == "a*b and <em>it</em>"


def test_cli_parser_and_explicit_parent(store, tmp_path, capsys):
    from reports.cli import add_report_parser, cmd_report

    parser = argparse.ArgumentParser(prog="harness")
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "report",
            "--tracking-uri",
            store.tracking_uri,
            "--experiment",
            "synthetic",
            "--parent",
            store.parent_run_id,
            "--sweep",
            "none",
            "--out",
            str(tmp_path / "cli"),
            "--bootstrap",
            "200",
            "--svg",
            "--compute-unit",
            "wall_seconds",
        ]
    )
    assert cmd_report(args) == 0
    assert "report.html" in capsys.readouterr().out
    md = (tmp_path / "cli" / "report.md").read_text()
    assert (
        store.parent_run_id in md
        and "No sweep" in md
        and "cumulative wall seconds" in md
        and "Planned member" not in md
    )
    assert (tmp_path / "cli" / "figures" / "accuracy.svg").exists()


def test_default_out_dir_is_under_reports(monkeypatch, tmp_path):
    from reports.cli import default_out_dir

    d = default_out_dir("my exp/1")
    assert d.parts[0] == "reports" and re.fullmatch(r"my-exp-1-\d{8}-\d{6}", d.name)


def test_sql_fast_path_equals_client_path(store):
    from reports.data import load_experiment

    fast = load_experiment(store.tracking_uri, "synthetic", sweep_run_id=None, load_samples=False)
    slow = load_experiment(store.tracking_uri, "synthetic", sweep_run_id=None, load_samples=False, fast_sql=False)
    key = ["run_id", "key", "step", "timestamp"]
    a = fast.metrics.sort_values(key).reset_index(drop=True)
    b = slow.metrics.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_hierarchical_bootstrap():
    from reports.analysis import hierarchical_bootstrap

    rng = np.random.default_rng(0)
    # one seed with a logged value only: no spread at all
    out = hierarchical_bootstrap([{"a": 0.4}], ["a"], 200, rng)
    assert np.allclose(out["a"], 0.4) and np.allclose(out["macro"], 0.4)
    # seeds x prompts: centred on the mean, wider than prompts alone
    units = [{"a": rng.random(50).round(), "b": 0.2}, {"a": rng.random(50).round(), "b": 0.6}]
    out = hierarchical_bootstrap(units, ["a", "b"], 2000, rng)
    mean_a = np.mean([u["a"].mean() for u in units])
    assert abs(np.mean(out["a"]) - mean_a) < 0.02
    assert set(np.unique(out["b"]).round(6)) <= {0.2, 0.4, 0.6}
    assert np.allclose(out["macro"], (out["a"] + out["b"]) / 2)


def test_matched_compute_merges_one_schedule_across_runs():
    """Evaluations fire at the first step past their fraction (0.50 in one run, 0.51 in another): one row, not two."""
    from reports.analysis import matched_compute

    rows = []
    for run, algo, fracs in (
        ("a", "grpo", [0.0, 0.26, 0.5, 1.0]),
        ("b", "grpo", [0.0, 0.25, 0.51, 1.0]),
        ("c", "repo", [0.0, 0.27, 0.52, 1.0]),
    ):
        rows += [
            {"run_id": run, "model": "m", "algorithm": algo, "step": i, "budget_fraction": f, "macro_accuracy": 0.1 * i}
            for i, f in enumerate(fracs)
        ]
    t = matched_compute(pd.DataFrame(rows))
    assert sorted(t["fraction"].unique()) == [0.0, 0.25, 0.5, 1.0]
    assert t[(t["fraction"] == 0.5) & (t["algorithm"] == "grpo")]["count"].item() == 2
    # runs with different schedules keep their own (rounded) fractions
    t = matched_compute(pd.DataFrame(rows[:-1]))
    assert 0.52 in set(t["fraction"]) and 0.51 in set(t["fraction"])


def test_cost_to_target_interpolates_and_compares_to_the_baseline():
    from reports.analysis import cost_to_target

    rows = []
    for run, algo, accs, flops in (
        ("a", "grpo", [0.2, 0.3, 0.5], [0, 100, 200]),
        ("b", "repo", [0.2, 0.4, 0.45], [0, 100, 200]),
    ):
        rows += [
            {
                "run_id": run,
                "model": "m",
                "algorithm": algo,
                "step": i,
                "budget_fraction": i / 2,
                "macro_accuracy": a,
                "flops": f,
                "steps": i,
            }
            for i, (a, f) in enumerate(zip(accs, flops))
        ]
    t = cost_to_target(pd.DataFrame(rows)).set_index(["algorithm", "unit"])
    # default target = the lowest peak (repo's 0.45); grpo crosses it 3/4 of the way from 100 to 200 FLOPs, repo at 200
    assert t.loc[("grpo", "flops"), "target"] == pytest.approx(0.45)
    assert t.loc[("grpo", "flops"), "cost"] == pytest.approx(175.0) and t.loc[
        ("repo", "flops"), "cost"
    ] == pytest.approx(200.0)
    assert t.loc[("repo", "flops"), "vs_baseline"] == pytest.approx(200 / 175 - 1)
    t = cost_to_target(pd.DataFrame(rows), target=0.48).set_index(["algorithm", "unit"])
    assert not t.loc[("repo", "flops"), "reached"] and t.loc[("grpo", "flops"), "cost"] == pytest.approx(190.0)
