"""The README's Python examples run as written (on the real embedded model)."""

import re

import dspy
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_write_your_own_program_example_runs(capsys):
    try:
        exec(compile(readme_block("### Write your own program"), "README.md", "exec"), {"__name__": "readme"})
    finally:
        dspy.configure(lm=None)  # the example configures DSPy globally
    assert capsys.readouterr().out.strip()
