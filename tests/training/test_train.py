"""End to end: a tiny run composed through Hydra's compose API, in tmp_path."""

import json
import math

import pytest
import torch
from tbparse import SummaryReader

from lm.checkpoint import CheckpointError, load_checkpoint
from lm.cli import settings
from lm.commands.generate import sample_texts
from lm.training.hashing import config_hash
from lm.training.module import param_groups
from lm.training.run import run
from lm.training.schedule import cosine_multiplier
from tests.conftest import Crash


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run shared by the tests below: (cfg, metrics, run_dir)."""
    from lm.config.compose import compose_config
    from tests.conftest import tiny_overrides, write_corpus

    tmp = tmp_path_factory.mktemp("e2e")
    corpus = write_corpus(tmp / "corpus.txt")
    cfg = compose_config([
        *tiny_overrides(tmp, corpus), "trainer.max_steps=7", "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1", "sample.max_new_tokens=8",
    ])
    metrics = run(cfg)
    return cfg, metrics, tmp / "run"


def test_run_dir_holds_config_record_events_checkpoints(tiny_run):
    cfg, metrics, run_dir = tiny_run
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["hash"] == config_hash(cfg) and record["hash8"] == record["hash"][:8]
    assert record["steps"] == 7 and record["tokens_seen"] == 7 * 4 * 64
    assert record["metrics"]["final"]["val/loss"] == pytest.approx(metrics["metrics"]["final"]["val/loss"])
    assert record["code"].keys() == {"commit", "dirty"}
    assert (run_dir / "config.yaml").read_text().startswith("seed:")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_tensorboard_has_the_curves(tiny_run):
    _, metrics, run_dir = tiny_run
    scalars = SummaryReader(str(run_dir)).scalars
    tags = set(scalars.tag)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "wallclock/tokens_per_sec",
                "val/loss", "val/ppl", "val/bpb"):
        assert tag in tags, tag
    val = scalars[scalars.tag == "val/loss"]
    # validated every 3 steps and at the last step (7 is not a multiple of 3)
    assert list(val.step) == [3, 6, 7]
    ppl = scalars[scalars.tag == "val/ppl"].value.iloc[-1]
    assert ppl == pytest.approx(math.exp(val.value.iloc[-1]), rel=1e-5)
    # ASCII text, one character per token: bits per byte = nats per token / ln 2
    bpb = scalars[scalars.tag == "val/bpb"].value.iloc[-1]
    assert bpb == pytest.approx(val.value.iloc[-1] / math.log(2), rel=1e-5)
    assert val.value.iloc[-1] == pytest.approx(metrics["metrics"]["final"]["val/loss"])
    text = SummaryReader(str(run_dir)).text
    assert "samples" in set(text.tag)


def test_hparams_tab_has_the_resolved_config_named_by_the_run(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg, metrics, run_dir = tiny_run
    hparams = SummaryReader(str(run_dir)).hparams
    values = dict(zip(hparams.tag, hparams.value))
    assert values["model.n_layer"] == 2 and values["optimizer.lr"] == pytest.approx(cfg.optimizer.lr)
    assert values["model.norm"] == "layernorm"  # a default the hash leaves out still has a column
    assert not any(k.endswith(("_target_", "_partial_")) for k in values)
    assert "paths.output_dir" not in values and "tracking.registry_dir" not in values  # not hashed
    events = EventAccumulator(str(run_dir))
    events.Reload()
    plugin = [plugin_data_pb2.HParamsPluginData.FromString(raw)
              for raw in events.PluginTagToContent("hparams").values()]
    # one session named by the run (its Trial ID); no experiment summary of its own, so
    # TensorBoard puts the keys that differ across the runs under --logdir first
    assert [p.session_start_info.group_name for p in plugin] == [metrics["hash8"]]
    assert not any(p.HasField("experiment") for p in plugin)
    # no extra val/loss point: the curve is the validations' alone
    assert list(SummaryReader(str(run_dir)).scalars.query("tag == 'val/loss'").step) == [3, 6, 7]
    assert not (run_dir / "hparams.yaml").exists()  # config.yaml says it all


def test_checkpoint_alone_generates_text(tiny_run):
    _, _, run_dir = tiny_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    model, tokenizer, run_config = load_checkpoint(ckpt)
    assert not model.training
    assert run_config["model"]["n_layer"] == 2
    cfg = settings("generate", f"ckpt={ckpt}", "prompt=ROMEO:", "max_new_tokens=20", "seed=0",
                   "num_samples=2")
    a, b = sample_texts(cfg)
    assert a.startswith("ROMEO:") and len(tokenizer.encode(a)) == len("ROMEO:") + 20
    assert sample_texts(cfg) == [a, b]  # same seed, same text


def test_generate_cli_takes_prompts_verbatim(tiny_run, capsys):
    from lm.cli import main as lm

    def main(argv):
        return lm(["generate", *argv])

    ckpt = tiny_run[2] / "checkpoints" / "best.ckpt"
    argv = [f"ckpt={ckpt}", "prompt=ROMEO: (1) is", "max_new_tokens=5", "top_k=null", "seed=0"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("ROMEO: (1) is")
    assert main([f"ckpt={ckpt}", "num_samples=2", "max_new_tokens=3"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2
    assert main(["prompt=hi"]) == 2 and "ckpt" in capsys.readouterr().err
    assert main([f"ckpt={ckpt}", "temperature=hot"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_bad_checkpoint_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be loaded"):
        load_checkpoint(tmp_path / "junk.ckpt")


def test_same_config_same_numbers(make_cfg):
    a = run(make_cfg("seed=3", out="a"))["metrics"]["final"]["val/loss"]
    b = run(make_cfg("seed=3", "tracking.skip_completed=false", out="b"))
    c = run(make_cfg("seed=4", out="c"))["metrics"]["final"]["val/loss"]
    assert b["status"] == "completed" and b["run_dir"].endswith("b")
    assert a == b["metrics"]["final"]["val/loss"]
    assert a != c


def test_completed_hash_is_skipped(make_cfg, tmp_path, capsys):
    first = run(make_cfg(out="a"))
    again = run(make_cfg(out="b"))
    assert again["status"] == "skipped" and again["hash"] == first["hash"]
    assert "already completed in" in capsys.readouterr().out
    pointer = json.loads((tmp_path / "b" / "run.json").read_text())  # a row for the summary
    assert pointer["status"] == "skipped" and pointer["same_as"] == str(tmp_path / "a")
    assert pointer["metrics"] == first["metrics"]
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_interrupted_run_resumes_to_the_same_numbers(make_cfg, tmp_path):
    overrides = ("trainer.max_steps=12", "trainer.val_check_interval=4",
                 "tracking.checkpoint_every_n_steps=4", "model.dropout=0.1",
                 "tracking.target_loss=10")  # reached at step 4: the resume must keep it
    straight = run(make_cfg(*overrides, out="straight"))
    # the same run, killed after step 8: stop it there and mark it as a crash would

    cfg = make_cfg(*overrides, "tracking.skip_completed=false", out="crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, extra_callbacks=[Crash("train_batch_end", 9)])
    record = json.loads((tmp_path / "crashed" / "run.json").read_text())
    assert record["status"] == "failed"
    resumed = run(make_cfg(*overrides, "tracking.skip_completed=false", out="new"))
    assert resumed["run_dir"].endswith("crashed")  # continued in place, from step 8
    assert resumed["resumed_from"][0].endswith("last.ckpt")
    assert resumed["steps"] == 12
    assert resumed["metrics"]["final"]["val/loss"] == straight["metrics"]["final"]["val/loss"]
    assert resumed["target"]["reached"]["step"] == straight["target"]["reached"]["step"] == 4
    pointer = json.loads((tmp_path / "new" / "run.json").read_text())
    assert pointer["status"] == "resumed" and pointer["same_as"].endswith("crashed")


def test_a_locked_hash_is_not_trained_twice(make_cfg, tmp_path):
    from lm.training.registry import HashLock

    cfg = make_cfg(out="x")
    lock = HashLock(tmp_path, config_hash(cfg))
    assert lock.acquire()
    try:
        assert run(cfg)["status"] == "skipped"
        assert not (tmp_path / "x").exists()
    finally:
        lock.release()
    assert HashLock(tmp_path, config_hash(cfg)).acquire()


def test_weight_decay_only_on_2d_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert sorted(p.shape for p in no_decay["params"]) == [(4,), (4,), (4,)]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_cosine_schedule_against_hand_values():
    # nanoGPT get_lr with warmup 10, decay 110, min ratio 0.1
    assert cosine_multiplier(0, 10, 110, 0.1) == pytest.approx(1 / 11)
    assert cosine_multiplier(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert cosine_multiplier(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.5 * 0.9)
    assert cosine_multiplier(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert cosine_multiplier(500, 10, 110, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("tokenizer", [["data/tokenizer=byte"],
                                       ["data/tokenizer=bpe", "data.tokenizer.vocab_size=300"]])
def test_every_tokenizer_trains_and_generates(make_cfg, tmp_path, tokenizer):
    record = run(make_cfg(*tokenizer, "trainer.max_steps=3", out="t"))
    ckpt = tmp_path / "t" / "checkpoints" / "last.ckpt"
    _, tok, _ = load_checkpoint(ckpt)
    assert type(tok).__name__ == {"byte": "ByteTokenizer", "bpe": "BPETokenizer"}[
        tokenizer[0].split("=")[1]]
    assert record["metrics"]["final"]["val/bpb"] > 0
    (text,) = sample_texts(settings("generate", f"ckpt={ckpt}", "prompt=ROMEO:",
                                    "max_new_tokens=5"))
    assert text.startswith("ROMEO:")


def test_an_attention_only_model_trains_and_reports_its_size(make_cfg, tmp_path, capsys):
    record = run(make_cfg("model.mlp=false", "trainer.max_steps=3", out="a"))
    assert record["status"] == "completed" and math.isfinite(record["metrics"]["final"]["val/loss"])
    model, _, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt")
    assert model.config.mlp is False and not [k for k in model.state_dict() if ".mlp." in k]
    V, C, L, T = model.config.vocab_size, 64, 2, 64  # model=tiny
    blocks = L * (2 * C + (3 * C * C + 3 * C) + (C * C + C))  # ln_1, c_attn, c_proj: no ln_2, mlp
    assert f"model: {V * C + T * C + blocks + 2 * C:,} parameters;" in capsys.readouterr().out


def test_target_loss_is_printed_recorded_and_checkpointed(make_cfg, tmp_path, capsys):
    record = run(make_cfg("tracking.target_loss=10"))  # every val/loss of a char model is < 10
    out = capsys.readouterr().out
    reached = record["target"]["reached"]
    assert record["target"]["val/loss"] == 10 and reached["step"] == 3
    assert f"target reached: val/loss {reached['val/loss']:.4f} <= 10.0 at step 3, " in out
    # its time is the validation's own wallclock/elapsed_s point
    elapsed = SummaryReader(str(tmp_path / "run")).scalars.query("tag == 'wallclock/elapsed_s'")
    assert reached["elapsed_s"] == round(float(elapsed[elapsed.step == 3].value.iloc[0]), 3)
    ckpt = torch.load(record["checkpoints"]["last"], weights_only=False)
    assert ckpt["target_reached"] == reached  # the top-level key, as before the callbacks
    missed = run(make_cfg("tracking.target_loss=0.01", "tracking.skip_completed=false", out="missed"))
    assert missed["target"] == {"val/loss": 0.01, "reached": None}
    final = missed["metrics"]["final"]["val/loss"]
    assert f"target not reached: val/loss {final:.4f} > 0.01 at step 6" in capsys.readouterr().out


def test_each_side_job_is_switched_off_from_yaml(make_cfg, tmp_path):
    off = ("~callbacks.text_samples", "~callbacks.throughput", "~callbacks.target_loss")
    full = run(make_cfg("tracking.target_loss=10", out="full"))
    bare = run(make_cfg("tracking.target_loss=10", "tracking.skip_completed=false", *off, out="bare"))
    assert bare["hash"] == full["hash"] and bare["target"] is None
    assert bare["metrics"]["final"] == full["metrics"]["final"]  # the same numbers
    for name, on in (("full", True), ("bare", False)):
        reader = SummaryReader(str(tmp_path / name))
        tags = set(reader.scalars.tag)
        assert "wallclock/elapsed_s" in tags  # the module's own
        assert ("wallclock/tokens_per_sec" in tags) is on
        assert ("tag" in reader.text and "samples" in set(reader.text.tag)) is on
