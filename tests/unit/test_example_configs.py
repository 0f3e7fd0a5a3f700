"""Every example config validates (paths are placeholders; only the settings are checked)."""

import glob
import os

import pytest

from redi_megatron.config import load_config

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
CONFIGS = sorted(glob.glob(os.path.join(EXAMPLES, "*.yaml")))


def test_examples_exist():
    names = {os.path.basename(path) for path in CONFIGS}
    for stem in ("1.5b_sft", "1.5b_redi", "1.5b_dpo", "1.5b_simpo", "1.5b_symmetric", "7b_sft", "7b_redi"):
        assert f"qwen2.5_math_{stem}.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_example_config_validates(path, monkeypatch):
    for name in ("MODEL_DIR", "DATA_PATH", "RUN_ROOT"):  # the 7B configs' ${...} knobs
        monkeypatch.setenv(name, f"/{name.lower()}")
    config = load_config(path)
    assert config.checkpoint.save_interval == 200
    assert config.optim.clip_grad == 1.0
    assert config.model.overrides == {"rope_theta": 300000, "max_position_embeddings": 32768}
    if config.loss.objective == "redi":
        assert config.loss.alpha == 0.8 and config.optim.lr == 1e-6
    # Packing drops no sample that the paper's seq_length filter keeps: a pair needs both traces.
    documents = 1 if config.loss.objective == "sft" else 2
    assert config.data.pack_tokens >= documents * config.data.seq_length
    if "_7b_" in path:
        # 28 query heads and 4 KV groups: TP must divide both.
        assert 28 % config.parallel.tensor == 0 and 4 % config.parallel.tensor == 0
