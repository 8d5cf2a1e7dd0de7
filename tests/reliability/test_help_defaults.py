"""`--help` says each default once, from the argument's own default (issue 27)."""

from __future__ import annotations

import argparse
import re

import pytest

from discorep import cliargs as A
from discorep.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, name: str = "discorep"):
    """(command, parser) for the top level and every subcommand, nested ones included."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _helps():
    """(command, flag, action, help as --help prints it) for every documented argument."""
    for name, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help and action.help != argparse.SUPPRESS:
                flag = "/".join(action.option_strings) or action.dest
                yield name, flag, action, " ".join(formatter._expand_help(action).split())


def _has_value(action) -> bool:
    return not (action.default is None or action.default is False or action.required
                or action.default is argparse.SUPPRESS)


def test_no_help_prints_a_default_twice_and_every_default_is_shown():
    twice, unshown, seen = [], [], 0
    for name, flag, action, text in _helps():
        seen += 1
        if len(re.findall(r"\bdefault\b", text, flags=re.I)) > 1:
            twice.append(f"discorep {name} {flag}: {text}")
        if _has_value(action) and text.count(f"(default: {action.default})") != 1:
            unshown.append(f"discorep {name} {flag}: {text}")
    assert seen > 100  # every subcommand and eval task was walked
    assert not twice, "defaults said twice:\n" + "\n".join(twice)
    assert not unshown, "a default not shown once as '(default: X)':\n" + "\n".join(unshown)


def test_prior_flag_defaults_are_the_priors_own():
    """The --prior-* flags are unset by default (the prior's own default applies): the default their help
    shows is written in cliargs, so it must be the prior registry's."""
    from discorep.data.priors.registry import resolve_params

    for flag, param, _, helptext, default in A.PRIOR_FLAGS:
        prior = helptext.split(":")[0]
        assert resolve_params(prior, {})[param] == default, f"--prior-{flag}"
    shard = dict(_parsers(build_parser()))["discorep shard"]
    text = " ".join(shard.format_help().split())
    assert "slic: number of superpixels (default: 100)" in text and "or 'none' (default: none)" in text


@pytest.mark.parametrize("task, seed_says", [
    ("objects", "k-means seed"), ("foreground", "k-means seed"), ("corloc", "k-means seed"),
    ("video", "draws nothing at random"), ("knn", "draws nothing at random"),
    ("linear", "probe's initialisation"), ("linear-seg", "head's initialisation"),
    ("retrieval", "memory bank's subset"), ("overcluster", "first k-means seed")])
def test_each_eval_says_what_its_seed_seeds(task, seed_says):
    helps = {(name, flag): text for name, flag, _, text in _helps()}
    assert seed_says in helps[(f"discorep eval {task}", "--seed")]
    size = helps[(f"discorep eval {task}", "--size")]
    if task == "video":  # frames keep their aspect (eval/video.input_shape)
        assert "short side is SIZE" in size and "SIZE x SIZE" not in size
    else:
        assert "resized to SIZE x SIZE" in size
    split = helps.get((f"discorep eval {task}", "--val-split"), "")
    assert ("corloc" not in split) and (("ImageSets/Main" in split) == (task == "corloc"))
