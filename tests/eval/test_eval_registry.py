"""The eval-task registry behind `discorep eval TASK`: one file per task, torch-free parsing, own arguments only."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from discorep.cli import main
from discorep.eval.tasks import _TASKS, eval_tasks, get_eval

BUNDLED = ["objects", "foreground", "video", "knn", "linear", "linear-seg", "overcluster", "retrieval", "corloc"]


def test_bundled_tasks_in_help_order():
    assert [t.name for t in eval_tasks()][:len(BUNDLED)] == BUNDLED
    assert get_eval("video").size == 480 and get_eval("knn").size == 224 and get_eval("objects").size == 448


def test_building_every_eval_parser_loads_no_torch():
    code = textwrap.dedent("""
        import sys
        from discorep.cli import build_parser
        from discorep.eval.tasks import eval_tasks
        build_parser(); eval_tasks()
        print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_gets_only_the_tasks_own_arguments(tmp_path, monkeypatch):
    import discorep.eval.knn as knn

    seen = {}
    monkeypatch.setattr(knn, "run", lambda **options: seen.update(options))
    (tmp_path / "t").mkdir()
    (tmp_path / "v").mkdir()
    code = main(["-v", "eval", "knn", "--checkpoint", "random:resnet18", "--train", str(tmp_path / "t"),
                 "--val", str(tmp_path / "v"), "--k", "3"])
    assert code == 0
    assert sorted(seen) == sorted(["checkpoint", "size", "features", "device", "batch_size", "seed", "out",
                                   "train", "val", "k", "temperature"])
    assert seen["k"] == 3 and seen["size"] == 224 and seen["temperature"] == 0.07


TOY = '''
"""`discorep eval toy-count`: counts words (a test's stand-in for a new eval: one file)."""
from discorep.errors import UsageError
from discorep.eval.tasks import register_eval


def add_arguments(p):
    p.add_argument("--words", required=True, help="comma-separated words")


def check(args):
    if not args.words.strip(","):
        raise UsageError("--words: give at least one word")


def run(args):
    print(f"toy-count {args.checkpoint}: {len(args.words.split(','))} words")


register_eval("toy-count", "count words", add_arguments, run, check=check, size=64)
'''


@pytest.fixture
def toy_eval(tmp_path, monkeypatch):
    (tmp_path / "toy_eval_module.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_eval_module  # noqa: F401 - registers the task

    yield
    _TASKS.pop("toy-count", None)
    sys.modules.pop("toy_eval_module", None)


def test_a_new_eval_is_one_file(toy_eval, capsys):
    assert main(["eval", "toy-count", "--checkpoint", "random:resnet18", "--words", "a,b,c"]) == 0
    assert capsys.readouterr().out.strip() == "toy-count random:resnet18: 3 words"
    assert main(["eval", "toy-count", "--checkpoint", "random:resnet18", "--words", ","]) == 2  # its check ran
    assert "--words: give at least one word" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "toy-count" in capsys.readouterr().out


def test_a_name_cannot_be_registered_twice(toy_eval):
    from discorep.eval.tasks import register_eval

    with pytest.raises(ValueError, match="already registered"):
        register_eval("toy-count", "again", lambda p: None, lambda a: None)
