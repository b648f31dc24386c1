"""Validation loss of a checkpoint: ``python lm/evaluate.py ckpt=<path> [key=value ...]``.

Prints ``val/loss`` (mean cross-entropy, nats per token), ``val/ppl`` (exp of it) and
``val/bpb`` (bits per UTF-8 byte, comparable across tokenizers) over the same fixed
validation batches a training run evaluates (``LMDataModule.val_dataloader``).

Examples:
    python lm/evaluate.py ckpt=outputs/runs/<date>/<run>/checkpoints/best.ckpt
    python lm/evaluate.py ckpt=gpt2.ckpt data=text_file data.path=corpus.txt eval_iters=50

Keys (an unknown key or a bad value ends with one line and exit code 2):
    ckpt        a .ckpt written by lm/train.py or ``python -m lm.interop.hf import`` (required)
    data        a conf/data option; without it, the data config the checkpoint was
                trained on (from its run config)
    data.<key>  any data key, e.g. ``data.path=...``, ``data.batch_size=8``
    eval_iters  validation batches (default: the data config's ``eval_iters``)
    device      cpu | cuda (default cpu)

Text the data config did not tokenise with the checkpoint's own tokenizer (another
corpus, a char vocabulary of other text) is re-encoded with the checkpoint's tokenizer.
"""

import sys
from pathlib import Path


import tempfile

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lm.training.checkpoint import load_checkpoint
from lm.training.config import compose_config
from lm.data.corpus import DataError, load_text
from lm.data.tokens import split_text
from lm.training.module import bits_per_byte, perplexity
from lm.training.run import build_datamodule

KEYS = ("ckpt", "data", "eval_iters", "device")


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    """(``{ckpt, data, eval_iters, device}``, ``data.<key>=value`` overrides).

    Raises:
        ValueError: an argument that is not key=value, an unknown key, a bad eval_iters.
    """
    args: dict = dict.fromkeys(KEYS)
    args["device"] = "cpu"
    data_overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.startswith("data."):
            data_overrides.append(arg)
        elif sep and key in KEYS:
            args[key] = value
        else:
            raise ValueError(f"{arg!r} is not key=value with a key in {list(KEYS)} or data.<key>")
    if not args["ckpt"]:
        raise ValueError("ckpt=<path to a .ckpt> is required")
    if args["eval_iters"] is not None:
        if not args["eval_iters"].isdigit() or int(args["eval_iters"]) < 1:
            raise ValueError(f"eval_iters={args['eval_iters']} must be an integer >= 1")
        args["eval_iters"] = int(args["eval_iters"])
    return args, data_overrides


def data_config(args: dict, data_overrides: list[str], run_config: dict, block_size: int) -> DictConfig:
    """The run config that ``build_datamodule`` needs: the checkpoint's own, or one composed
    from ``data=<option>``, with the data overrides, ``eval_iters`` and the model's block_size.

    The seed (which picks the validation windows) and the data dir come from the
    checkpoint's run config when it has them, so a run's own data gives its batches.

    Raises:
        ValueError: no data config anywhere, or a bad override / missing value.
    """
    try:
        if args["data"] is None:
            if "data" not in run_config:
                raise ValueError(f"ckpt={args['ckpt']} records no data config; pass data=<option> "
                                 "(e.g. data=text_file data.path=corpus.txt)")
            cfg = OmegaConf.create(run_config)
            for override in data_overrides:
                key, _, value = override.partition("=")
                OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=False)
        else:
            cfg = compose_config([f"data={args['data']}", *data_overrides, *_carried(run_config)])
        if args["eval_iters"] is not None:
            cfg.data.eval_iters = args["eval_iters"]
        cfg.model.block_size = block_size
        OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
        return cfg
    except (OmegaConfBaseException, HydraException) as err:  # a bad key, value or option
        key = getattr(err, "full_key", None)
        raise ValueError(f"{key}: " * bool(key) + str(err).splitlines()[0]) from None


def _carried(run_config: dict) -> list[str]:
    """Overrides that keep the checkpoint's seed and data dir in a freshly composed config."""
    carried = [f"paths.output_dir={tempfile.gettempdir()}"]
    if "seed" in run_config:
        carried.append(f"seed={run_config['seed']}")
    if "data_dir" in run_config.get("paths", {}):
        carried.append(f"paths.data_dir={run_config['paths']['data_dir']}")
    return carried


def reencode_validation(dm, cfg: DictConfig, tokenizer) -> None:
    """Replace ``dm.val_ids`` by the validation text encoded with ``tokenizer``, when the
    data config's tokenizer is another one (ids would otherwise mean other tokens)."""
    if dm.tokenizer.to_dict() == tokenizer.to_dict():
        return
    text = load_text(cfg.data.source, cfg.data.get("path"), cfg.paths.data_dir)
    _, val_text = split_text(text, cfg.data.val_fraction)
    dm.val_ids = tokenizer.encode_array(val_text)
    dm.val_text_bytes = len(val_text.encode("utf-8"))
    dm.meta = {**dm.meta, "n_val": len(dm.val_ids), "val_text_bytes": dm.val_text_bytes}
    if len(dm.val_ids) < cfg.model.block_size + 1:
        raise DataError(f"the validation text has {len(dm.val_ids)} tokens with the checkpoint's "
                        f"tokenizer; model.block_size={cfg.model.block_size} needs at least "
                        f"{cfg.model.block_size + 1}")
    dm.tokenizer = tokenizer


@torch.no_grad()
def mean_loss(model: torch.nn.Module, loader, device: str) -> float:
    """Mean over batches of the per-batch mean cross-entropy (as ``LMModule`` validates)."""
    losses = [model(x.to(device), y.to(device))[1] for x, y in loader]  # each ()
    return torch.stack(losses).mean().item()


def evaluate(args: dict, data_overrides: list[str]) -> dict[str, float]:
    """``{"val/loss", "val/ppl", "val/bpb"}`` of ``args["ckpt"]`` on its validation batches.

    Raises:
        CheckpointError, DataError, ValueError: one line.
    """
    model, tokenizer, run_config = load_checkpoint(args["ckpt"], args["device"], nonfinite="error")
    cfg = data_config(args, data_overrides, run_config, model.config.block_size)
    dm = build_datamodule(cfg)
    reencode_validation(dm, cfg, tokenizer)
    loss = mean_loss(model, dm.val_dataloader(), args["device"])
    tokens_per_byte = dm.meta["n_val"] / dm.meta["val_text_bytes"]
    return {"val/loss": loss, "val/ppl": perplexity(loss), "val/bpb": bits_per_byte(loss, tokens_per_byte)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        metrics = evaluate(*parse_args(argv))
    except ValueError as err:  # CheckpointError and DataError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key, value in metrics.items():
        print(f"{key} {value:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
