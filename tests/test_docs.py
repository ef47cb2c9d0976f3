"""The project's docs/ stand on their own: every pointer into them from the code, tests, benchmarks,
recipes, README and the docs themselves names a file that exists and, after '#', a heading in it."""
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# docs/method.md#detection in code and README; method.md#detection in a link between two docs
POINTER = re.compile(r"(?:docs/|\]\()([a-z_]+\.md)(?:#([a-z0-9-]+))?")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: str) -> set:
    with open(path, encoding="utf-8") as f:
        return {slug(line.lstrip("#")) for line in f if line.startswith("#")}


def pointers() -> list:
    """(file, line number, doc name, anchor or None) of every pointer into docs/."""
    found = []
    for top in ("rewardtune", "tests", "benchmarks", "docs", "README.md"):
        root = os.path.join(REPO, top)
        paths = [root] if os.path.isfile(root) else [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
        for path in paths:
            if not path.endswith((".py", ".json", ".md")) or path.endswith("test_docs.py"):
                continue
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    found += [(os.path.relpath(path, REPO), i, name, anchor) for name, anchor in POINTER.findall(line)]
    return found


def test_slugs_follow_github():
    assert slug(" The paper's analysis") == "the-papers-analysis"
    assert slug(" Tuned vs MLE, per task") == "tuned-vs-mle-per-task"


def test_the_docs_are_pointed_at_from_the_code():
    names = {name for _, _, name, _ in pointers()}
    assert {"method.md", "design.md", "results.md"} <= names


@pytest.mark.parametrize("where,line,name,anchor", pointers())
def test_every_pointer_into_docs_resolves(where, line, name, anchor):
    path = os.path.join(REPO, "docs", name)
    assert os.path.exists(path), f"{where}:{line}: docs/{name} does not exist"
    if anchor:
        assert anchor in anchors(path), f"{where}:{line}: docs/{name} has no heading #{anchor}"
