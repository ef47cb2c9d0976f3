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
    assert config.train.stage == ("mle" if "_mle" in name else "codec" if "_codec" in name else "reward")


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_about_is_its_command_and_one_expected_figure(name):
    about = recipe_dict(name)["about"]
    alone = f"rewardtune {'tune' if '_tune' in name else 'pretrain'} {name} "
    assert any(alone in line for line in about), f"{name}: no line runs it alone ({alone.strip()} ...)"
    assert sum(line.startswith("expected:") for line in about) <= 1, f"{name}: more than one expected figure"
    dated = [line for line in about if re.search(r"\b20\d\d-\d\d-\d\d\b|\bmeasured\b", line)]
    assert not dated, f"{name}: a dated measurement belongs in docs/results.md, not the recipe: {dated}"
    if "_bench_" in name and "expected:" in " ".join(about):
        assert "docs/results.md#" in " ".join(about), f"{name}: the expected figure does not point at its history"


PAPER = [n for n in recipe_names() if n.startswith(("coco_", "imagenet_"))]


def paper_state(task: str) -> dict:
    """A task state of the paper's data's shape (COCO's 80 classes, 133 panoptic categories...), no files."""
    from rewardtune.tasks.captioning import NgramTable, Vocab, tokenize_caption
    if task == "detection":
        return {"categories": [{"id": i + 1, "name": f"c{i}"} for i in range(80)], "class_counts": [1] * 80}
    if task == "panoptic":
        return {"categories": [{"id": i + 1, "name": f"c{i}", "isthing": int(i < 80)} for i in range(133)]}
    if task == "colorization":
        return {"palette": [[0.0, 0.0]] + [[float(i % 40) - 20, float(i // 40) - 6] for i in range(511)]}
    captions = ["a dog runs on the grass", "two cats sleep"]
    return {"vocab": Vocab.build(captions).to_dict(),
            "cider_df": NgramTable.from_references([[tokenize_caption(c)] for c in captions]).to_state()}


def test_paper_recipes_exist_for_every_task():
    assert sorted(PAPER) == sorted(f"{prefix}_{task}_{stage}" for prefix, task in (
        ("coco", "detection"), ("coco", "captioning"), ("coco", "panoptic"), ("imagenet", "colorization"))
        for stage in ("mle", "tune"))


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_builds_its_task_and_a_vit_b16_model_without_data(name):
    """Each recipe says its command, hardware, the paper's figure it aims at and that it has not been run;
    its task options build the task (from a state: no data read) and the model is ViT-B/16 sized."""
    import torch

    from rewardtune.model.encdec import build_model
    from rewardtune.tasks import make_task
    about = " | ".join(recipe_dict(name)["about"])
    for needle in ("rewardtune ", "hardware: ", "aims at: the paper's", "status: not yet run"):
        assert needle in about, f"{name}: its about lines do not say {needle!r}"
    assert "differs from the paper: " in about or ("as the paper: " in about and "ours: " in about), \
        f"{name}: its about lines do not say where it differs from the paper"
    config = resolve(name)
    task = make_task(config, paper_state(config.task))
    with torch.device("meta"):  # shapes only: nothing allocated
        model = build_model(config.model, config.data.image_size, task.codec)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert 85e6 < encoder < 88e6, f"{name}: encoder of {encoder / 1e6:.1f} M parameters, ViT-B/16 has about 86 M"
    assert config.model.patch_size == 16 and config.data.image_size % 16 == 0 and config.data.decode == "on_access"
    assert config.train.precision == "bf16"
    if config.task == "detection":
        assert (task.codec.max_len, config.data.image_size) == (601, 640)  # 100 boxes of 6 tokens + end, 640 px
