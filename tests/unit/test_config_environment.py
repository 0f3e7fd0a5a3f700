"""`${VAR}` references in configs: filled from the environment, or an error naming the key."""

import glob
import os

import pytest

from redi_megatron.config import ConfigError, load_config

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def test_references_expand_with_defaults(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  path: ${SHARDS}/pairs\ntrain:\n  log_dir: ${LOGS:-runs/logs}\n")
    monkeypatch.setenv("SHARDS", "/data/tokens")
    monkeypatch.delenv("LOGS", raising=False)
    config = load_config(str(path))
    assert (config.data.path, config.train.log_dir) == ("/data/tokens/pairs", "runs/logs")


def test_an_unset_reference_names_the_key_and_variable(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("checkpoint:\n  save: ${RUN_ROOT}/ckpt\n")
    monkeypatch.delenv("RUN_ROOT", raising=False)
    with pytest.raises(ConfigError, match=r"checkpoint\.save: environment variable RUN_ROOT is not set"):
        load_config(str(path))
    # An override replaces the reference, so the variable is not needed then.
    assert load_config(str(path), ["checkpoint.save=/ckpt"]).checkpoint.save == "/ckpt"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(EXAMPLES, "*7b*.yaml"))), ids=os.path.basename)
def test_7b_configs_take_every_path_from_the_environment(path, monkeypatch):
    with open(path, encoding="utf-8") as handle:
        assert "/path/to" not in handle.read()
    for name in ("MODEL_DIR", "DATA_PATH", "RUN_ROOT"):
        monkeypatch.setenv(name, f"/{name.lower()}")
    config = load_config(path)
    assert config.model.hf_config == "/model_dir"
    assert config.data.path == "/data_path"
    for value in (config.train.log_dir, config.checkpoint.load, config.checkpoint.save):
        assert value.startswith("/run_root/")
    monkeypatch.delenv("MODEL_DIR")
    with pytest.raises(ConfigError, match="model.hf_config: environment variable MODEL_DIR"):
        load_config(path)
