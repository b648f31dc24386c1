"""The ``lm`` command: ``lm --help``, every subcommand's ``--help`` (its keys with their
defaults), the tiny form of each, and bad input (one ``error:`` line, exit code 2).

A few run as a user runs them, ``python -m lm ...`` in a subprocess; the rest call
``lm.cli.main`` in this process (the same code, without a second interpreter start per
command). Every command runs in an empty working directory that must stay empty: a
command other than train makes no run dir and writes no log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from lm.cli import BENCHMARKS, COMMANDS, main, settings
from lm.config.overrides import hydra_quote, quote_verbatim
from tests.conftest import ROOT, tiny_overrides, write_corpus

SCRIPT = Path(sys.executable).with_name("lm")  # the console script pyproject installs


def lm(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m lm argv...`` in ``cwd`` (with ``env`` added to the environment)."""
    return subprocess.run([sys.executable, "-m", "lm", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained run shared by the tests: its run dir, checkpoint and corpus (BPE
    tokenizer, so that it converts to a Hugging Face directory with tokenizer files)."""
    from lm.config.compose import compose_config
    from lm.training.run import run

    tmp = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(tmp / "corpus.txt")
    cfg = compose_config([
        *tiny_overrides(tmp, corpus), "data/tokenizer=bpe", "data.tokenizer.vocab_size=300",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "sample.max_new_tokens=0",
    ])
    record = run(cfg)
    assert record["status"] == "completed"
    return {"run": tmp / "run", "ckpt": Path(record["checkpoints"]["last"]), "corpus": corpus,
            "val_loss": record["metrics"]["final"]["val/loss"]}


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty working directory for in-process commands; it must stay empty."""
    path = tmp_path / "cwd"
    path.mkdir()
    monkeypatch.chdir(path)
    yield path
    assert list(path.iterdir()) == [], "a command left files in the working directory"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``lm argv...`` in this process: (exit code, stdout, stderr). What Hydra leaves
    behind in a process it ran in (its config singleton, the root logger's handlers on
    captured streams) is put back, as a process of its own would end with them."""
    from hydra.core.hydra_config import HydraConfig

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = main(list(argv))
    finally:
        HydraConfig.instance().cfg = None
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


# --- lm and python -m lm, as a user runs them ------------------------------------------


def test_lm_help_lists_every_command(tmp_path):
    result = lm("--help", cwd=tmp_path)
    assert result.returncode == 0
    for name, command in COMMANDS.items():
        assert f"  {name}" in result.stdout and command.summary in result.stdout
    if SCRIPT.exists():
        again = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, check=False)
        assert again.stdout == result.stdout
    assert "bench     benchmarks: lm bench train | tokenizer | generate | gpu | speedrun | prepare\n" \
        in result.stdout


def test_train_help_lists_its_keys_with_defaults(tmp_path):
    result = lm("train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "seed: 1337" in result.stdout and "max_steps: 2000" in result.stdout
    assert "model: gpt2, medium, small, tiny" in result.stdout  # the groups and their options
    assert list(tmp_path.iterdir()) == []


def test_train_on_a_missing_gpu_is_one_line_and_leaves_no_run_dir(tmp_path):
    result = lm("train", "trainer=gpu", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2 and result.stdout == ""
    assert one_error_line(result.stderr) == ("error: trainer=gpu needs a CUDA GPU "
                                             "(torch.cuda.is_available() is False here); use trainer=cpu")
    assert list(tmp_path.iterdir()) == []  # checked before Hydra: no outputs/, no train.log


# A user's hook, as README "Writing a hook" has it: my_hooks.py and conf/hooks/resid_scale.yaml
# in the working directory (the conf found through hydra.searchpath). Its constructor stops
# the run once the hook is built, so the test trains nothing: the line names the file the
# module was imported from.
USER_HOOK = """\
from lm.hooks import ForwardHook


class ResidScale(ForwardHook):
    def __init__(self, scale: float, pattern: str = "blocks.*.hook_resid_post"):
        raise ValueError(f"built from {__file__}")
"""
ENTRY_POINTS = {  # how a user starts lm train
    "lm train": [str(SCRIPT), "train"],
    "python -m lm train": [sys.executable, "-m", "lm", "train"],
    "python lm/train.py": [sys.executable, str(ROOT / "lm" / "train.py")],
}


@pytest.mark.slow  # three real training processes, ~9 s each
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_imports_user_modules_from_the_working_directory(tmp_path, entry):
    (tmp_path / "my_hooks.py").write_text(USER_HOOK)
    (tmp_path / "conf" / "hooks").mkdir(parents=True)
    (tmp_path / "conf" / "hooks" / "resid_scale.yaml").write_text(
        "# @package hooks.resid_scale\n_target_: my_hooks.ResidScale\nscale: 0.5\n")
    argv = ["model=tiny", "hooks=[resid_scale,z_loss]", "trainer.max_steps=50",
            "hydra.searchpath=[file://conf]", "hydra.run.dir=run"]
    result = subprocess.run([*ENTRY_POINTS[entry], *argv], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, check=False)
    assert one_error_line(result.stderr) == (
        f"error: hooks.resid_scale: built from {tmp_path / 'my_hooks.py'}"), result.stderr
    assert result.returncode == 2 and not (tmp_path / "run").exists()


def test_generate_as_a_process_prints_text_and_leaves_nothing(tiny, tmp_path):
    result = lm("generate", f"ckpt={tiny['ckpt']}", "prompt=First, (1)", "max_new_tokens=5",
                cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("First, (1)")  # the prompt as typed: commas, brackets
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log file


def test_an_unknown_command_is_one_line_and_exit_2(tmp_path):
    result = lm("nosuch", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown command lm 'nosuch'" in one_error_line(result.stderr)


# --- every command's --help ----------------------------------------------------------


HELP = [  # (command, text its --help shows)
    (["generate"], ["ckpt: ???", "max_new_tokens: 500", "strategy: top_k", "backend: torch"]),
    (["evaluate"], ["ckpt: ???", "eval_iters: null", "batch_size: null", "device: cpu"]),
    (["inspect"], ["seed: 1337", "n_layer: 4", "hooks: act_l2"]),
    (["convert"], ["direction: ???", "hf_dir: ???", "ckpt: ???"]),
    (["classify"], ["steps: 100", "seed: 0", "out: outputs/reference/moons.png"]),
    (["bench", "train"], ["steps: 300", "skip: 20", "repeats: 5", "model: small"]),
    (["bench", "tokenizer"], ["vocab_size: 4096", "corpus: null", "readable_mb: 1.0"]),
    (["bench", "generate"], ["new_tokens: 256", "prompt_tokens: 16", "repeats: 3"]),
    (["compare"], ["PATH", "--baseline SPEC", "--strict", "--out DIR"]),
]


@pytest.mark.parametrize("argv, shown", HELP, ids=[" ".join(argv) for argv, _ in HELP])
def test_each_command_help_lists_its_keys_with_defaults(cwd, capsys, argv, shown):
    code, out, _ = run_main(capsys, *argv, "--help")
    assert code == 0
    for text in shown:
        assert text in out, (text, out)
    assert "_schema" not in out  # a schema is no option a user can choose
    if argv[0] != "compare":  # a Hydra command: usage first, then the config's keys
        assert out.startswith(f"lm {' '.join(argv)}: ") and "--cfg job" in out
        assert not HydraConfig.initialized()  # no job's config left behind for a later run


def test_bench_help_lists_the_benchmarks(cwd, capsys):
    code, out, _ = run_main(capsys, "bench", "--help")
    assert code == 0 and all(f"  {name}" in out for name in BENCHMARKS)
    _, out, _ = run_main(capsys, "--help")
    (bench,) = [line for line in out.splitlines() if line.startswith("  bench ")]
    assert bench.split("lm bench ")[1].split(" | ") == list(BENCHMARKS)  # lm --help: all of them


def help_groups(out: str) -> dict[str, list[str]]:
    """The ``group: option, ...`` lines under a --help's "== Configuration groups ==" (up to
    the blank line after them), as {group: options}."""
    groups: dict[str, list[str]] = {}
    for line in out.split("== Configuration groups ==\n", 1)[1].splitlines():
        group, sep, options = line.partition(": ")
        if sep and re.fullmatch(r"[\w/]+", group):
            groups[group] = options.split(", ")
        elif groups and not line:
            break
    return groups


def test_help_lists_only_the_options_a_user_can_choose(cwd, capsys):
    from lm.config.compose import compose_config

    _, out, _ = run_main(capsys, "train", "--help")
    groups = help_groups(out)
    assert groups["model"] == ["gpt2", "medium", "small", "tiny"]
    assert groups["optimizer"] == ["adamw", "muon", "sgd"]  # not adamw_schema, ...
    assert groups["hparams_search"] == ["optuna_lr"]  # null by default: a choice
    assert "model/base" not in groups and "callbacks" not in groups  # nothing to choose
    for group, options in groups.items():  # each one composes: a user can choose it
        for option in options:
            compose_config([f"{group}={option}", "paths.output_dir=x"])
    _, out, _ = run_main(capsys, "inspect", "--help")  # the overrides lm train takes
    assert help_groups(out) == groups


def test_cfg_job_prints_the_composed_config(cwd, capsys):
    code, out, _ = run_main(capsys, "generate", "--cfg", "job", "ckpt=a.ckpt", "top_k=null",
                            "prompt=ROMEO: it's, (1)")
    assert code == 0
    assert "ckpt: a.ckpt" in out and "top_k: null" in out and "prompt: 'ROMEO: it''s, (1)'" in out


# --- the tiny form of each command -----------------------------------------------------


def test_inspect_model_tiny(cwd, capsys):
    code, out, _ = run_main(capsys, "inspect", "model=tiny")
    assert code == 0
    assert out.startswith("# n_layer=2 n_head=4 n_embd=64 block_size=64")
    assert "blocks.1.attn.hook_pattern  (1, 4, 64, 64)" in out


def test_inspect_model_tiny_with_the_options_beyond_gpt2(cwd, capsys):
    code, out, _ = run_main(capsys, "inspect", "model=tiny", "model.pos_encoding=rope",
                            "model.norm=rmsnorm", "model.qk_norm=true", "model.activation=swiglu",
                            "model.logit_softcap=15", "model.zero_init_proj=true")
    assert code == 0 and "hook_pos_embed" not in out  # rope adds no position embedding
    rows = dict(line.split(maxsplit=1) for line in out.splitlines()[1:])
    assert rows["blocks.0.mlp.hook_pre"].startswith("(1, 64, 340)")  # SwiGLU: 2F, F = 8*64 // 3
    assert rows["blocks.0.mlp.hook_post"].startswith("(1, 64, 170)")


def test_inspect_an_attention_only_model_lists_no_mlp_hook_points(cwd, capsys):
    code, out, _ = run_main(capsys, "inspect", "model=tiny", "model.mlp=false")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names[2:11] == [f"blocks.0.{n}" for n in (
        "hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_scores",
        "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_post")]
    assert "blocks.1.hook_resid_post" in names
    assert not [n for n in names if "mlp" in n or "resid_mid" in n]


def test_generate_strategies_and_the_numpy_backend(tiny, cwd, capsys):
    base = ["generate", f"ckpt={tiny['ckpt']}", "prompt=First", "max_new_tokens=8"]
    code, out, _ = run_main(capsys, *base, "num_samples=2", "seed=0")
    assert code == 0 and out.count("--- sample") == 2
    greedy = [run_main(capsys, *base, "strategy=greedy", f"backend={b}") for b in ("torch", "numpy")]
    assert greedy[0][0] == greedy[1][0] == 0
    assert greedy[0][1] == greedy[1][1] and greedy[0][1].startswith("First")


def test_evaluate_gives_the_runs_final_val_loss(tiny, cwd, capsys):
    code, out, _ = run_main(capsys, "evaluate", f"ckpt={tiny['ckpt']}")
    assert code == 0
    metrics = dict(line.split() for line in out.splitlines() if line.startswith("val/"))
    assert list(metrics) == ["val/loss", "val/ppl", "val/bpb"]
    assert float(metrics["val/loss"]) == pytest.approx(tiny["val_loss"], abs=2e-6)


def test_convert_round_trip(tiny, cwd, tmp_path, capsys):
    hf_dir, back = tmp_path / "hf", tmp_path / "back.ckpt"
    code, out, _ = run_main(capsys, "convert", "direction=export", f"ckpt={tiny['ckpt']}",
                            f"hf_dir={hf_dir}")
    assert code == 0 and out.startswith(f"wrote {hf_dir}")
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {
        p.name for p in hf_dir.iterdir()}
    code, out, _ = run_main(capsys, "convert", "direction=import", f"hf_dir={hf_dir}",
                            f"ckpt={back}")
    assert code == 0 and out.startswith(f"wrote {back}")
    texts = [run_main(capsys, "generate", f"ckpt={c}", "prompt=First", "max_new_tokens=6",
                      "strategy=greedy")[1] for c in (tiny["ckpt"], back)]
    assert texts[0] == texts[1]  # the same weights and tokenizer after the round trip


def test_compare_a_run_dir(tiny, cwd, tmp_path, capsys):
    out_dir = tmp_path / "report"
    code, out, _ = run_main(capsys, "compare", str(tiny["run"]), "--out", str(out_dir))
    assert code == 0 and "| baseline |" in out and f"wrote {out_dir}/report.md" in out
    assert "lm compare" in (out_dir / "report.md").read_text()


def test_bench_tokenizer_on_a_small_corpus(tiny, cwd, capsys):
    code, out, _ = run_main(capsys, "bench", "tokenizer", f"corpus={tiny['corpus']}",
                            "vocab_size=260", "readable_mb=0.001")
    assert code == 0 and "BPE training:" in out
    assert "readable == tiktoken on the slice: True" in out


def test_classify_writes_nothing_on_bad_steps(cwd, capsys):
    code, out, err = run_main(capsys, "classify", "steps=0")
    assert code == 2 and out == ""
    assert one_error_line(err) == "error: steps=0 is invalid: must be an integer >= 1"


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "unknown command lm 'nosuch'; commands: train, generate"),
    (["bench", "nosuch"], "unknown command lm bench 'nosuch'; commands: train, tokenizer"),
    (["generate", "colour=red"], "colour is not a config key; top-level keys: backend"),
    (["generate", "+colour=red"], "colour is not a config key"),
    (["generate", "max_new_tokens=many"], "max_new_tokens=many is invalid"),
    (["generate"], "ckpt is required: give ckpt=<value>"),
    (["generate", "ckpt=/no/such.ckpt"], "ckpt=/no/such.ckpt does not exist"),
    (["generate", "ckpt=x", "seed=1,2"], "seed=1,2: sweeps are for lm train"),
    (["generate", "-m", "ckpt=x"], "-m (--multirun): sweeps are for lm train"),
    (["generate", "--bogus"], "--bogus is not a flag"),
    (["generate", "--cfg", "nosuch"], "argument --cfg/-c: invalid choice: 'nosuch'"),
    (["evaluate", "ckpt=/no/such.ckpt"], "does not exist"),
    (["evaluate", "ckpt=x", "data=nosuch"], "data=nosuch is not an option; available: "),
    (["inspect", "model=nosuch"], "model=nosuch is not an option; available: gpt2"),
    (["inspect", "+model.foo=1"], "model.foo is not a config key"),
    (["inspect", "model.n_head=3"], "is not divisible by model.n_head=3"),
    (["convert", "direction=sideways", "hf_dir=a", "ckpt=b"], "direction=sideways is invalid"),
    (["convert", "direction=export", "hf_dir=a", "ckpt=/no/such.ckpt"], "does not exist"),
    (["classify", "steps=few"], "steps=few is invalid"),
    (["bench", "train", "skip=400"], "skip=400 is invalid: must be in [0, steps=300)"),
    (["bench", "tokenizer", "corpus=/no/such.txt"], "corpus=/no/such.txt cannot be read"),
    (["bench", "generate", "repeats=0"], "repeats=0 is invalid"),
    (["train", "nosuch=1"], "nosuch is not a config key"),
    (["train", "--cfg", "job", "model=nosuch"], "model=nosuch is not an option"),
])
def test_bad_input_is_one_error_line_and_exit_2(cwd, capsys, argv, message):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert message in one_error_line(err)


def test_compare_bad_input_is_one_error_line(cwd, tmp_path, capsys):
    code, _, err = run_main(capsys, "compare", str(tmp_path / "none"))
    assert code == 2 and "matches no run" in one_error_line(err)


# --- free text reaches the command as typed --------------------------------------------


@pytest.mark.parametrize("text", ["", "ROMEO:", "a,b", "f(x) = [1, 2]", "it's", 'say "hi"',
                                  "back\\slash\\", "\\'", "${oc.env:HOME}", "a=b", " spaced "])
def test_verbatim_values_parse_back_to_the_text(text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([f"prompt={hydra_quote(text)}"])
    assert override.value() == text.replace("${", "\\${")  # OmegaConf reads \${ as ${
    assert settings("generate", f"prompt={text}", "ckpt=x").prompt == text


def test_only_verbatim_keys_are_quoted():
    assert quote_verbatim(["prompt=a,b", "seed=1,2", "stop"], ("prompt", "stop")) == [
        "prompt='a,b'", "seed=1,2", "stop"]


def test_settings_types_the_config():
    cfg = settings("bench tokenizer", "vocab_size=300")
    assert type(cfg).__name__ == "BenchTokenizerConfig" and cfg.vocab_size == 300
    assert json.dumps(settings("convert", "direction=import", "hf_dir=a", "ckpt=b").__dict__) == (
        '{"direction": "import", "hf_dir": "a", "ckpt": "b"}')
