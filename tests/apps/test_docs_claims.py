"""Claims the docs and configs make about the code that can go stale (issue 27)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from discorep.cli import DEMO_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def test_only_the_demo_config_says_it_is_what_make_demo_runs():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(VENV\)/bin/discorep demo$", makefile, flags=re.M), \
        "make demo no longer runs `discorep demo` with its default config: update this test and the configs"
    claims = [p.name for p in sorted((ROOT / "configs").glob("*.yaml"))
              if re.search(r"^#.*what `make demo` runs:", p.read_text(), flags=re.M | re.I)]
    assert claims == [DEMO_CONFIG]
    # The package's bundled configs are the same files (discorep/configs links to configs/).
    assert (ROOT / "discorep" / "configs" / DEMO_CONFIG).read_text() == (ROOT / "configs" / DEMO_CONFIG).read_text()


def test_each_command_has_one_section_in_evaluation_md():
    headings = re.findall(r"^## (.+)$", (ROOT / "docs" / "evaluation.md").read_text(), flags=re.M)
    assert not [h for h, n in Counter(headings).items() if n > 1], headings
