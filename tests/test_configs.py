"""Every shipped recipe loads, validates, and opens with the command that runs it; its "about" lines
hold that command and at most one expected figure, no dated history (that lives in docs/results.md)."""
import re

import pytest

from rewardtune.recipes import recipe_dict, recipe_names, resolve


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_loads_and_documents_its_command(name):
    config = resolve(name)
    about = recipe_dict(name)["about"]
    assert about and ("rewardtune " in about[0] or "benchmarks/" in about[0])
    assert config.task in name
    assert config.train.stage == ("mle" if "_mle" in name else "reward")


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_about_is_its_command_and_one_expected_figure(name):
    about = recipe_dict(name)["about"]
    alone = f"rewardtune {'pretrain' if '_mle' in name else 'tune'} {name} "
    assert any(alone in line for line in about), f"{name}: no line runs it alone ({alone.strip()} ...)"
    assert sum(line.startswith("expected:") for line in about) <= 1, f"{name}: more than one expected figure"
    dated = [line for line in about if re.search(r"\b20\d\d-\d\d-\d\d\b|\bmeasured\b", line)]
    assert not dated, f"{name}: a dated measurement belongs in docs/results.md, not the recipe: {dated}"
    if "_bench_" in name and "expected:" in " ".join(about):
        assert "docs/results.md#" in " ".join(about), f"{name}: the expected figure does not point at its history"
