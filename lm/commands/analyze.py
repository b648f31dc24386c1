"""Look inside a checkpoint: ``lm analyze ckpt=<path> kind=<kind> [key=value ...]``.

Kinds (``conf/analyze.yaml`` says what each key means):
    attention   one figure per layer of every head's pattern, token labels on the axes
    logit_lens  the residual stream after each layer read through ln_f and the unembedding
    patching    clean -> corrupted activation patching (resid_pre by layer and position, and
                each head's output), scored by a logit difference
    dla         direct logit attribution of each head, MLP and embedding to a target token
    heads       previous-token, duplicate-token and induction scores of every head
    cache       the activations at chosen hook points, saved as safetensors

Each writes PNG figures and a ``.csv`` + ``.md`` table to ``out`` (every file replaced
whole), prints a short summary and the paths. Bad input (an unknown kind or hook name, a
target that is not one token, prompts of different lengths for patching, a prompt longer
than block_size, a checkpoint without a model) is one line and exit code 2.

Examples:
    lm analyze ckpt=<ckpt> kind=attention random_tokens=20
    lm analyze ckpt=<ckpt> kind=logit_lens prompt="First Citizen:"
    lm analyze ckpt=<ckpt> kind=heads prompt_file=some_text.txt
"""

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from safetensors.torch import save_file

from lm.analysis.interp.attribution import direct_logit_attribution
from lm.analysis.interp.heads import KINDS as HEAD_KINDS
from lm.analysis.interp.heads import mean_head_scores
from lm.analysis.interp.lens import logit_lens
from lm.analysis.interp.patching import activation_patching
from lm.analysis.interp.plots import (
    MAX_LABELS,
    dla_figure,
    head_scores_figure,
    lens_figure,
    patching_figure,
)
from lm.analysis.interp.tokens import (
    encode_prompt,
    plain_vocab,
    repeated_random_tokens,
    single_token,
)
from lm.atomic import atomic_file
from lm.checkpoint import load_checkpoint
from lm.commands.generate import read_prompt
from lm.hooks.forward import AttentionImages
from lm.model import GPT
from lm.tokenizers import Tokenizer, token_labels

ANALYSES = ("attention", "logit_lens", "patching", "dla", "heads", "cache")
TOP_ROWS = 10  # rows of a table printed to the terminal (the files hold all of them)


@dataclass
class AnalyzeConfig:
    """The settings of ``lm analyze``: their types. Defaults, meaning and ranges:
    ``conf/analyze.yaml``."""

    ckpt: str
    kind: str
    prompt: str
    prompt_file: str | None
    prompt_corrupt: str | None
    target: str | None
    contrast: str | None
    random_tokens: int | None
    layers: list[int] | None
    names: str
    seed: int
    out: str
    device: str


def check_config(cfg: AnalyzeConfig) -> None:
    """Raise ``ValueError`` (one line) for an unknown kind or a key the kind needs missing."""
    if cfg.kind not in ANALYSES:
        raise ValueError(f"kind={cfg.kind!r} must be one of {list(ANALYSES)}")
    if cfg.kind == "patching" and None in (cfg.prompt_corrupt, cfg.target, cfg.contrast):
        raise ValueError("kind=patching needs prompt_corrupt=, target= and contrast= (the "
                         "score is logit[target] - logit[contrast] at the last token)")
    if cfg.random_tokens is not None and cfg.kind not in ("attention", "heads"):
        raise ValueError(f"random_tokens={cfg.random_tokens} applies to kind=attention or "
                         f"kind=heads, not kind={cfg.kind}")


class Output:
    """The files one analysis writes into ``out``, each replaced whole (``atomic_file``)."""

    def __init__(self, out: str) -> None:
        self.dir = Path(out)
        self.written: list[Path] = []

    def figure(self, name: str, fig: Figure) -> None:
        """``fig`` as ``<out>/<name>.png``."""
        with atomic_file(self.dir / f"{name}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        self.written.append(self.dir / f"{name}.png")

    def table(self, name: str, header: Sequence[str], rows: Sequence[Sequence], title: str) -> None:
        """``rows`` as ``<out>/<name>.csv`` and a markdown table ``<out>/<name>.md``."""
        with atomic_file(self.dir / f"{name}.csv") as tmp, open(tmp, "w", newline="",
                                                                   encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
        lines = [f"# {title}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        with atomic_file(self.dir / f"{name}.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.written += [self.dir / f"{name}.csv", self.dir / f"{name}.md"]


def _cell(value) -> str:
    """A markdown cell: floats to 4 significant digits, pipes escaped."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def prompt_tensor(cfg: AnalyzeConfig, tokenizer: Tokenizer, block_size: int) -> torch.Tensor:
    """(T,) int64 ids of the prompt (or the repeated random sequence); T <= block_size."""
    if cfg.random_tokens is not None:
        ids = repeated_random_tokens(plain_vocab(tokenizer), cfg.random_tokens, cfg.seed)
        if len(ids) > block_size:
            raise ValueError(f"random_tokens={cfg.random_tokens} makes {len(ids)} tokens, more "
                             f"than the model's block_size={block_size}; at most {block_size // 2}")
        return torch.tensor(ids)
    return torch.tensor(encode_prompt(tokenizer, read_prompt(cfg), block_size))


def analyze_attention(model: GPT, tokenizer: Tokenizer, cfg: AnalyzeConfig, out: Output) -> None:
    """One figure per layer (``attention_blocks.{i}.png``) and every weight in a table."""
    ids = prompt_tensor(cfg, tokenizer, model.config.block_size)
    layers = list(range(model.config.n_layer)) if cfg.layers is None else cfg.layers
    names = model.hook_names([f"blocks.{i}.attn.hook_pattern" for i in layers])
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], names)
    labels = token_labels(tokenizer, ids)
    source = "repeated random tokens" if cfg.random_tokens is not None else "the prompt"
    rows = []
    for name, pattern in cache.items():  # (1, H, T, T)
        layer = name.split(".")[1]
        images = AttentionImages(layers=[int(layer)], max_tokens=len(ids))
        images.max_labels = MAX_LABELS  # a figure on disk may be larger than a TensorBoard image
        figure = images.figure({name: pattern}, labels, title=f"attention weights of blocks."
                               f"{layer}, {source} ({len(ids)} tokens); row = query, column = key")
        out.figure(f"attention_blocks.{layer}", figure)
        for h, q, k in torch.nonzero(torch.ones_like(pattern[0]).tril()).tolist():
            rows.append((f"blocks.{layer}", h, q, k, labels[q], labels[k],
                         round(float(pattern[0, h, q, k]), 6)))
    out.table("attention", ("layer", "head", "query_pos", "key_pos", "query_token", "key_token",
                            "weight"), rows, f"attention weights, {source}")
    print(f"attention of {len(names)} layers x {model.config.n_head} heads on {len(ids)} tokens "
          f"({source})")


def analyze_logit_lens(model: GPT, tokenizer: Tokenizer, cfg: AnalyzeConfig, out: Output) -> None:
    """The logit lens: p and rank of each position's target per layer; top tokens."""
    ids = prompt_tensor(cfg, tokenizer, model.config.block_size)
    lens = logit_lens(model, ids)
    last = single_token(tokenizer, cfg.target, "target") if cfg.target is not None else None
    targets = torch.cat([ids[1:], torch.tensor([-1])])  # each position's next prompt token
    if last is not None:
        targets[-1] = last
    scored = targets >= 0  # the last position has a target only when one is named
    probs = lens.log_probs().exp()  # (L + 1, T, V)
    top = probs.argmax(-1)  # (L + 1, T)
    target_p = probs.gather(-1, targets.clamp(min=0).expand(len(lens.labels), -1)[..., None])[..., 0]
    target_p[:, ~scored] = float("nan")
    ranks = lens.rank(targets.clamp(min=0))
    labels = token_labels(tokenizer, ids)
    top_labels = [token_labels(tokenizer, row) for row in top]
    rows = [(row, t, labels[t], token_labels(tokenizer, [int(targets[t])])[0] if scored[t] else "",
             top_labels[r][t], round(float(probs[r, t, top[r, t]]), 6),
             round(float(target_p[r, t]), 6) if scored[t] else "", int(ranks[r, t]) if scored[t] else "")
            for r, row in enumerate(lens.labels) for t in range(len(ids))]
    out.table("logit_lens", ("layer", "position", "token", "target", "top_token", "top_p",
                             "target_p", "target_rank"), rows,
              "logit lens: each layer's residual stream through ln_f and the unembedding")
    title = ("logit lens: p(next prompt token" + (f"; last: {cfg.target!r}" if last is not None
             else "") + ") per layer; cells: the layer's top token")
    out.figure("logit_lens", lens_figure(target_p, top_labels, lens.labels, labels, title))
    print(f"logit lens at the last position ('{labels[-1]}'):")
    for r, row in enumerate(lens.labels):
        line = f"  {row:<10} top '{top_labels[r][-1]}' p={float(probs[r, -1, top[r, -1]]):.3f}"
        if last is not None:
            line += f"   target {cfg.target!r} p={float(target_p[r, -1]):.3f} rank {int(ranks[r, -1])}"
        print(line)


def analyze_patching(model: GPT, tokenizer: Tokenizer, cfg: AnalyzeConfig, out: Output) -> None:
    """Activation patching of resid_pre and of each head's output, clean -> corrupted."""
    block_size = model.config.block_size
    clean = torch.tensor(encode_prompt(tokenizer, read_prompt(cfg), block_size))
    corrupt = torch.tensor(encode_prompt(tokenizer, cfg.prompt_corrupt, block_size,
                                         key="prompt_corrupt"))
    target = single_token(tokenizer, cfg.target, "target")
    contrast = single_token(tokenizer, cfg.contrast, "contrast")
    result = activation_patching(model, clean, corrupt, target, contrast)
    labels = token_labels(tokenizer, corrupt)
    rows = [("resid_pre", f"blocks.{i}", t, labels[t], round(float(v), 6),
             round(float(result.recovered(v)), 6))
            for i, row in enumerate(result.resid_pre) for t, v in enumerate(row)]
    rows += [("head_out", f"blocks.{i}", h, f"head{h}", round(float(v), 6),
              round(float(result.recovered(v)), 6))
             for i, row in enumerate(result.heads) for h, v in enumerate(row)]
    out.table("patching", ("patched", "layer", "index", "label", "logit_diff", "recovered"), rows,
              f"activation patching, score logit[{cfg.target!r}] - logit[{cfg.contrast!r}]; "
              f"clean {result.clean:.4f}, corrupted {result.corrupt:.4f}")
    gap = result.clean != result.corrupt
    scale = "recovered: (patched - corrupt) / (clean - corrupt)" if gap else "logit difference"
    show = (result.recovered if gap else lambda x: x)
    title = (f"activation patching: logit[{cfg.target!r}] - logit[{cfg.contrast!r}], clean "
             f"{result.clean:.2f}, corrupted {result.corrupt:.2f}")
    out.figure("patching", patching_figure(show(result.resid_pre), show(result.heads), labels,
                                           title, scale))
    print(f"logit[{cfg.target!r}] - logit[{cfg.contrast!r}]: clean {result.clean:.4f}, "
          f"corrupted {result.corrupt:.4f}")
    best = sorted(rows, key=lambda r: -abs(r[4] - result.corrupt))[:TOP_ROWS]
    for kind, layer, index, label, value, recovered in best:
        print(f"  {kind:<9} {layer:<9} {label!s:<8} {value:+.4f}  recovered {recovered:+.3f}")


def analyze_dla(model: GPT, tokenizer: Tokenizer, cfg: AnalyzeConfig, out: Output) -> None:
    """Direct logit attribution at the last position, a bar chart and a table."""
    ids = prompt_tensor(cfg, tokenizer, model.config.block_size)
    if cfg.target is None:
        with torch.no_grad():
            target = int(model(ids[None])[0][0, -1].argmax())
    else:
        target = single_token(tokenizer, cfg.target, "target")
    contrast = None if cfg.contrast is None else single_token(tokenizer, cfg.contrast, "contrast")
    result = direct_logit_attribution(model, ids, target, contrast)
    name = f"logit['{token_labels(tokenizer, [target])[0]}']"
    if contrast is not None:
        name += f" - logit['{token_labels(tokenizer, [contrast])[0]}']"
    rows = [(label, round(float(v), 6)) for label, v in zip(result.labels, result.values)]
    out.table("dla", ("component", "attribution"), rows,
              f"direct logit attribution to {name} at the last position; sum {result.logit:.4f}")
    out.figure("dla", dla_figure(result.labels, result.values,
                                 f"direct logit attribution to {name} after "
                                 f"'{token_labels(tokenizer, ids[-1:])[0]}'; sum {result.logit:.2f}"))
    print(f"direct logit attribution to {name} (sum {result.logit:.4f}), largest first:")
    for label, value in sorted(rows, key=lambda r: -abs(r[1]))[:TOP_ROWS]:
        print(f"  {label:<24} {value:+.4f}")


def analyze_heads(model: GPT, tokenizer: Tokenizer, cfg: AnalyzeConfig, out: Output) -> None:
    """Previous-token, duplicate-token and induction scores of every head."""
    block_size = model.config.block_size
    if cfg.random_tokens is not None:
        windows, source = [prompt_tensor(cfg, tokenizer, block_size)], (
            f"{cfg.random_tokens} random tokens repeated twice")
    else:
        ids = tokenizer.encode(read_prompt(cfg))
        windows = [torch.tensor(ids[i : i + block_size]) for i in range(0, len(ids), block_size)]
        windows = [w for w in windows if w.numel() >= 2]
        if not windows:
            raise ValueError("kind=heads needs a prompt of at least 2 tokens")
        source = f"{len(ids)} tokens in {len(windows)} window(s) of <= {block_size}"
    scores = mean_head_scores(model, windows)
    rows = [(f"blocks.{i}", h, *(round(float(scores[k][i, h]), 6) for k in HEAD_KINDS))
            for i in range(model.config.n_layer) for h in range(model.config.n_head)]
    out.table("heads", ("layer", "head", *HEAD_KINDS), rows, f"head scores over {source}")
    out.figure("heads", head_scores_figure(scores, f"head scores over {source}"))
    print(f"head scores over {source} (share of attention on the pattern):")
    print(f"  {'head':<16}" + "".join(f"{k:>17}" for k in HEAD_KINDS))
    for layer, h, *values in rows:
        print(f"  {layer + '.head' + str(h):<16}" + "".join(f"{v:>17.3f}" for v in values))


def analyze_cache(model: GPT, tokenizer: Tokenizer, cfg: AnalyzeConfig, out: Output) -> None:
    """The activations at the hook points ``cfg.names`` as ``cache.safetensors``."""
    ids = prompt_tensor(cfg, tokenizer, model.config.block_size)
    names = model.hook_names([n.strip() for n in cfg.names.split(",")])
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], names)
    path = out.dir / "cache.safetensors"
    with atomic_file(path) as tmp:
        save_file({name: act.contiguous().cpu() for name, act in cache.items()}, str(tmp),
                  metadata={"tokens": " ".join(map(str, ids.tolist()))})
    out.written.append(path)
    rows = [(name, "x".join(map(str, act.shape))) for name, act in cache.items()]
    out.table("cache", ("hook_point", "shape"), rows, f"activations of {len(ids)} tokens")
    for name, shape in rows:
        print(f"  {name:<36} {shape}")


RUNNERS = {"attention": analyze_attention, "logit_lens": analyze_logit_lens,
           "patching": analyze_patching, "dla": analyze_dla, "heads": analyze_heads,
           "cache": analyze_cache}


def analyze_command(cfg: AnalyzeConfig) -> int:
    """``lm analyze``: run ``cfg.kind`` on the checkpoint, write its files, print the paths.

    Raises:
        ValueError, CheckpointError: one line (a bad key, prompt, token or checkpoint).
    """
    check_config(cfg)
    model, tokenizer, _ = load_checkpoint(cfg.ckpt, cfg.device, nonfinite="error")
    model.eval()
    out = Output(cfg.out)
    RUNNERS[cfg.kind](model, tokenizer, cfg, out)
    print("wrote " + ", ".join(str(p) for p in out.written))
    return 0
