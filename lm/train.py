"""Train a GPT: ``python lm/train.py [group=option ...] [key=value ...]`` (= ``lm train ...``).

The command users type most keeps working as a script. Everything lives in
``lm/training/run.py``; this file only makes ``python lm/train.py`` import the
installed package rather than the files beside it (run as a script, Python puts
``lm/`` first on ``sys.path``, where ``lm/tokenizers/`` would shadow Hugging Face's
``tokenizers``).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from lm.training.run import command

    sys.exit(command(sys.argv[1:]))
