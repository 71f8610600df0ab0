import re

import pytest

from ncsn.cli import main
from ncsn.config import DEFAULTS, load_config
from ncsn.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_file_and_overrides_apply_in_order(tmp_path):
    path = write(tmp_path, "training:\n  batch_size: 32\nmodel:\n  sigma_begin: 2\n")
    config = load_config(path, ["training.batch_size=8", "optim.lr=1e-4", "data.random_flip=true"])
    assert config["training"]["batch_size"] == 8
    assert config["model"]["sigma_begin"] == 2.0 and isinstance(config["model"]["sigma_begin"], float)
    assert config["optim"]["lr"] == 1e-4
    assert config["data"]["random_flip"] is True
    assert config["training"]["n_iters"] == DEFAULTS["training"]["n_iters"]


def test_mistyped_key_is_an_error_with_a_suggestion(tmp_path):
    path = write(tmp_path, "training:\n  batch_sise: 32\n")
    with pytest.raises(UserError, match=r"unknown config key 'training.batch_sise'.*training.batch_size"):
        load_config(path)


def test_unknown_section_and_override_are_errors(tmp_path):
    with pytest.raises(UserError, match="unknown config section 'modle'"):
        load_config(write(tmp_path, "modle:\n  ngf: 3\n"))
    with pytest.raises(UserError, match="unknown config key 'optim.learning_rate'"):
        load_config(None, ["optim.learning_rate=0.1"])
    with pytest.raises(UserError, match="section.key=value"):
        load_config(None, ["lr=0.1"])


def test_wrong_types_and_constraints_are_errors(tmp_path):
    with pytest.raises(UserError, match="training.batch_size must be int"):
        load_config(None, ["training.batch_size=abc"])
    with pytest.raises(UserError, match="data.random_flip must be bool"):
        load_config(None, ["data.random_flip=3"])
    with pytest.raises(UserError, match="sigma_begin must exceed"):
        load_config(None, ["model.sigma_begin=0.001"])
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "training: [1, 2\n"))


def test_shipped_configs_load():
    for name in ["digits", "mnist", "cifar10", "celeba"]:
        config = load_config(f"configs/{name}.yaml")
        assert config["data"]["dataset"] == name
    paper = load_config("configs/cifar10.yaml")
    assert paper["model"]["ngf"] == 128 and paper["model"]["num_classes"] == 10
    assert paper["sampling"]["step_lr"] == pytest.approx(4e-5)  # the reference code's 2e-5 in Algorithm 1's notation


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    path = write(tmp_path, "training:\n  n_iter: 5\n")
    code = main(["train", str(path), "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "training.n_iter" in err
    assert not (tmp_path / "run").exists()


def test_every_key_has_a_range_and_the_error_names_key_value_and_range():
    from ncsn.config import key_rules

    rules = key_rules()
    assert set(rules) == {f"{section}.{key}" for section, keys in DEFAULTS.items() for key in keys}
    load_config(None)  # the defaults are in range
    with pytest.raises(UserError, match=r"^config key model.ngf = -3 is out of range \(allowed: >= 1\)$"):
        load_config(None, ["model.ngf=-3"])
    for override, allowed in [("sampling.eta=1.5", "[0, 1]"), ("model.dropout=1.0", "[0, 1)"),
                              ("optim.eps=.nan", "> 0"), ("model.ch_mult=[]", "a non-empty list of integers >= 1"),
                              ("data.channels=2", "one of 1, 3"), ("training.amp=fp8", "one of off, bf16, fp16")]:
        with pytest.raises(UserError, match=re.escape(f"(allowed: {allowed})")):
            load_config(None, [override])
