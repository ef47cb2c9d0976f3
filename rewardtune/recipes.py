"""Recipe configs shipped with the package (rewardtune/configs/*.json), found by name or path."""
from __future__ import annotations

import json
import os

from .config import Config, load
from .errors import ConfigError

RECIPE_DIR = os.path.join(os.path.dirname(__file__), "configs")


def recipe_names() -> list[str]:
    return sorted(n[:-5] for n in os.listdir(RECIPE_DIR) if n.endswith(".json"))


def resolve(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """A config file path, or the name of a shipped recipe (e.g. 'detection_mle')."""
    if os.path.exists(name_or_path):
        return load(name_or_path, overrides)
    path = os.path.join(RECIPE_DIR, name_or_path + ".json")
    if os.path.exists(path):
        return load(path, overrides)
    raise ConfigError(f"{name_or_path}: no such config file or recipe (recipes: {', '.join(recipe_names())})")


def recipe_dict(name: str) -> dict:
    with open(os.path.join(RECIPE_DIR, name + ".json")) as f:
        return json.load(f)


# `demo detection --quick`, measured: 27 s and 45 s of wall time (two runs) on 2 CPU cores shared with a training run.
QUICK_TIME = "under a minute"


def demo_tasks() -> list[str]:
    """The tasks that have a demo: those with both recipes <task>_demo_mle and <task>_demo_tune."""
    names = recipe_names()
    return [n[:-len("_demo_mle")] for n in names if n.endswith("_demo_mle") and n[:-3] + "tune" in names]
