"""The control corpus: lines of random letters, each line's letters said twice.

    python experiments/2026-12-03-induction-heads/random_repeats.py data/random_repeats.txt

LINES lines; each is LENGTH distinct letters drawn at random (seeded) from a-z and A-Z,
then the same letters again, then a newline. The first copy cannot be predicted beyond
chance; the second can only be predicted from the first, by looking up where the current
letter occurred and copying the letter after it: what an induction head does. A model
that forms induction heads on this text shows what the measurements of the study look
like when the phase change happens.
"""

import random
import string
import sys
from pathlib import Path

LINES, LENGTH, SEED = 50_000, 32, 0


def random_repeats(lines: int = LINES, length: int = LENGTH, seed: int = SEED) -> str:
    """``lines`` lines of ``length`` random distinct letters written twice."""
    rng = random.Random(seed)
    rows = []
    for _ in range(lines):
        letters = "".join(rng.sample(string.ascii_letters, length))
        rows.append(letters + letters)
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.write_text(random_repeats(), encoding="utf-8")
    print(f"wrote {target}: {target.stat().st_size:,} bytes")
