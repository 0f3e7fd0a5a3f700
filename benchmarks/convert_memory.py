"""Peak RSS and time of HF -> Megatron -> HF conversion of a random ~0.5B Qwen2 (Qwen2.5-0.5B shape).

The random model is written straight to sharded safetensors with the streaming writer (building
it in transformers would cost minutes and twice its size), then each converter runs as its own
process while this one samples the RSS of the converter's whole process tree.

    python benchmarks/convert_memory.py --work /tmp/convert_bench [--dtype bf16]
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import psutil
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from redi_megatron.qwen import state_dict_mapping as mapping  # noqa: E402
from redi_megatron.qwen.architecture import architecture_from_hf_config  # noqa: E402
from redi_megatron.qwen.hf_checkpoint_io import (ShardedSafetensorsWriter, TensorSpec,  # noqa: E402
                                                 write_json)

QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "intermediate_size": 4864, "vocab_size": 151936, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "max_position_embeddings": 32768, "tie_word_embeddings": True,
    "hidden_act": "silu", "torch_dtype": "bfloat16",
}


def write_random_model(directory: str, dtype: torch.dtype) -> int:
    """Returns the bytes of a random Qwen2.5-0.5B-shaped model written to ``directory``."""
    arch = architecture_from_hf_config(QWEN25_05B)
    specs = [TensorSpec(name, dtype, shape) for group in mapping.tensor_groups(arch)
             for name, shape in mapping.hf_shapes(arch, group).items()]
    os.makedirs(directory)
    writer = ShardedSafetensorsWriter(directory, specs, max_shard_bytes=400 * 1024**2)
    for spec in specs:
        writer.write(spec.name, (torch.randn(spec.shape) * 0.02).to(dtype))
    writer.close()
    write_json(os.path.join(directory, "config.json"), QWEN25_05B)
    return sum(spec.nbytes for spec in specs)


def measure(command) -> tuple:
    """Returns (seconds, peak RSS of the converter process, peak summed RSS of its tree) in bytes.

    Sampled every 50 ms. The tree sum counts megatron's forked checkpoint writers, whose pages
    are mostly shared copy-on-write with the converter, so it overstates real use.
    """
    started = time.time()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    main_peak = tree_peak = 0
    while process.poll() is None:
        try:
            main_peak = max(main_peak, process.memory_info().rss)
            members = [process] + process.children(recursive=True)
            tree_peak = max(tree_peak, sum(p.memory_info().rss for p in members))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(process.stderr.read().decode()[-3000:])
    return time.time() - started, main_peak, tree_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/convert_bench")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    shutil.rmtree(args.work, ignore_errors=True)
    hf, ckpt, back = (os.path.join(args.work, name) for name in ("hf", "ckpt", "hf_back"))
    size = write_random_model(hf, dtype)
    print(f"model: {size / 1e9:.2f} GB of {args.dtype} tensors (Qwen2.5-0.5B shape)")
    tools = os.path.join(ROOT, "tools")
    for label, command in (
        ("hf->megatron", [sys.executable, f"{tools}/convert_hf_to_megatron.py", "--hf", hf,
                          "--out", ckpt]),
        ("megatron->hf", [sys.executable, f"{tools}/convert_megatron_to_hf.py", "--ckpt", ckpt,
                          "--out", back]),
    ):
        seconds, largest, tree = measure(command)
        print(f"{label}: {seconds:.1f} s, peak RSS {largest / 1e9:.2f} GB "
              f"({largest / size:.2f}x model), process-tree peak {tree / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
