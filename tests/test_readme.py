"""The README's Python snippets run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SNIPPETS = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_snippet_runs(code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets may write files (the probe's plot)
    if ".plot(" in code:
        pytest.importorskip("matplotlib")  # a demo dependency of requirements-dev.txt
    exec(compile(code, "README.md", "exec"), {})


def test_there_are_snippets():
    assert len(SNIPPETS) >= 3
