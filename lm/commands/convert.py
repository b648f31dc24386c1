"""``lm convert``: Hugging Face GPT-2 directories <-> ``lm`` checkpoints.

    lm convert direction=import hf_dir=<dir> ckpt=<out.ckpt>   # a checkpoint lm generate reads
    lm convert direction=export ckpt=<in.ckpt> hf_dir=<dir>    # a directory from_pretrained reads

Settings: ``conf/convert.yaml``. The directory's files are read and written by
``lm/interop/hf.py``; an error is one line naming the file, exit code 2.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from lm.checkpoint import checkpoint_dict, load_checkpoint
from lm.interop.hf import (
    HF_TOKENIZER_FILES,
    LM_TOKENIZER_FILE,
    export_hf_gpt2,
    load_hf_gpt2,
    tokenizer_source,
)
from lm.tokenizers import BPETokenizer


@dataclass
class ConvertConfig:
    """The settings of ``lm convert``: their types. Meaning: ``conf/convert.yaml``."""

    direction: str
    hf_dir: str
    ckpt: str


def convert_command(cfg: ConvertConfig) -> int:
    """``lm convert``: import (``hf_dir`` -> ``ckpt``) or export (``ckpt`` -> ``hf_dir``);
    print what was written.

    Raises:
        ValueError: one line: an unknown direction, a directory or checkpoint that
            cannot be read (an import also needs a tokenizer: lm_tokenizer.json or
            vocab.json + merges.txt), or a destination that cannot be written.
    """
    if cfg.direction not in ("import", "export"):
        raise ValueError(f"direction={cfg.direction} is invalid: must be import (hf_dir -> "
                         "ckpt) or export (ckpt -> hf_dir)")
    try:
        if cfg.direction == "import":
            print(import_command(cfg.hf_dir, cfg.ckpt))
        else:
            print(export_command(cfg.ckpt, cfg.hf_dir))
    except OSError as err:  # CheckpointError is a ValueError, raised as it is
        raise ValueError(f"{err.filename or cfg.hf_dir}: {err.strerror or err}") from None
    return 0


def import_command(hf_dir: str, out: str) -> str:
    """Write the checkpoint ``out`` from the GPT-2 directory ``hf_dir``; return the line to print.

    Raises:
        ValueError: one line: as ``load_hf_gpt2``, or ``hf_dir`` has no tokenizer files.
    """
    model, tokenizer = load_hf_gpt2(hf_dir)
    if tokenizer is None:
        raise ValueError(f"{hf_dir} has no tokenizer: a checkpoint needs {LM_TOKENIZER_FILE} "
                         f"(written by lm convert direction=export) or GPT-2's "
                         f"{' + '.join(HF_TOKENIZER_FILES)}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_dict(model, tokenizer, {"init_from": str(hf_dir)}), out)
    kind = tokenizer.to_dict()["type"]
    return (f"wrote {out} ({model.num_params():,} parameters, vocab {model.config.vocab_size}, "
            f"{kind} tokenizer from {tokenizer_source(Path(hf_dir))})")


def export_command(ckpt: str, hf_dir: str) -> str:
    """Write the GPT-2 directory ``hf_dir`` from the checkpoint ``ckpt``; return the line to print.

    Raises:
        ValueError: one line: as ``load_checkpoint`` and ``export_hf_gpt2``.
    """
    model, tokenizer, _ = load_checkpoint(ckpt, nonfinite="warn")  # exported as they are
    export_hf_gpt2(model, hf_dir, tokenizer)
    files = ["config.json", "model.safetensors", LM_TOKENIZER_FILE]
    kind = tokenizer.to_dict()["type"]
    if isinstance(tokenizer, BPETokenizer):
        return f"wrote {hf_dir} ({', '.join(files + list(HF_TOKENIZER_FILES))})"
    return (f"wrote {hf_dir} ({', '.join(files)}; no {' + '.join(HF_TOKENIZER_FILES)}: "
            f"GPT-2's tokenizer files hold only BPE, this is a {kind} tokenizer)")

