"""`study --report-only` reads what is on disk: it never generates data, trains or evaluates (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

import discorep.apps.study.runner as runner
from discorep.apps.study.spec import load_study

STUDY = Path(__file__).parents[2] / "configs" / "study_cpu.yaml"


def test_report_only_touches_no_data_and_lists_what_is_missing(tmp_path, monkeypatch):
    spec = load_study(STUDY, quick=True)
    spec.out_dir, spec.demo_data = str(tmp_path / "study"), str(tmp_path / "no_demo_data")
    forbidden = lambda *a, **k: pytest.fail("--report-only generated data, trained or evaluated")  # noqa: E731
    for name in ("study_data", "pretrain", "evaluate_checkpoint", "run_baselines", "run_one"):
        monkeypatch.setattr(runner, name, forbidden)
    report = runner.run_study(spec, command="discorep study --report-only", report_only=True)
    text = Path(report).read_text()
    n_jobs = len(spec.runs) * len(spec.seeds)
    assert f"**Incomplete:** {n_jobs} (run, seed) pairs" in text
    assert not (tmp_path / "no_demo_data").exists()  # nothing generated
