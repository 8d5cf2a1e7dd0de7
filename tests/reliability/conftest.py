"""The reliability suite writes its own results table.

Each test calls the ``outcome`` fixture with what it tried and what happened; a row counts only if the
test then passes (a failing test turns its rows into FAILED). Set ``DISCOREP_RELIABILITY_TABLE`` to a
path to get the markdown table that docs/reliability.md shows (``make reliability`` does this).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

_ROWS: list[dict] = []


@pytest.fixture
def outcome(request):
    """``outcome(kind, case, behaviour, lost="none")``: one row of the results table."""

    def record(kind: str, case: str, behaviour: str, lost: str = "none") -> None:
        _ROWS.append({"node": request.node.nodeid, "kind": kind, "case": case, "behaviour": behaviour,
                      "lost": lost, "status": "pending"})

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call" or (report.when == "setup" and report.failed):
        status = "passed" if report.passed else ("skipped" if report.skipped else "FAILED")
        for row in _ROWS:
            if row["node"] == item.nodeid and row["status"] == "pending":
                row["status"] = status


def _cell(text: str) -> str:
    """Temp paths differ per run and '|' would split a markdown cell."""
    return re.sub(r"(/tmp|/var/folders)/\S+?(?=['\s]|$)", "<tmp>", text).replace("|", "/")


def _table() -> str:
    lines = ["| kind | input or fault | outcome | data lost | test | result |", "|---|---|---|---|---|---|"]
    for row in sorted(_ROWS, key=lambda r: (r["kind"], r["node"])):
        test = row["node"].split("::")[0].replace("tests/reliability/", "")
        cells = [row["kind"], row["case"], row["behaviour"], row["lost"], test, row["status"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    failed = sum(r["status"] == "FAILED" for r in _ROWS)
    target = os.environ.get("DISCOREP_RELIABILITY_TABLE")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(_table())
    where = f", table written to {target}" if target else " (set DISCOREP_RELIABILITY_TABLE=path for the table)"
    terminalreporter.write_line(f"reliability: {len(_ROWS)} cases recorded, {failed} failed{where}")
