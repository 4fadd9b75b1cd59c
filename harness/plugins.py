"""User plug-ins loaded without editing the package: ``harness run --plugin MODULE`` (or a ``.py`` file).

A plug-in module registers what it defines when it is imported (``@register_algorithm``, ``register_strategy``), so
it only has to be imported before configs are resolved. :func:`load_plugins` does that and records the plug-ins in
``$HARNESS_PLUGINS``, so the processes a command starts (sweep workers, the ranks of a multi-process run, a
cluster job that inherits the environment) import the same ones through :func:`load_plugins_from_env`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from harness.schema import ConfigError

PLUGIN_ENV = "HARNESS_PLUGINS"


def _import(spec: str) -> None:
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise ConfigError(f"--plugin {spec}: no such file")
        name = f"harness_plugin_{path.stem}"
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"--plugin {spec}: cannot import it ({e}); give an importable module name (on PYTHONPATH) or a .py file"
        ) from None


def load_plugins(specs: list[str]) -> list[str]:
    """Import the plug-ins recorded in ``$HARNESS_PLUGINS`` and each of ``specs`` (a module name or a ``.py`` path,
    made absolute for child processes), record them all there; returns them. Importing one twice does nothing."""
    loaded: list[str] = []
    for spec in [s for s in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if s] + list(specs):
        spec = str(Path(spec).resolve()) if spec.endswith(".py") else spec
        _import(spec)
        if spec not in loaded:
            loaded.append(spec)
    if loaded:
        os.environ[PLUGIN_ENV] = os.pathsep.join(loaded)
    return loaded


def load_plugins_from_env() -> list[str]:
    """Import the plug-ins the parent process recorded in ``$HARNESS_PLUGINS`` (a no-op without it)."""
    return load_plugins([])
