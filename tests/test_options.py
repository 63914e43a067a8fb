"""evaluate's options are declared once (heimer_mlflow.options.OPTIONS) and the four interfaces
agree with the declaration: the command line, MLproject's ``main`` (read and run through
MLflow's own entry-point code), the plug-in's ``evaluator_config`` and the keyword arguments of
``evaluate()`` (EvaluationOptions). Each test fails when one interface lacks an option the others
have, or a default differs."""

from __future__ import annotations

import dataclasses
import shlex

import pytest
import yaml
from mlflow.projects._project_spec import load_project

from heimer_mlflow import cli, options
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.options import OPTIONS, EvaluationOptions, chosen
from heimer_mlflow.plugin import HeimerEvaluator
from heimer_mlflow.watch.opt_in import read_options

from .helpers import REPO

# Arguments of the evaluate command that are not evaluate() options: the positional MODEL_URI, the
# cohort (evaluate's second argument) and the process's own time limit (heimer_mlflow.interrupts).
COMMAND_ONLY = {"help", "model_uri", "data", "timeout"}
# Hand-checked: what the text of an option becomes (int, tuple, dict, boolean, number as written).
CONVERTED = {"batch_size": ("3", 3), "feature_layers": ("body.0", ("body.0",)), "threshold": ("0.4", 0.4),
             "require": ("a>=1", ("a>=1",)), "counterfactual_subjects": ("5", 5), "skip_bad": ("true", True),
             "n_bootstrap": ("50", 50), "workers": ("0", 0), "history_metrics": ("train_loss=l", {"train_loss": "l"}),
             "class_names": ("AD,CN", "AD,CN")}  # fmt: skip
ON_COMMAND_LINE = [o for o in OPTIONS if "cli" not in o.not_in]


def _expected(option):
    """The keyword argument the option's sample becomes."""
    value = option.parse(option.sample)
    return option.collect([value]) if option.collect else value


def _cli_options() -> dict:
    """The evaluate command's arguments by destination, from the real parser."""
    commands = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in commands.choices["evaluate"]._actions}


def _main_entry_point():
    return load_project(str(REPO)).get_entry_point("main")


def _through_mlproject(user_parameters: dict) -> dict:
    """MLproject's main command as MLflow substitutes it, parsed by the command line: the options
    it hands to evaluate()."""
    command = _main_entry_point().compute_command({"model_uri": "models:/m/1", "data": "x.csv", **user_parameters},
                                                  None)  # fmt: skip
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "heimer_mlflow", "evaluate"]
    return chosen(cli.build_parser().parse_args(argv[3:]))


def test_every_declared_option_is_a_keyword_of_evaluate_with_its_default():
    fields = {f.name: f for f in dataclasses.fields(EvaluationOptions)}
    assert list(fields) == [o.name for o in OPTIONS]
    made = EvaluationOptions()
    for option in OPTIONS:
        assert getattr(made, option.name) == option.default, option.name
    assert [o.name for o in ON_COMMAND_LINE if not o.sample] == []  # each needs an example= (or choices)


def test_the_command_line_offers_every_option_and_no_other():
    offered = set(_cli_options()) - COMMAND_ONLY
    declared = {o.name for o in OPTIONS if "cli" not in o.not_in}
    assert offered == declared
    assert all(reason for o in OPTIONS for reason in o.not_in.values())  # a missing interface says why


def test_the_command_line_defaults_are_evaluates_defaults():
    args = cli.build_parser().parse_args(["evaluate", "models:/m/1", "--data", "x.csv"])
    assert chosen(args) == {}  # nothing given: every option takes the declared default
    assert EvaluationOptions(**chosen(args)) == EvaluationOptions()


@pytest.mark.parametrize("option", ON_COMMAND_LINE, ids=lambda o: o.name)
def test_each_option_given_on_the_command_line_reaches_evaluate(option):
    args = cli.build_parser().parse_args(["evaluate", "models:/m/1", "--data", "x.csv", option.cli_flag, option.sample])
    assert chosen(args) == {option.name: _expected(option)}
    assert _expected(option) != option.default


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_option_text_becomes_the_keyword_argument(name):
    text, expected = CONVERTED[name]
    args = cli.build_parser().parse_args(["evaluate", "models:/m/1", "--data", "x.csv", options.BY_NAME[name].cli_flag, text])
    assert chosen(args) == {name: expected}
    assert type(chosen(args)[name]) is type(expected)


def test_mlproject_main_is_the_declaration():
    """MLproject is YAML, so it is checked rather than made: `python -m heimer_mlflow.options`
    prints what it must say."""
    main = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]
    assert main == options.mlproject_main()
    assert set(main["parameters"]) - {"model_uri", "data"} == {o.name for o in OPTIONS if "mlproject" not in o.not_in}


def test_mlproject_defaults_reach_evaluate_as_its_defaults():
    """MLflow substitutes the YAML defaults (absent options as empty text, which the command line
    reads as absent): evaluate gets its own defaults."""
    given = _through_mlproject({})
    assert {name: options.BY_NAME[name].default for name in given} == given
    assert EvaluationOptions(**given) == EvaluationOptions()


def test_every_mlproject_parameter_reaches_its_option():
    offered = [o for o in OPTIONS if "mlproject" not in o.not_in]
    assert _through_mlproject({o.name: o.sample for o in offered}) == {o.name: _expected(o) for o in offered}
    assert _through_mlproject({"counterfactual_subjects": "16.0"})["counterfactual_subjects"] == 16.0  # a float
    assert EvaluationOptions(counterfactual_subjects=16.0).check().counterfactual_subjects == 16


def test_the_plugin_and_watch_take_every_option_and_name_an_unknown_one():
    everything = {o.name: o.default for o in OPTIONS}
    EvaluationOptions(**everything).check()
    with pytest.raises(HeimerError, match="evaluator_config has the unknown option 'treshold'"):
        HeimerEvaluator().evaluate(model_type="classifier", dataset=None, run_id=None,
                                   evaluator_config={"treshold": 0.4}, model=object())  # fmt: skip
    assert read_options("m", '{"n_bootstrap": 500}') == {"n_bootstrap": 500}
    with pytest.raises(HeimerError, match="unknown option 'treshold'"):
        read_options("m", '{"treshold": 0.4}')


def test_bad_option_text_is_one_line_from_argparse(capsys):
    for flag, text in (("--batch-size", "0"), ("--amp", "fp8"), ("--cam", "x"), ("--skip-bad", "maybe")):
        with pytest.raises(SystemExit) as exit_:
            cli.build_parser().parse_args(["evaluate", "models:/m/1", "--data", "x.csv", flag, text])
        assert exit_.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err
