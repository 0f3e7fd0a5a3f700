"""redi_megatron: Reinforcement Distillation (REDI) of reasoning LLMs on Megatron-Core."""

__version__ = "0.1.0"
