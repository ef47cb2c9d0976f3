"""Every shipped recipe loads, validates, and opens with the command that runs it."""
import pytest

from rewardtune.recipes import recipe_dict, recipe_names, resolve


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_loads_and_documents_its_command(name):
    config = resolve(name)
    about = recipe_dict(name)["about"]
    assert about and ("rewardtune " in about[0] or "benchmarks/" in about[0])
    assert config.task in name
    assert config.train.stage == ("mle" if "_mle" in name else "reward")
