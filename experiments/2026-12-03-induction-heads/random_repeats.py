"""The control corpus: lines of random letters, each line's letters said twice.

    python experiments/2026-12-03-induction-heads/random_repeats.py data/random_repeats.txt

LINES lines; each is k distinct letters drawn at random (seeded) from a-z and A-Z, k
uniform in [MIN_LENGTH, MAX_LENGTH], then the same letters again, then a newline. The first
copy cannot be predicted beyond chance; the second only from the first, by looking up where
the current letter occurred and copying the letter after it: what an induction head does.
The distance back to the first copy changes from line to line, so a head that attends a
fixed distance back does not solve it (with one fixed length it would: see the reading).
"""

import random
import string
import sys
from pathlib import Path

LINES, MIN_LENGTH, MAX_LENGTH, SEED = 50_000, 10, 40, 0


def random_repeats(lines: int = LINES, seed: int = SEED) -> str:
    """``lines`` lines of MIN_LENGTH..MAX_LENGTH random distinct letters written twice."""
    rng = random.Random(seed)
    rows = []
    for _ in range(lines):
        letters = "".join(rng.sample(string.ascii_letters, rng.randint(MIN_LENGTH, MAX_LENGTH)))
        rows.append(letters + letters)
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.write_text(random_repeats(), encoding="utf-8")
    print(f"wrote {target}: {target.stat().st_size:,} bytes")
