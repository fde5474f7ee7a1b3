"""Config validation: every error names the dotted path of the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distmeta.config import apply_overrides, config_to_dict, load_config, parse_config
from distmeta.errors import ConfigError


def test_defaults_are_the_paper_setup():
    config = parse_config({})
    assert config.task.shots == 10 and config.algorithm.inner_lr == 0.01
    assert config.train.meta_batch_size == 25 and config.train.steps == 70_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"algorithm": {"inner_lr": -0.1}}, "algorithm.inner_lr: Input should be greater than 0"),
        ({"task": {"shots": 0}}, "task.shots: Input should be greater than 0"),
        ({"train": {"stepz": 3}}, "train.stepz: unknown key"),
        ({"algorithm": {"name": "maml2"}}, "algorithm.name"),
        ({"train": {"steps": "many"}}, "train.steps: Input should be a valid integer"),
        ({"task": {"amplitude": [5, 1]}}, "amplitude must be [low, high]"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"algorithm": {"task_threads": 0}}, "algorithm.task_threads"),
        ({"engine": {"worker_resources": {"num_cpus": 0}}}, "engine.worker_resources.num_cpus"),
        ({"eval": {"ways": 5}}, "eval.ways: sinusoid tasks have no classes"),
        ({"eval": {"inner_lr": 0}}, "eval.inner_lr: Input should be greater than 0"),
    ],
)
def test_bad_values_name_the_field(raw, message):
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert message in str(error.value)


def test_overrides_are_yaml_values_at_dotted_paths():
    raw = apply_overrides(
        {"algorithm": {"name": "maml"}}, ["algorithm.inner_lr=0.5", "model.hidden=[8, 8]"]
    )
    config = parse_config(raw)
    assert config.algorithm.inner_lr == 0.5 and config.model.hidden == (8, 8)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["algorithm.inner_lr"])
    with pytest.raises(ConfigError, match="algorithm.name is a value"):
        apply_overrides({"algorithm": {"name": "maml"}}, ["algorithm.name.x=1"])


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train: {steps: -1}\n")
    with pytest.raises(ConfigError, match=r"x\.yaml.*train\.steps"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path):
    config = parse_config({"algorithm": {"name": "reptile", "inner_steps": 5}})
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    assert load_config(path) == config


@pytest.mark.parametrize("name", ["sinusoid_maml", "sinusoid_metasgd", "sinusoid_reptile"])
def test_shipped_configs_are_valid(name):
    from conftest import REPO

    load_config(REPO / "configs" / f"{name}.yaml")


def test_metasgd_as_an_algorithm_name_says_what_to_write_instead():
    with pytest.raises(ConfigError) as raised:
        parse_config({"algorithm": {"name": "metasgd"}})
    message = str(raised.value)
    assert "\n" not in message
    assert "algorithm.name: maml and algorithm.inner_rule: metasgd" in message
    assert "Value error" not in message


def test_the_algorithm_and_its_inner_rule_are_separate_choices():
    for name in ("maml", "fomaml", "reptile"):
        for rule in ("sgd", "metasgd"):
            config = parse_config({"algorithm": {"name": name, "inner_rule": rule}})
            assert (config.algorithm.name, config.algorithm.inner_rule) == (name, rule)
    with pytest.raises(ConfigError, match="algorithm.inner_rule"):
        parse_config({"algorithm": {"inner_rule": "adam"}})
    with pytest.raises(ConfigError, match="eval.inner_lr sets the rate of the sgd inner rule"):
        parse_config({"algorithm": {"inner_rule": "metasgd"}, "eval": {"inner_lr": 0.1}})


def test_step_loss_weights_need_one_weight_per_step_and_a_query_loss():
    config = parse_config({"algorithm": {"inner_steps": 2, "step_loss_weights": [1, 1]}})
    from distmeta.experiment import build_experiment

    assert build_experiment(config).algorithm.step_loss_weights == (0.5, 0.5)
    with pytest.raises(ConfigError, match="inner_steps is 2, got 3 weights"):
        parse_config({"algorithm": {"inner_steps": 2, "step_loss_weights": [1, 1, 1]}})
    with pytest.raises(ConfigError, match="reptile has no such loss"):
        parse_config({"algorithm": {"name": "reptile", "inner_steps": 1, "step_loss_weights": [1]}})
    # The joint starting point of a stream is trained from the same file as the MAML one.
    joint = {"name": "joint", "inner_steps": 2, "step_loss_weights": [1, 1]}
    assert parse_config({"algorithm": joint}).algorithm.name == "joint"
    with pytest.raises(ConfigError, match="must not all be zero"):
        parse_config({"algorithm": {"step_loss_weights": [0]}})


def test_an_unregistered_name_is_a_config_error_naming_the_field():
    """The schema admits only registered names; a section built around it (model_construct)
    still meets the registry's own check, never an implicit default."""
    from distmeta.config import AlgorithmConfig, MLPConfig
    from distmeta.experiment import build_algorithm, build_model, build_task_source

    config = parse_config({"model": {"hidden": [4]}})
    source = build_task_source(config)
    odd_model = config.model_copy(update={"model": MLPConfig.model_construct(name="resnet")})
    known = r"\(known: conv4, mlp, quadratic\)"
    with pytest.raises(ConfigError, match=r"model.name: unknown 'resnet' " + known):
        build_model(odd_model, source)
    model = build_model(config, source)
    odd = AlgorithmConfig.model_construct(**{**dict(config.algorithm), "name": "anil"})
    with pytest.raises(ConfigError, match="algorithm.name: unknown 'anil'"):
        build_algorithm(config.model_copy(update={"algorithm": odd}), model, source)
    odd = AlgorithmConfig.model_construct(**{**dict(config.algorithm), "inner_rule": "adam"})
    with pytest.raises(ConfigError, match="algorithm.inner_rule: unknown 'adam'"):
        build_algorithm(config.model_copy(update={"algorithm": odd}), model, source)


def test_every_config_field_has_its_one_line_docstring():
    """A field is documented by the string right under it (what ``--help`` readers and the
    README's config keys rely on)."""
    import ast

    import distmeta.config

    tree = ast.parse(Path(distmeta.config.__file__).read_text())
    missing = []
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        for field, after in zip(cls.body, [*cls.body[1:], None], strict=True):
            if not (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)):
                continue
            documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if not (documented and isinstance(after.value.value, str)):
                missing.append(f"{cls.name}.{field.target.id}")
    assert not missing, f"fields without a docstring: {missing}"
