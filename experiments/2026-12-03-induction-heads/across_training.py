"""Induction heads across training, from every snapshot of every run of the study's sweeps.

    python experiments/2026-12-03-induction-heads/across_training.py SWEEP_DIR... --out DIR

For each run (a sweep's ``<n>-seed:<s>-<hash8>`` dirs) and each of its snapshots
(``checkpoints/snapshots/stepNNNNN.ckpt``, experiment=induction_heads), with lm's own
analyses (``lm.analysis.interp``):

- induction score of every head: ``head_scores`` (Olsson et al. 2022's prefix matching:
  attention from each token of the second copy of a random sequence to the token after
  its first occurrence), over the second half of N_SEQUENCES sequences of RANDOM_LENGTH
  distinct random characters repeated twice, averaged;
- in-context loss (Olsson et al.: loss late in the context minus loss early in it): the
  mean cross-entropy at positions [7T/8, T) minus that at [T/16, T/8) (``spans``), over
  N_WINDOWS validation windows of block_size T at fixed random starts;
- the training loss logged nearest that step (TensorBoard events).

Writes ``across_training.csv``, ``summary.md`` and the figures ``in_context_loss.png``,
``induction_scores.png``, ``train_loss.png`` and ``loss_by_position.png`` to ``--out``.
"""

import argparse
import csv
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from lm.analysis.compare.runs import read_scalars  # noqa: E402
from lm.analysis.interp.heads import head_scores  # noqa: E402
from lm.analysis.interp.tokens import plain_vocab, repeated_random_tokens  # noqa: E402
from lm.checkpoint import load_checkpoint  # noqa: E402
from lm.data.datamodule import build_datamodule  # noqa: E402

RANDOM_LENGTH = 50  # distinct random characters per sequence, then repeated (at most T / 2)
N_SEQUENCES = 8
N_WINDOWS = 64  # validation windows for the per-position loss


def spans(T: int) -> tuple[slice, slice]:
    """(early, late) positions of a block_size-T context for the in-context loss:
    [T/16, T/8) and [7T/8, T); for T = 256, 16-31 and 224-255."""
    return slice(T // 16, T // 8), slice(7 * T // 8, T)
PHASE_SCORE = 0.3  # the step a run's best induction score first reaches this


def runs_of(sweep: Path) -> list[Path]:
    """The run dirs of a sweep dir, in job order."""
    return sorted((p for p in sweep.iterdir() if (p / "run.json").exists()),
                  key=lambda p: int(p.name.split("-")[0]))


def snapshots(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's snapshots, by step."""
    found = [(int(re.search(r"step(\d+)", p.stem).group(1)), p)
             for p in (run / "checkpoints" / "snapshots").glob("step*.ckpt")]
    return sorted(found)


def validation_windows(run: Path, n: int, seed: int = 0) -> torch.Tensor:
    """(n, block_size + 1) int64 windows of the run's validation split at seeded starts."""
    cfg = OmegaConf.load(run / "config.yaml")
    val = torch.from_numpy(build_datamodule(cfg).val_ids.astype("int64"))
    T = cfg.model.block_size
    starts = torch.randint(0, len(val) - T - 1, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([val[s : s + T + 1] for s in starts.tolist()])


@torch.no_grad()
def loss_by_position(model, windows: torch.Tensor) -> torch.Tensor:
    """(T,) mean cross-entropy (nats) at each position over the windows (n, T + 1)."""
    logits, _ = model(windows[:, :-1])  # (n, T, V)
    losses = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")  # (n, T)
    return losses.mean(0)


def induction_scores(model, tokenizer) -> torch.Tensor:
    """(L, H) induction score of every head on the repeated random sequences."""
    n = min(RANDOM_LENGTH, model.config.block_size // 2)
    scores = []
    for seed in range(N_SEQUENCES):
        ids = torch.tensor(repeated_random_tokens(plain_vocab(tokenizer), n, seed))
        scores.append(head_scores(model, ids, queries=slice(n, None))["induction"])
    return torch.stack(scores).mean(0)


def train_loss(run: Path) -> dict[int, float]:
    """step -> train/loss logged at that step."""
    df = read_scalars(run)
    df = df[df["tag"] == "train/loss"]
    return dict(zip(df["step"].astype(int), df["value"].astype(float)))


def measure(sweeps: list[Path]) -> list[dict]:
    """One row per (run, snapshot, head)."""
    rows = []
    for sweep in sweeps:
        for run in runs_of(sweep):
            seed = int(re.search(r"seed:(\d+)", run.name).group(1))
            windows = validation_windows(run, N_WINDOWS)
            losses = train_loss(run)
            for step, path in snapshots(run):
                model, tokenizer, _ = load_checkpoint(path)
                EARLY, LATE = spans(model.config.block_size)
                per_position = loss_by_position(model, windows)
                icl = float(per_position[LATE].mean() - per_position[EARLY].mean())
                logged = min(losses, key=lambda s: abs(s - step))
                scores = induction_scores(model, tokenizer)
                for (layer, head), score in zip(torch.cartesian_prod(
                        torch.arange(scores.size(0)), torch.arange(scores.size(1))).tolist(),
                        scores.flatten().tolist()):
                    rows.append({"arm": sweep.name, "seed": seed, "step": step,
                                 "head": f"blocks.{layer}.head{head}", "induction": score,
                                 "in_context_loss": icl, "train_loss": losses[logged],
                                 "loss_early": float(per_position[EARLY].mean()),
                                 "loss_late": float(per_position[LATE].mean())})
                print(f"{run.name} step {step}: in-context loss {icl:+.3f}, "
                      f"best induction score {scores.max():.3f}", flush=True)
            final = snapshots(run)[-1][1]
            torch.save(loss_by_position(load_checkpoint(final)[0], windows),
                       run / "loss_by_position.pt")
    return rows


def per_snapshot(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """(arm, seed) -> one row per step (the first head's; the scalars are per snapshot)."""
    out: dict[tuple[str, int], dict[int, dict]] = {}
    for r in rows:
        out.setdefault((r["arm"], r["seed"]), {}).setdefault(r["step"], r)
    return {k: [v[s] for s in sorted(v)] for k, v in out.items()}


def best_scores(rows: list[dict]) -> dict[tuple[str, int], dict[int, tuple[float, str]]]:
    """(arm, seed) -> step -> (best induction score, its head)."""
    out: dict = {}
    for r in rows:
        best = out.setdefault((r["arm"], r["seed"]), {}).get(r["step"])
        if best is None or r["induction"] > best[0]:
            out[(r["arm"], r["seed"])][r["step"]] = (r["induction"], r["head"])
    return out


def plot_per_run(series, ylabel: str, title: str, path: Path, key: str) -> None:
    """One line per run of ``key`` against step, a colour per arm."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    arms = sorted({arm for arm, _ in series})
    for (arm, seed), snaps in sorted(series.items()):
        color = f"C{arms.index(arm)}"
        ax.plot([s["step"] for s in snaps], [s[key] for s in snaps], color=color, alpha=0.8,
                label=f"{arm}, seed {seed}", linestyle=["-", "--", ":"][(seed - 1) % 3])
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_induction(rows: list[dict], path: Path) -> None:
    """Each head's induction score against step: a panel per arm and seed."""
    keys = sorted({(r["arm"], r["seed"]) for r in rows})
    arms = sorted({a for a, _ in keys})
    seeds = sorted({s for _, s in keys})
    fig, axes = plt.subplots(len(arms), len(seeds), figsize=(4 * len(seeds), 3.2 * len(arms)),
                             sharex=True, sharey=True, squeeze=False)
    for (arm, seed) in keys:
        ax = axes[arms.index(arm)][seeds.index(seed)]
        heads = sorted({r["head"] for r in rows if (r["arm"], r["seed"]) == (arm, seed)})
        for k, head in enumerate(heads):
            pts = sorted((r["step"], r["induction"]) for r in rows
                         if (r["arm"], r["seed"], r["head"]) == (arm, seed, head))
            layer = int(head.split(".")[1])
            ax.plot(*zip(*pts), label=head, color=f"C{k}", linestyle=["--", "-"][min(layer, 1)])
        ax.set_title(f"{arm}, seed {seed}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for row in axes:
        row[0].set_ylabel("induction score")
    fig.suptitle("induction (prefix-matching) score of every head across training, on "
                 f"{RANDOM_LENGTH} random characters repeated (32 with block_size 64)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss_by_position(sweeps: list[Path], path: Path) -> None:
    """The final models' loss at each context position (smoothed over 8 positions)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for a, sweep in enumerate(sweeps):
        for run in runs_of(sweep):
            losses = torch.load(run / "loss_by_position.pt")
            smooth = F.avg_pool1d(losses[None, None], 8, stride=1)[0, 0]
            seed = run.name.split("seed:")[1].split("-")[0]
            ax.plot(torch.arange(len(smooth)) + 4, smooth, color=f"C{a}",
                    label=f"{sweep.name}, seed {seed}", alpha=0.8)
    for span in spans(256):
        ax.axvspan(span.start, span.stop - 1, color="0.85", zorder=0)
    ax.set_xlabel("position in the context (tokens before the predicted one)")
    ax.set_ylabel("val loss (nats/token), 8-position mean")
    ax.set_title("loss by context position, final models (shaded: the in-context loss spans)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(rows: list[dict]) -> str:
    """A markdown table: per run, when the best head first reaches PHASE_SCORE, its final
    score and head, and the final in-context loss."""
    best = best_scores(rows)
    snaps = per_snapshot(rows)
    lines = ["| arm | seed | first step with a head >= %.1f | final best head | its score | "
             "in-context loss at 50 steps | final in-context loss | final train/loss |" % PHASE_SCORE,
             "|---|---|---|---|---|---|---|---|"]
    for (arm, seed), steps in sorted(best.items()):
        first = next((s for s in sorted(steps) if steps[s][0] >= PHASE_SCORE), None)
        last = max(steps)
        lines.append(f"| {arm} | {seed} | {first if first is not None else 'never'} | "
                     f"{steps[last][1]} | {steps[last][0]:.3f} | "
                     f"{snaps[(arm, seed)][0]['in_context_loss']:+.3f} | "
                     f"{snaps[(arm, seed)][-1]['in_context_loss']:+.3f} | "
                     f"{snaps[(arm, seed)][-1]['train_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = measure(args.sweeps)
    with open(args.out / "across_training.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    series = per_snapshot(rows)
    plot_per_run(series, "in-context loss (nats): late minus early positions",
                 "in-context loss across training (more negative: more use of earlier context)",
                 args.out / "in_context_loss.png", "in_context_loss")
    plot_per_run(series, "train/loss (nats/token)", "training loss",
                 args.out / "train_loss.png", "train_loss")
    plot_induction(rows, args.out / "induction_scores.png")
    plot_loss_by_position(args.sweeps, args.out / "loss_by_position.png")
    (args.out / "summary.md").write_text(summary(rows))
    print(summary(rows))


if __name__ == "__main__":
    main()
