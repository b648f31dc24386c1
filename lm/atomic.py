"""Files written whole or not at all: ``atomic_file``.

One helper for every file a reader must never see half-written: the downloaded corpus
(``lm/data/corpus.py``), ``run.json`` (``lm/training/record.py``) and checkpoints
(``lm/training/callbacks.py``). It sits at the top of the package, beside
``lm/errors.py``, because the data layer needs it and must not import ``lm.training``.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends, it is renamed
    onto ``path`` (with the umask's permissions, as ``open`` would give), or deleted if
    the block raised. A reader sees the old file or the new one, never half.

    Raises:
        OSError: the directory cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
