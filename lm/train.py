"""Train a GPT: ``python lm/train.py [group=option ...] [key=value ...]`` (= ``lm train ...``).

The command users type most keeps working as a script, as ``lm train``: the same
dispatch (``lm.cli.main``), and the same rule for where modules import from
(``lm.cli.import_from_working_dir``: the working directory, as for ``lm`` and
``python -m lm``). Python runs this file with ``lm/`` first on ``sys.path``, where
``lm/tokenizers/`` would shadow Hugging Face's ``tokenizers``; the rule replaces it, once
``lm`` itself is imported from this checkout.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # this checkout's lm, installed or not
    from lm.cli import import_from_working_dir, main

    import_from_working_dir()
    sys.exit(main(["train", *sys.argv[1:]]))
