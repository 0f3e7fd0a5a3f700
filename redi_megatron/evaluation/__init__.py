"""Evaluation like the paper: k sampled responses per benchmark problem, graded, reported as pass@1 ± s.e. and pass@k.

`benchmarks` reads the problem files, `prompts` frames each problem, `transformers_backend` and
`vllm_backend` sample, `generation_log` keeps what is done across restarts, `report` grades and
tabulates, and `runner.evaluate` ties them together (the `redi-megatron evaluate` command).
"""
