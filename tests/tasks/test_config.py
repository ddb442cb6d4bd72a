from __future__ import annotations

import pytest

from sweepflow.config import ConfigError, load_config
from sweepflow.paths import CONF_DIR


def test_base_validates_and_flattens():
    config = load_config()
    assert config.data.path == "bundled" and config.sweep.sampler == "gp"
    flat = config.flat()
    assert flat["train.batch_size"] == "32"
    assert "sweep.space.learning_rate.low" in flat


def test_layers_compose_base_file_overrides(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("train:\n  batch_size: 8\nsweep:\n  n_trials: 7\n")
    config = load_config(exp, ["sweep.n_trials=3", "seed=1"])
    assert (config.train.batch_size, config.sweep.n_trials, config.seed) == (8, 3, 1)


def test_every_experiment_file_is_valid():
    for path in sorted((CONF_DIR / "experiments").glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize(("override", "message"), [
    ("train.batchsize=3", "unknown config key 'train.batchsize'"),
    ("train.max_epochs=many", "bad value for 'train.max_epochs'"),
    ("sweep.sampler=bayes", "bad value for 'sweep.sampler'"),
    ("train.batching=sorted", "bad value for 'train.batching'"),
    ("train.group_by_length=true", "unknown config key 'train.group_by_length'"),
    ("sweep.metric=val/f2", "bad value for 'sweep.metric'"),
    ("tokenize.max_length=0", "bad value for 'tokenize.max_length'"),
    ("sweep.space.foo={type: int, low: 1, high: 2}", "sweep.space.foo is not a train"),
    ("nonsense", "not key=value"),
])
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(overrides=[override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_local_yaml_overlays_the_experiment_file_and_overrides_win(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "base.yaml").write_text((CONF_DIR / "base.yaml").read_text())
    (conf / "local.yaml").write_text("train:\n  batch_size: 4\n  max_epochs: 3\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("train:\n  batch_size: 8\n  eval_batch_size: 16\n")
    config = load_config(exp, ["train.max_epochs=5"], conf_dir=conf)
    assert (config.train.batch_size, config.train.eval_batch_size,
            config.train.max_epochs) == (4, 16, 5)


def test_every_default_comes_from_base_yaml():
    """The models declare no defaults of their own: a key missing from base.yaml is an error,
    not a silent second default."""
    import yaml

    from sweepflow.config import validate_config

    base = yaml.safe_load((CONF_DIR / "base.yaml").read_text())
    del base["train"]["max_epochs"]
    with pytest.raises(ConfigError, match="bad value for 'train.max_epochs': Field required"):
        validate_config(base)
