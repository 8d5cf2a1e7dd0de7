"""Config mistakes through the real command line: one `error:` line naming the key, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from discorep.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

CASES = [
    ("unknown key", "r2o_cpu_demo.yaml", ["train.batch_sise=8"], ["train.batch_sise", "batch_size"]),
    ("wrong type", "r2o_cpu_demo.yaml", ["train.batch_size=eight"], ["train.batch_size", "int"]),
    ("unknown nested section", "byol_cpu_demo.yaml", ["optimizer.lr=1"], ["optimizer"]),
    ("view size not divisible by the stride", "byol_cpu_demo.yaml", ["views.size=100"], ["views.size=100", "32"]),
    ("Odin K above the feature-grid points", "odin_cpu_demo.yaml", ["method.K=100000"], ["method.K=100000"]),
    ("R2O K0 above the regions of a device batch", "r2o_cpu_demo.yaml", ["train.batch_size=1", "method.K0=500"],
     ["method.K0=500", "regions"]),
    ("region-prior method without a prior", "detcon_cpu_demo.yaml", ["data.prior=none"], ["data.prior"]),
    ("malformed override", "byol_cpu_demo.yaml", ["train.batch_size"], ["train.batch_size"]),
]


@pytest.mark.parametrize(("case", "config", "overrides", "needles"), CASES, ids=[c[0] for c in CASES])
def test_config_mistakes_give_one_line_naming_the_key(outcome, capsys, case, config, overrides, needles):
    code = main(["pretrain", "--config", str(CONFIGS / config), *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    outcome("config", f"{case} ({' '.join(overrides)})", f"exit 2: {err[:90]}")


def test_yaml_syntax_error_names_file_and_line(outcome, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: [1,\n")
    code = main(["pretrain", "--config", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(bad) in err and "line" in err, err
    outcome("config", "YAML syntax error", "exit 2 naming the file and line")
