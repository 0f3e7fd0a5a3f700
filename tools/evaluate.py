"""Sample k responses per benchmark problem from a checkpoint, grade them, write the paper-style table.

Same as `redi-megatron evaluate`; see `python tools/evaluate.py --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redi_megatron.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
