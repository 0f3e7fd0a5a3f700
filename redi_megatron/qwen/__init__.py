"""The Qwen2 / Qwen2.5 model family on Megatron-Core."""
