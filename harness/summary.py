"""The end-of-matrix text: a table of every run and how each compares with the baseline run.

Printed by ``harness run`` and stored with the matrix's MLflow parent run (``summary.txt``) by
:func:`harness.experiment.run_matrix`. A leaf module: it imports neither the CLI nor the experiment.

``results`` are ``(model, algorithm, seed, summary)`` tuples, ``summary`` being what
``Trainer.fit`` returns (``steps``, ``totals``, ``evals``).
"""

from __future__ import annotations

Result = tuple[str, str, int, dict]


def _percent(v: float | None) -> str:
    return f"{100 * v:9.1f}%" if v is not None else f"{'-':>10s}"


def format_summary(results: list[Result]) -> str:
    """A short table: accuracy before/after, effective steps, wall-clock per step."""
    header = (
        f"{'model':12s} {'algorithm':24s} {'seed':>4s} {'acc before':>10s} {'acc after':>10s} {'delta':>7s} "
        f"{'eff. steps':>10s} {'steps':>5s} {'s/step':>7s}"
    )
    lines = ["", header, "-" * len(header)]
    for m, a, seed, s in results:
        evals = {e["tag"]: e["macro_accuracy"] for e in s.get("evals", [])}
        before, after = evals.get("before"), evals.get("after")
        delta = (after - before) * 100 if before is not None and after is not None else None
        steps = s.get("steps", 0)
        tot = s.get("totals", {})
        sps = tot.get("time/step_s", 0.0) / steps if steps else float("nan")
        delta_text = f"{delta:+6.1f}" if delta is not None else "-"
        lines.append(
            f"{m[:12]:12s} {a:24s} {seed:4d} {_percent(before)} {_percent(after)} {delta_text:>7s} "
            f"{tot.get('effective/step', 0.0):10.1f} {steps:5d} {sps:7.2f}"
        )
    lines.append(
        "(accuracy = macro average over the evaluation benchmarks; "
        "eff. steps = cumulative fraction of prompt groups that carried gradient)"
    )
    return "\n".join(lines)


def compare_to_baseline(results: list[Result], baseline: str = "grpo") -> list[str]:
    """Per (model, seed): accuracy delta, cost per step in each unit and effective steps vs ``baseline``.

    Effective steps are given per step (what an algorithm buys per update) and in total (what it bought
    with the run's budget: at matched compute a costlier step means fewer of them)."""
    base = {(m, seed): s for m, a, seed, s in results if a == baseline}
    units = (("time/step_s", "wall"), ("flops/total", "FLOPs"), ("tokens/trained", "trained tokens"))

    def per_step(x: dict, key: str) -> float:
        return x["totals"].get(key, 0.0) / max(x.get("steps", 0), 1)

    def ratio(a: float, b: float) -> str:
        return f"{100 * (a / b - 1):+.1f}%" if b else "n/a"

    def final_acc(x: dict) -> float | None:
        return {e["tag"]: e["macro_accuracy"] for e in x.get("evals", [])}.get("after")

    lines = []
    for m, a, seed, s in results:
        b = base.get((m, seed))
        if a == baseline or b is None:
            continue
        acc_a, acc_b = final_acc(s), final_acc(b)
        acc = f"{100 * (acc_a - acc_b):+.1f} pts" if acc_a is not None and acc_b is not None else "n/a"
        cost = ", ".join(f"{label} {ratio(per_step(s, key), per_step(b, key))}" for key, label in units)
        total_eff = ratio(s["totals"].get("effective/step", 0.0), b["totals"].get("effective/step", 0.0))
        eff = (
            f"effective steps per step {ratio(per_step(s, 'effective/step'), per_step(b, 'effective/step'))}, "
            f"in total {total_eff} ({s.get('steps', 0)} vs {b.get('steps', 0)} steps)"
        )
        lines.append(f"{m} seed {seed}: {a}: accuracy {acc}; cost per step: {cost}; {eff}")
    return lines
