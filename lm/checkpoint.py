"""Load a trained model from a checkpoint alone.

A checkpoint written by ``lm/train.py`` carries the model weights (``state_dict``,
keys prefixed ``model.``), the model config, the tokenizer and the resolved run
config, so nothing else is needed. Loaded with ``weights_only=True``: a checkpoint
is data, never code.

``load_checkpoint`` is the one loader every tool uses (``lm generate``, ``lm evaluate``,
``lm convert direction=export``, ``lm generate backend=numpy``):
it checks the file before any model is built or run, so a bad file is one
``CheckpointError`` line naming the path, what is wrong and what was expected.
``resume_step`` tells the registry whether a training checkpoint can be resumed from.

An adapter run's checkpoint (``adapter=lora|qlora``) holds only the adapter weights,
their config and the base it adapts (``adapter``: ``{"config", "init_from",
"weights_sha256"}``); ``load_checkpoint`` rebuilds the base from ``init_from``, checks
its weights' SHA-256, and applies the adapters. The same content saved as safetensors
(``checkpoints/adapter.safetensors``, configs in its metadata) loads the same way.
"""

import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lm.adapters.build import adapter_state, apply_adapter
from lm.atomic import atomic_file
from lm.errors import first_line
from lm.model import GPT, GPTConfig
from lm.tokenizers import Tokenizer, tokenizer_from_dict

REQUIRED_KEYS = ("state_dict", "model_config", "tokenizer")
NONFINITE = ("warn", "error")  # what load_checkpoint does with NaN/Inf weights
MAX_NAMED = 3  # keys named in one error line; the rest are counted


class CheckpointError(ValueError):
    """A checkpoint path that is missing, unreadable or not written by lm/train.py."""


def load_checkpoint(
    path: str | Path, device: str = "cpu", nonfinite: str = "warn"
) -> tuple[GPT, Tokenizer, dict]:
    """(model in eval mode, tokenizer, resolved run config) from a Lightning checkpoint.

    Checked, in order: the file exists and is not empty; it unpickles (weights only)
    to a dict with ``state_dict``, ``model_config`` and ``tokenizer``; the model config
    and the tokenizer rebuild; the weights have exactly the names and shapes of that
    config's model (compared on the meta device, before any memory is allocated); the
    tokenizer's ids fit the model's vocabulary; every weight is finite.

    Args:
        path: a ``.ckpt`` file.
        device: ``cpu`` or ``cuda[:N]``.
        nonfinite: NaN/Inf weights: ``"warn"`` loads them with one ``warning:`` line on
            stderr (the file is data: exporting it keeps it as it is); ``"error"`` refuses
            (generating or evaluating with them gives garbage).

    Raises:
        CheckpointError: one line naming the path, what is wrong and what was expected.
        ValueError: a device that is not cpu or an available cuda.
    """
    check_device(device)
    path = Path(path)
    ckpt = read_checkpoint(path, device)
    config = model_config(ckpt, path)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    tokenizer = checkpoint_tokenizer(ckpt, path, config)
    check_finite(state, path, nonfinite)
    if ckpt.get("adapter") is not None:
        model = adapted_model(ckpt["adapter"], state, config, path, device)
    else:
        problems = state_problems(expected_shapes(config), state)
        if problems:
            raise CheckpointError(f"ckpt={path}: its weights do not fit its model_config "
                                  f"({describe_config(config)}): {problems}")
        model = GPT(config)
        model.load_state_dict(state)
    model.to(device).eval()
    return model, tokenizer, ckpt.get("run_config") or {}


def adapted_model(adapter: dict, state: dict, config: GPTConfig, path: Path,
                  device: str) -> GPT:
    """The base model of an adapter checkpoint (``adapter["init_from"]``, whose weights
    must still have SHA-256 ``adapter["weights_sha256"]``) with the adapters
    ``adapter["config"]`` applied and their weights ``state`` loaded.

    Raises:
        CheckpointError: the base is missing, changed or does not fit; the adapter
            weights do not fit the adapter config.
    """
    base_path = adapter.get("init_from")
    try:
        base, _, _ = load_checkpoint(base_path, device, nonfinite="error")
    except (CheckpointError, TypeError) as err:
        raise CheckpointError(f"ckpt={path} is an adapter checkpoint whose base model "
                              f"init_from={base_path} cannot be loaded: {err}") from None
    digest = weights_sha256(base.state_dict())
    if digest != adapter.get("weights_sha256"):
        raise CheckpointError(f"ckpt={path}: its base model init_from={base_path} has changed "
                              f"(weights SHA-256 {digest[:12]}..., expected "
                              f"{str(adapter.get('weights_sha256'))[:12]}...)")
    if asdict(base.config) != asdict(config):
        raise CheckpointError(f"ckpt={path}: its model_config differs from its base's "
                              f"({describe_config(base.config)})")
    base = base.to("cpu").train()  # apply_adapter quantises on the CPU
    apply_adapter(base, adapter.get("config"))
    expected = {k: tuple(v.shape) for k, v in adapter_state(base.state_dict()).items()}
    if problems := state_problems(expected, state):
        raise CheckpointError(f"ckpt={path}: its adapter weights do not fit its adapter "
                              f"config: {problems}")
    base.load_state_dict(state, strict=False)
    return base


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model's weights: each tensor's name, dtype, shape and bytes, in
    sorted name order (``model.`` prefixes dropped). Two checkpoints with the same
    weights share it whatever else they hold (optimizer state, metrics, step)."""
    digest = hashlib.sha256()
    for name in sorted(state, key=lambda k: k.removeprefix("model.")):
        tensor = state[name].detach().cpu().contiguous()
        header = f"{name.removeprefix('model.')}|{tensor.dtype}|{tuple(tensor.shape)}|"
        digest.update(header.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


_weights_digests: dict[tuple, str] = {}


def checkpoint_weights_sha256(path: str | Path) -> str | None:
    """``weights_sha256`` of a checkpoint file's ``state_dict`` (None if it cannot be
    read); cached per (path, size, mtime) within the process."""
    path = Path(path).expanduser()
    try:
        key = (str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)
        if key not in _weights_digests:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            _weights_digests[key] = weights_sha256(ckpt["state_dict"])
    except Exception:  # noqa: BLE001 - unreadable: validate says why in its own line
        return None
    return _weights_digests[key]


def checkpoint_dict(model: GPT, tokenizer: Tokenizer, run_config: dict | None = None) -> dict:
    """A dict ``load_checkpoint`` reads: weights under ``model.``, configs, tokenizer."""
    return {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "model_config": asdict(model.config),
        "tokenizer": tokenizer.to_dict(),
        "run_config": run_config or {},
    }


# The checkpoint keys an adapter's safetensors file keeps in its metadata, as JSON.
ADAPTER_METADATA = ("adapter", "model_config", "tokenizer", "run_config")


def save_adapter_safetensors(ckpt: dict, path: str | Path) -> None:
    """Write an adapter checkpoint's weights (``model.`` names) to ``path`` as
    safetensors, with ``ADAPTER_METADATA`` as JSON strings in its metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt["state_dict"].items()}
    metadata = {key: json.dumps(ckpt.get(key)) for key in ADAPTER_METADATA}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_adapter_safetensors(path: Path) -> dict:
    """The checkpoint dict of an adapter ``.safetensors`` file (``save_adapter_safetensors``).

    Raises:
        CheckpointError: not a safetensors file, or one without lm's adapter metadata.
    """
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        ckpt = {key: json.loads(metadata[key]) for key in ADAPTER_METADATA}
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"ckpt={path} is not an adapter file written by lm train "
                              f"(expected safetensors with metadata {', '.join(ADAPTER_METADATA)}: "
                              f"{first_line(err)})") from None
    return {**ckpt, "state_dict": state}


def check_device(device: str) -> None:
    """Raise ``ValueError`` (one line) unless ``device`` is cpu or an available cuda."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is invalid: must be cpu or cuda (cuda:N for GPU N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} is invalid here: no CUDA GPU is visible "
                         "(use device=cpu)")


def read_checkpoint(path: Path, device: str) -> dict:
    """The unpickled checkpoint dict, with its required keys present (CheckpointError)."""
    if path.is_dir():
        raise CheckpointError(f"ckpt={path} is a directory (pass a .ckpt file from its "
                              "checkpoints/ dir, e.g. checkpoints/best.ckpt)")
    if not path.is_file():
        raise CheckpointError(f"ckpt={path} does not exist (pass a .ckpt file from a run's "
                              "checkpoints/ dir, e.g. "
                              "outputs/runs/<date>/<run>/checkpoints/best.ckpt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"ckpt={path} is empty (0 bytes; an interrupted copy or save?): "
                              "expected a checkpoint written by lm/train.py")
    if path.suffix == ".safetensors":
        return read_adapter_safetensors(path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to a user
        raise CheckpointError(f"ckpt={path} could not be loaded as a torch checkpoint: "
                              f"{first_line(err)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"ckpt={path} holds a Python {type(ckpt).__name__}, not a "
                              f"checkpoint: expected a dict with {', '.join(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"ckpt={path} was not written by lm/train.py (no "
                              f"{', '.join(missing)}; expected {', '.join(REQUIRED_KEYS)})")
    for key, kind in (("state_dict", dict), ("model_config", dict), ("tokenizer", dict),
                      ("run_config", (dict, type(None)))):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"ckpt={path}: {key} is a {type(ckpt.get(key)).__name__}, "
                                  "expected a dict")
    if not all(isinstance(k, str) for k in ckpt["state_dict"]):
        raise CheckpointError(f"ckpt={path}: state_dict has keys that are not weight names "
                              "(expected str keys such as model.transformer.wte.weight)")
    return ckpt


def model_config(ckpt: dict, path: Path) -> GPTConfig:
    """``GPTConfig(**ckpt["model_config"])``, or CheckpointError naming the bad key."""
    try:
        config = GPTConfig(**ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"ckpt={path}: model_config is not a valid model config: "
                              f"{first_line(err)}") from None
    if config.vocab_size is None:
        raise CheckpointError(f"ckpt={path}: model_config has vocab_size=None (expected the "
                              "tokenizer's vocabulary size)")
    return config


def describe_config(config: GPTConfig) -> str:
    return (f"n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
            f"vocab_size={config.vocab_size}, block_size={config.block_size}")


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Weight name -> shape of ``GPT(config)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = GPT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def state_problems(expected: dict[str, tuple[int, ...]], state: dict) -> str:
    """What keeps ``state`` from loading into a model with weights ``expected`` (name ->
    shape), as one line: missing, unexpected, not a tensor, shape mismatch (both
    shapes); "" when it fits."""
    own = set(expected)
    not_tensor = sorted(k for k in own & set(state) if not isinstance(state[k], torch.Tensor))
    shapes = [f"{k} {tuple(state[k].shape)} vs model {expected[k]}" for k in expected
              if isinstance(state.get(k), torch.Tensor) and tuple(state[k].shape) != expected[k]]
    groups = [("missing", sorted(own - set(state))), ("unexpected", sorted(set(state) - own)),
              ("not a tensor", not_tensor), ("shape mismatch", shapes)]
    return "; ".join(f"{label}: {named(keys)}" for label, keys in groups if keys)


def named(keys: list[str]) -> str:
    """The first ``MAX_NAMED`` keys, then how many more."""
    more = len(keys) - MAX_NAMED
    return ", ".join(keys[:MAX_NAMED]) + (f" (and {more} more)" if more > 0 else "")


def checkpoint_tokenizer(ckpt: dict, path: Path, config: GPTConfig) -> Tokenizer:
    """The checkpoint's tokenizer, whose ids must all be rows of the model's embedding."""
    try:
        tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"ckpt={path}: its tokenizer cannot be rebuilt: "
                              f"{first_line(err)}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"ckpt={path}: its tokenizer has {tokenizer.vocab_size} tokens but "
                              f"model_config vocab_size={config.vocab_size} (expected >= the "
                              "tokenizer's)")
    return tokenizer


def check_finite(state: dict[str, torch.Tensor], path: Path, nonfinite: str) -> None:
    """Warn (one stderr line) or raise CheckpointError when a weight holds NaN or Inf."""
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite={nonfinite!r} must be one of {list(NONFINITE)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if not bad:
        return
    what = f"ckpt={path} has NaN/Inf weights in {len(bad)} tensor(s) ({named(bad)})"
    if nonfinite == "error":
        raise CheckpointError(f"{what}: its output would be garbage; use an earlier "
                              "checkpoint of the run (expected finite weights)")
    print(f"warning: {what}; loaded as they are", file=sys.stderr)


def resume_step(path: str | Path) -> tuple[int | None, str | None]:
    """(the global step a training checkpoint was written at, None), or (None, why it
    cannot be resumed from: unreadable, not a training checkpoint, non-finite weights)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the same
        return None, f"unreadable ({type(err).__name__}: {first_line(err)})"
    if not isinstance(ckpt, dict) or not {"state_dict", "global_step"} <= ckpt.keys():
        return None, "not a training checkpoint (no state_dict or global_step)"
    bad = [k for k, v in ckpt["state_dict"].items()
           if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    return (None, f"non-finite weights ({bad[0]})") if bad else (int(ckpt["global_step"]), None)
