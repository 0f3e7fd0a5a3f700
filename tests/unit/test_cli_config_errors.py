"""Bad configurations exit non-zero at start-up with a message naming the key and the fix."""

import os
import subprocess
import sys

import pytest

from redi_megatron.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "redi_megatron.cli", "train", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.parametrize("args,message", [
    (["model.bogus=1"], "unknown config key 'model.bogus'"),
    (["--config", "/no/such/file.yaml"], "config file not found: /no/such/file.yaml"),
    (["optim.lr=fast"], "optim.lr: expected a number"),
    (["loss.objective=ppo"], "loss.objective='ppo' is not one of"),
    (["parallel.sequence_parallel=true"], "parallel.sequence_parallel=true needs parallel.tensor >= 2"),
    (["model.num_attention_heads=6", "model.num_key_value_heads=6", "parallel.tensor=4"],
     "parallel.tensor=4 must divide the number of attention heads (6)"),
    (["model.num_layers=3", "parallel.pipeline=2", "parallel.layers_in_first_stage=1",
      "parallel.layers_in_last_stage=1"],
     "parallel.layers_in_first_stage=1 + parallel.layers_in_last_stage=1 must equal num_layers=3"),
    (["checkpoint.optimizer_format=zero"], "checkpoint.optimizer_format='zero' is not one of"),
])
def test_bad_config_exits_with_a_clear_message(args, message):
    result = _train(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_yaml_sections_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 5.0e-5\nloss:\n  objective: redi\n  alpha: 0.5\n")
    config = load_config(str(path), ["optim.lr=1e-6", "model.overrides.rope_theta=300000"])
    assert config.optim.lr == 1e-6
    assert config.loss.objective == "redi" and config.loss.alpha == 0.5
    assert config.model.overrides == {"rope_theta": 300000}


def test_unknown_section_and_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'trainer'"):
        load_config(None, ["trainer.lr=1"])
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(path))
