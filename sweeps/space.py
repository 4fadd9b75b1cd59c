"""Search-space files for `harness sweep`: parsing, up-front validation and sampling.

A space file is YAML::

    base:                       # optional: config sections applied under every trial
      algorithm: {name: repo}
      train: {max_steps: 20}
      eval: {every_steps: 5}    # intermediate evaluations feed pruning
    objective: {metric: eval/macro_accuracy, direction: maximize}
    sampler: {type: tpe, seed: 0}            # optional: tpe (default) or random
    pruner: {type: median, n_warmup_steps: 5} # optional: median (default), percentile, hyperband,
                                              # successive_halving, threshold, none
    params:
      algorithm.strategy: {type: categorical, choices: [recent_k, highest_k]}
      algorithm.max_cache_size: {type: int, low: 8, high: 32, step: 8}
      train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-4, log: true}
      algorithm.num_replays: {type: int, low: 2, high: 8, when: {algorithm.name: repo}}

Everything is checked before any trial runs: unknown fields, types and ranges, and every parameter
key against the config schema; then one config is built from the space's midpoint (first choice of
each categorical) to prove the keys and value types are accepted. Combinations that are
inconsistent only for some draws (e.g. ``min_cache_to_replay > max_cache_size``) are allowed: those
trials fail with the reason recorded, and the study goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.config import SECTIONS, ConfigError, HarnessConfig, build_config
from harness.tracking import flatten

PARAM_TYPES = ("categorical", "int", "float")
PARAM_FIELDS = {
    "categorical": {"type", "choices", "when"},
    "int": {"type", "low", "high", "step", "log", "when"},
    "float": {"type", "low", "high", "step", "log", "when"},
}
TOP_LEVEL = {"base", "objective", "params", "sampler", "pruner"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
    "none": "NopPruner",
}
DIRECTIONS = ("maximize", "minimize")
DEFAULT_OBJECTIVE = {"metric": "eval/macro_accuracy", "direction": "maximize"}
VALIDATION_DRAWS = 64


class SpaceError(ConfigError):
    """The search-space file is invalid; the message names the offending key."""


@dataclass
class Param:
    key: str  # dotted config key, e.g. algorithm.max_cache_size
    type: str
    choices: list[Any] = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    when: dict[str, list[Any]] = field(default_factory=dict)

    def midpoint(self) -> Any:
        if self.type == "categorical":
            return self.choices[0]
        lo, hi = self.low, self.high
        if self.type == "int":
            if self.log:
                return int(round(math.sqrt(lo * hi)))
            step = self.step or 1
            return lo + ((hi - lo) // step // 2) * step
        mid = math.sqrt(lo * hi) if self.log else (lo + hi) / 2
        if self.step:
            mid = lo + round((mid - lo) / self.step) * self.step
        return float(mid)

    def ends(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = self.step or 1
            return [self.low, self.low + ((self.high - self.low) // step) * step]
        return [self.low, self.high]

    def random(self, rng: Any) -> Any:
        if self.type == "categorical":
            return self.choices[rng.randrange(len(self.choices))]
        if self.type == "int":
            step = self.step or 1
            if self.log:
                return int(round(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
            return self.low + rng.randrange((self.high - self.low) // step + 1) * step
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        v = rng.uniform(self.low, self.high)
        return self.low + round((v - self.low) / self.step) * self.step if self.step else v

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def applies(self, context: dict[str, Any]) -> bool:
        return all(context.get(k) in vals for k, vals in self.when.items())


@dataclass
class SearchSpace:
    params: list[Param]
    base: dict[str, Any] = field(default_factory=dict)
    metric: str = DEFAULT_OBJECTIVE["metric"]
    direction: str = DEFAULT_OBJECTIVE["direction"]
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    source: str = "<space>"

    # ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The normalised space (what is stored with the study and compared when a worker joins)."""
        return {
            "base": self.base,
            "objective": {"metric": self.metric, "direction": self.direction},
            "sampler": self.sampler,
            "pruner": self.pruner,
            "params": {p.key: _param_to_dict(p) for p in self.params},
        }

    @property
    def is_eval_metric(self) -> bool:
        return self.metric.startswith("eval/")

    def sample(self, trial: Any, context: dict[str, Any]) -> dict[str, Any]:
        """Draw every applicable parameter (file order); ``context`` is the flat base config, updated as we go."""
        ctx = dict(context)
        out: dict[str, Any] = {}
        for p in self.params:
            if not p.applies(ctx):
                continue
            out[p.key] = ctx[p.key] = p.suggest(trial)
        return out

    def midpoint(self, context: dict[str, Any]) -> dict[str, Any]:
        ctx = dict(context)
        out: dict[str, Any] = {}
        for p in self.params:
            if p.applies(ctx):
                out[p.key] = ctx[p.key] = p.midpoint()
        return out

    def draw(self, context: dict[str, Any], rng: Any) -> dict[str, Any]:
        """A uniform random draw (used to look for a valid combination when the midpoint is not one)."""
        ctx = dict(context)
        out: dict[str, Any] = {}
        for p in self.params:
            if p.applies(ctx):
                out[p.key] = ctx[p.key] = p.random(rng)
        return out

    def make_sampler(self, seed_offset: int = 0):
        import optuna

        kw = {k: v for k, v in self.sampler.items() if k != "type"}
        if kw.get("seed") is not None:
            # Every worker seeded alike would draw the same "random" start-up trials.
            kw["seed"] = int(kw["seed"]) + seed_offset
        if self.sampler["type"] == "tpe":
            kw.setdefault("constant_liar", True)  # running trials count as pessimistic results: workers spread out
        return getattr(optuna.samplers, SAMPLERS[self.sampler["type"]])(**kw)

    def make_pruner(self):
        import optuna

        kw = {k: v for k, v in self.pruner.items() if k != "type"}
        return getattr(optuna.pruners, PRUNERS[self.pruner["type"]])(**kw)


def _param_to_dict(p: Param) -> dict[str, Any]:
    d: dict[str, Any] = {"type": p.type}
    if p.type == "categorical":
        d["choices"] = p.choices
    else:
        d.update({"low": p.low, "high": p.high})
        if p.step is not None:
            d["step"] = p.step
        if p.log:
            d["log"] = True
    if p.when:
        d["when"] = p.when
    return d


# --------------------------------------------------------------------------------------------
# Parsing


def _num(value: Any, key: str, what: str, integer: bool) -> float | int:
    if isinstance(value, bool) or value is None:
        raise SpaceError(f"params.{key}.{what}: expected a number, got {value!r}")
    if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise SpaceError(f"params.{key}.{what}: expected a number, got {value!r}") from None
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise SpaceError(f"params.{key}.{what}: an int parameter needs integer bounds, got {value!r}")
        return int(value)
    if not isinstance(value, (int, float)):
        raise SpaceError(f"params.{key}.{what}: expected a number, got {value!r}")
    return float(value)


def parse_param(key: str, spec: Any) -> Param:
    if not isinstance(key, str) or len([k for k in key.split(".") if k]) < 2:
        raise SpaceError(f"params: key {key!r} must be a dotted config key, e.g. train.learning_rate")
    if not isinstance(spec, dict):
        raise SpaceError(f"params.{key}: expected a mapping like {{type: float, low: 1e-5, high: 1e-4}}, got {spec!r}")
    ptype = spec.get("type")
    if ptype not in PARAM_TYPES:
        raise SpaceError(f"params.{key}.type: unknown parameter type {ptype!r}; valid types: {', '.join(PARAM_TYPES)}")
    unknown = set(spec) - PARAM_FIELDS[ptype]
    if unknown:
        raise SpaceError(
            f"params.{key}: unknown field(s) {', '.join(sorted(map(str, unknown)))} for type {ptype}; "
            f"valid: {', '.join(sorted(PARAM_FIELDS[ptype]))}"
        )
    when = spec.get("when") or {}
    if not isinstance(when, dict) or not all(isinstance(k, str) and "." in k for k in when):
        raise SpaceError(
            f"params.{key}.when: expected a mapping of dotted config keys to a value or a list of values, got {when!r}"
        )
    when = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in when.items()}
    if ptype == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise SpaceError(f"params.{key}.choices: expected a non-empty list, got {choices!r}")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise SpaceError(
                    f"params.{key}.choices: choices must be strings, numbers, booleans or null (Optuna stores them), "
                    f"got {c!r}"
                )
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"params.{key}.choices: duplicate choices in {choices!r}")
        return Param(key, ptype, choices=list(choices), when=when)
    integer = ptype == "int"
    for req in ("low", "high"):
        if req not in spec:
            raise SpaceError(f"params.{key}: missing '{req}' (a {ptype} parameter needs low and high)")
    low, high = _num(spec["low"], key, "low", integer), _num(spec["high"], key, "high", integer)
    if low > high:
        raise SpaceError(f"params.{key}: low ({low}) > high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"params.{key}.log: expected true/false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _num(step, key, "step", integer)
        if step <= 0:
            raise SpaceError(f"params.{key}.step: must be > 0, got {step}")
        if log and (not integer or step != 1):
            raise SpaceError(
                f"params.{key}: 'step' and 'log: true' cannot be combined (Optuna samples log ranges continuously)"
            )
        if step > high - low and high > low:
            raise SpaceError(f"params.{key}.step: {step} is larger than the range [{low}, {high}]")
    if log and low <= 0:
        raise SpaceError(f"params.{key}: a log range needs low > 0, got low={low}")
    return Param(key, ptype, low=low, high=high, step=step, log=log, when=when)


def parse_space(data: dict[str, Any], source: str = "<space>") -> SearchSpace:
    if not isinstance(data, dict):
        raise SpaceError(
            f"{source}: expected a mapping with 'params' (and optionally base, objective, sampler, pruner)"
        )
    unknown = set(data) - TOP_LEVEL
    if unknown:
        raise SpaceError(
            f"{source}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}; "
            f"valid: {', '.join(sorted(TOP_LEVEL))}"
        )
    params_raw = data.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise SpaceError(f"{source}: 'params' must be a non-empty mapping of dotted config keys to parameter specs")
    params = [parse_param(k, v) for k, v in params_raw.items()]
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise SpaceError(f"{source}: 'base' must be a mapping of config sections, got {base!r}")
    for sect in base:
        if sect not in SECTIONS:
            raise SpaceError(f"base: unknown config section '{sect}'; valid sections: {', '.join(SECTIONS)}")
    objective = {**DEFAULT_OBJECTIVE, **(data.get("objective") or {})}
    if set(objective) - {"metric", "direction"}:
        raise SpaceError(
            f"objective: unknown key(s) {', '.join(sorted(set(objective) - {'metric', 'direction'}))}; "
            "valid: metric, direction"
        )
    if not isinstance(objective["metric"], str) or not objective["metric"]:
        raise SpaceError(
            f"objective.metric: expected a metric name such as eval/macro_accuracy, got {objective['metric']!r}"
        )
    if objective["direction"] not in DIRECTIONS:
        raise SpaceError(f"objective.direction: expected maximize or minimize, got {objective['direction']!r}")
    sampler = dict(data.get("sampler") or {"type": "tpe"})
    sampler.setdefault("type", "tpe")
    if sampler["type"] not in SAMPLERS:
        raise SpaceError(f"sampler.type: unknown sampler {sampler['type']!r}; valid: {', '.join(SAMPLERS)}")
    pruner = dict(data.get("pruner") or {"type": "median"})
    pruner.setdefault("type", "median")
    if pruner["type"] not in PRUNERS:
        raise SpaceError(f"pruner.type: unknown pruner {pruner['type']!r}; valid: {', '.join(PRUNERS)}")
    space = SearchSpace(
        params=params,
        base=base,
        metric=objective["metric"],
        direction=objective["direction"],
        sampler=sampler,
        pruner=pruner,
        source=source,
    )
    for what, make in (("sampler", space.make_sampler), ("pruner", space.make_pruner)):
        try:
            make()
        except (TypeError, ValueError) as e:
            cls = (SAMPLERS if what == "sampler" else PRUNERS)[getattr(space, what)["type"]]
            raise SpaceError(f"{what}: {e} (options are passed to optuna.{what}s.{cls})") from None
    return space


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    if not p.exists():
        bundled = Path(__file__).parent / "spaces" / f"{path}.yaml"
        if bundled.exists():
            p = bundled
        else:
            raise SpaceError(
                f"search-space file '{path}' not found (and no bundled space of that name in {bundled.parent})"
            )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"{p}: not valid YAML: {e}") from None
    return parse_space(data, source=str(p))


# --------------------------------------------------------------------------------------------
# Config composition and validation against the config schema


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"train.learning_rate": 1e-5}`` -> ``{"train": {"learning_rate": 1e-5}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = [p for p in key.split(".") if p]
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


def flat_config(cfg: HarnessConfig) -> dict[str, Any]:
    return flatten(cfg.to_dict())


def _check_key(key: str, cfg: HarnessConfig, algorithm_names: list[str]) -> None:
    from algorithms.base import get_algorithm_class, split_variant

    parts = key.split(".")
    section, name = parts[0], parts[1]
    if section not in SECTIONS:
        raise SpaceError(f"params.{key}: unknown config section '{section}'; valid sections: {', '.join(SECTIONS)}")
    if section == "algorithm":
        if name == "name":
            return
        valid: set[str] = set()
        for algo in algorithm_names:
            try:
                cls = get_algorithm_class(split_variant(str(algo))[0])
            except ConfigError as e:
                raise SpaceError(f"params.{key}: {e}") from None
            valid |= {f.name for f in fields(cls.config_cls)}
        if name not in valid:
            raise SpaceError(
                f"params.{key}: unknown config key 'algorithm.{name}' "
                f"for algorithm(s) {', '.join(map(str, algorithm_names))}; "
                f"valid keys: {', '.join(sorted(valid | {'name'}))}"
            )
        return
    obj = getattr(cfg, section)
    names = {f.name for f in fields(obj)}
    if name not in names:
        raise SpaceError(
            f"params.{key}: unknown config key '{section}.{name}'; "
            f"valid keys in '{section}': {', '.join(sorted(names))}"
        )
    if is_dataclass(getattr(obj, name)) or (len(parts) > 2 and not isinstance(getattr(obj, name), dict)):
        raise SpaceError(f"params.{key}: '{section}.{name}' is not a single value that can be sampled")
    if section == "tracking":
        raise SpaceError(f"params.{key}: tracking settings are fixed by the sweep and cannot be searched")


def compose(
    pre: list[Any],
    space: SearchSpace,
    sets: list[dict[str, Any]],
    sampled: dict[str, Any] | None,
    forced: dict[str, Any] | None,
) -> HarnessConfig:
    """The one layer order of a trial: pre-layers (preset, --config, sweep defaults) <- space base <- --set
    <- sampled params <- forced."""
    return build_config(*pre, space.base, *sets, nested(sampled or {}), forced or {})


def check_space(
    space: SearchSpace, pre: list[Any], sets: list[dict[str, Any]] | None = None, forced: dict[str, Any] | None = None
) -> tuple[HarnessConfig, list[str]]:
    """Validate ``space`` against the config schema; returns (the midpoint trial's config, warnings).

    Raises :class:`SpaceError` (a ConfigError) naming the key when a parameter can never work.
    """
    sets = sets or []
    try:
        probe = compose(pre, space, sets, None, forced)
    except ConfigError as e:
        raise SpaceError(
            f"the sweep's base config (model preset + --config + space base + --set) is invalid: {e}"
        ) from None
    algo_param = next((p for p in space.params if p.key == "algorithm.name"), None)
    algorithm_names = list(algo_param.choices) if algo_param else [probe.algorithm["name"]]
    for p in space.params:
        _check_key(p.key, probe, algorithm_names)
    context = flat_config(probe)
    mid = space.midpoint(context)
    warnings = []
    try:
        cfg = compose(pre, space, sets, mid, forced)
    except ConfigError as e:
        # Keys and types may still be fine and only this combination inconsistent: look for a valid draw.
        import random

        rng = random.Random(0)
        for _ in range(VALIDATION_DRAWS):
            draw = space.draw(context, rng)
            try:
                cfg = compose(pre, space, sets, draw, forced)
            except ConfigError:
                continue
            warnings.append(
                f"the space's midpoint is not a valid config ({e}); "
                f"e.g. {', '.join(f'{k}={v}' for k, v in draw.items())} is"
            )
            mid = draw
            break
        else:
            raise SpaceError(
                f"no valid config in the space: the midpoint ({', '.join(f'{k}={v}' for k, v in mid.items())}) and "
                f"{VALIDATION_DRAWS} random draws are all rejected, e.g. the midpoint: {e}"
            ) from None
    for p in space.params:
        if p.key not in mid:
            continue
        for end in p.ends():
            if end == mid[p.key]:
                continue
            try:
                compose(pre, space, sets, {**mid, p.key: end}, forced)
            except ConfigError as e:
                warnings.append(
                    f"{p.key}={end} (other parameters at their midpoint) is rejected, so such trials will fail: {e}"
                )
    return cfg, warnings
