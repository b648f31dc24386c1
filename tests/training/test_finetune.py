"""Fine-tuning end to end on tiny runs: init_from=<our .ckpt>, adapter=lora|qlora, the
hash, adapter checkpoints, resume, lm merge, and the one-line errors."""

import json
from pathlib import Path

import pytest
import torch

from lm.adapters.lora import LoRALinear
from lm.adapters.nf4 import NF4Linear
from lm.checkpoint import load_checkpoint, weights_sha256
from lm.cli import main as lm_main
from lm.commands.merge import merge
from lm.config.compose import compose_config
from lm.errors import ConfigError
from lm.sampling import generate
from lm.training.hashing import config_hash, hashable_config
from lm.training.run import run
from tests.conftest import LINES, Crash, tiny_overrides, write_corpus

STEPS = ("trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
         "sample.max_new_tokens=0")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model pretrained on the shared corpus: (its best.ckpt, the tmp dir)."""
    tmp = tmp_path_factory.mktemp("pretrain")
    corpus = write_corpus(tmp / "corpus.txt")
    record = run(compose_config([*tiny_overrides(tmp, corpus, "pre"), *STEPS,
                                 "trainer.max_steps=30", "trainer.val_check_interval=15"]))
    return Path(record["checkpoints"]["best"]), tmp


@pytest.fixture
def tune(pretrained, tmp_path):
    """``tune(*overrides, out=...)``: a fine-tune config from the pretrained checkpoint on a
    new text of the same characters (the lines reversed word by word)."""
    ckpt, _ = pretrained
    text = "\n".join(" ".join(reversed(LINES[i % 5].split())) + f" ({i})" for i in range(90))
    (tmp_path / "new.txt").write_text(text + "\n")

    def make(*overrides, out="tune"):
        return compose_config([*tiny_overrides(tmp_path, tmp_path / "new.txt", out), *STEPS,
                               f"init_from={ckpt}", *overrides])

    return make


def lora(*extra):
    return ("adapter=lora", "adapter.r=2", "adapter.dropout=0.0", "optimizer.lr=0.01", *extra)


def test_init_from_a_checkpoint_takes_its_weights_and_tokenizer(pretrained, tune, capsys):
    ckpt, _ = pretrained
    model, tokenizer, _ = load_checkpoint(ckpt)
    cfg = tune()
    assert hashable_config(cfg)["init_from"] == {"sha256": weights_sha256(model.state_dict())}
    record = run(cfg)
    tuned = torch.load(record["checkpoints"]["last"], weights_only=True)
    assert tuned["tokenizer"] == tokenizer.to_dict()
    assert tuned["global_step"] == 6  # a fresh run: step 0 to 6, not the pretraining's 30
    initial = record["metrics"]["initial"]["val/loss"]
    assert "init_from: val/loss" in capsys.readouterr().out
    # the pretrained model's loss on the fine-tune's validation batches, computed apart
    from lm.data.datamodule import build_datamodule

    dm = build_datamodule(cfg, fixed_tokenizer=tokenizer)
    with torch.no_grad():
        losses = [model(x, y)[1] for x, y in dm.val_dataloader()]
    assert initial == pytest.approx(torch.stack(losses).mean().item(), abs=1e-6)
    assert record["metrics"]["final"]["val/loss"] < initial  # it learned the new text


def test_the_hash_holds_the_weights_not_the_path(pretrained, tune, tmp_path):
    ckpt, _ = pretrained
    resaved = torch.load(ckpt, weights_only=True)
    resaved["global_step"], resaved["optimizer_states"] = 999, []
    torch.save(resaved, tmp_path / "copy.ckpt")  # same weights, other file
    assert config_hash(tune()) == config_hash(tune(f"init_from={tmp_path / 'copy.ckpt'}"))
    key = next(k for k in resaved["state_dict"] if k.endswith("wte.weight"))
    resaved["state_dict"][key] = resaved["state_dict"][key] + 1e-3
    torch.save(resaved, tmp_path / "other.ckpt")
    assert config_hash(tune()) != config_hash(tune(f"init_from={tmp_path / 'other.ckpt'}"))


def test_the_adapter_config_is_in_the_hash(tune):
    hashes = {config_hash(tune(*overrides)) for overrides in
              [(), lora(), lora("adapter.r=4"), lora("adapter.alpha=3"),
               lora("adapter.targets=[blocks.*.mlp.c_fc]"), ("adapter=qlora",),
               ("adapter=qlora", "adapter.double_quant=false")]}
    assert len(hashes) == 7


@pytest.mark.parametrize("overrides, message", [
    (("adapter=lora", "adapter.r=0"), "adapter.r=0 is invalid: must be an integer >= 1"),
    (("adapter=lora", "adapter.targets=[blocks.*.attn.q_proj]"),
     "adapter.targets: 'blocks.*.attn.q_proj' matches no Linear layer"),
    (("adapter=qlora", "adapter.quant_block_size=63"), "adapter.quant_block_size=63 is invalid"),
    (("adapter=lora", "adapter.dropout=1.0"), "adapter.dropout=1.0 is invalid"),
    (("data/tokenizer=byte",), "has a char tokenizer of .* but data.tokenizer.name=byte"),
    (("model.n_layer=3",), r"does not fit the model: model.n_layer=3 \(checkpoint: 2\)"),
])
def test_bad_fine_tune_settings_are_one_line(tune, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        run(tune(*overrides))
    assert "\n" not in str(err.value)


def test_an_adapter_needs_init_from(make_cfg):
    with pytest.raises(ConfigError, match="adapter.name=lora is invalid without init_from"):
        run(make_cfg("adapter=lora"))


def test_lm_train_exits_2_on_a_bad_adapter(pretrained, tune, tmp_path, capsys):
    ckpt, _ = pretrained
    argv = [f"{o}" for o in tiny_overrides(tmp_path, tmp_path / "new.txt", "cli")]
    (tmp_path / "new.txt").write_text("some new text\n" * 50)
    code = lm_main(["train", *argv, f"init_from={ckpt}", "adapter=lora", "adapter.r=0",
                    "hydra.run.dir=" + str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: adapter.r=0 is invalid")
    assert not (tmp_path / "cli" / "run.json").exists()


def test_a_lora_run_trains_only_adapters_and_saves_them_alone(pretrained, tune, capsys):
    ckpt, _ = pretrained
    base = torch.load(ckpt, weights_only=True)["state_dict"]
    record = run(tune(*lora()))
    assert "trainable params:" in capsys.readouterr().out
    last = torch.load(record["checkpoints"]["last"], weights_only=True)
    assert set(last["state_dict"]) and all(k.rpartition(".")[2] in ("lora_A", "lora_B")
                                           for k in last["state_dict"])
    assert last["adapter"]["config"]["r"] == 2
    assert record["n_params_trainable"] == 2 * 2 * (64 + 192 + 64 + 64)  # blocks * r * (in + out)
    model, _, _ = load_checkpoint(record["checkpoints"]["last"])
    for name, tensor in model.state_dict().items():  # the base is frozen: unchanged
        plain = name.replace(".base.", ".")
        if "lora_" not in name:
            assert torch.equal(tensor, base[f"model.{plain}"]), name
    from_safetensors, _, _ = load_checkpoint(record["checkpoints"]["adapter"])
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    assert torch.equal(model(x)[0], from_safetensors(x)[0])


def test_an_interrupted_lora_run_resumes_exactly(tune, tmp_path):
    overrides = lora("trainer.max_steps=8", "trainer.val_check_interval=4",
                     "tracking.checkpoint_every_n_steps=4", "adapter.dropout=0.1")
    straight = run(tune(*overrides, out="straight"))


    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tune(*overrides, "tracking.skip_completed=false", out="crashed"),
            extra_callbacks=[Crash("train_batch_end", 5)])
    resumed = run(tune(*overrides, "tracking.skip_completed=false", out="again"))
    assert resumed["run_dir"].endswith("crashed") and resumed["steps"] == 8
    assert resumed["metrics"]["final"]["val/loss"] == straight["metrics"]["final"]["val/loss"]
    assert resumed["metrics"]["initial"] == straight["metrics"]["initial"]


def test_qlora_quantises_the_base_and_merges(tune, tmp_path, capsys):
    record = run(tune(*lora(), "adapter=qlora", "adapter.r=2"))
    model, tokenizer, _ = load_checkpoint(record["checkpoints"]["best"])
    assert any(isinstance(m, NF4Linear) for m in model.modules())
    out = tmp_path / "merged.ckpt"
    assert lm_main(["merge", record["checkpoints"]["best"], str(out)]) == 0
    assert "merged the adapters of 4 layers" in capsys.readouterr().out
    merged, _, _ = load_checkpoint(out)
    assert not any(isinstance(m, (LoRALinear, NF4Linear)) for m in merged.modules())
    x = torch.tensor([tokenizer.encode("ROMEO: But soft")])
    assert torch.equal(generate(model, x, 20, temperature=0.0), generate(merged, x, 20, temperature=0.0))


def test_merge_gives_the_same_greedy_text_and_refuses_to_overwrite(tune, tmp_path):
    record = run(tune(*lora("adapter.r=4")))
    ckpt = record["checkpoints"]["best"]
    out = tmp_path / "merged.ckpt"
    assert merge(ckpt, str(out)) == 4
    adapted, tokenizer, _ = load_checkpoint(ckpt)
    merged, _, _ = load_checkpoint(out)
    x = torch.tensor([tokenizer.encode("MENENIUS:")])
    torch.testing.assert_close(adapted(x)[0], merged(x)[0], atol=1e-5, rtol=0)
    assert torch.equal(generate(adapted, x, 30, temperature=0.0), generate(merged, x, 30, temperature=0.0))
    with pytest.raises(ValueError, match="exists"):
        merge(ckpt, str(out))
    with pytest.raises(ValueError, match="has no adapters"):
        merge(str(out), str(tmp_path / "again.ckpt"))


def test_an_adapter_checkpoint_is_refused_as_init_from(tune):
    record = run(tune(*lora()))
    with pytest.raises(ConfigError, match="is an adapter checkpoint .* lm merge"):
        run(tune(f"init_from={record['checkpoints']['last']}", out="again"))


def test_an_adapter_checkpoint_whose_base_changed_is_refused(pretrained, tune, tmp_path):
    ckpt, _ = pretrained
    base = tmp_path / "base.ckpt"
    base.write_bytes(ckpt.read_bytes())
    record = run(tune(*lora(), f"init_from={base}"))
    state = torch.load(base, weights_only=True)
    key = next(k for k in state["state_dict"] if k.endswith("ln_f.weight"))  # not a tied one
    state["state_dict"][key] = state["state_dict"][key] * 2
    torch.save(state, base)
    with pytest.raises(ValueError, match="has changed"):
        load_checkpoint(record["checkpoints"]["last"])
    json.dumps(record)  # the record stays plain JSON


def test_every_command_loads_an_adapter_checkpoint(tune, tmp_path, capsys):
    """lm generate, evaluate, inspect and merge read an adapter run's checkpoint (and its
    adapter.safetensors); lm compare tabulates what the runs cost and where they started."""
    from lm.analysis.compare import compare

    full = run(tune(out="full"))
    record = run(tune(*lora("adapter.r=4"), out="lora"))
    ckpt, merged = record["checkpoints"]["best"], tmp_path / "merged.ckpt"
    assert lm_main(["merge", ckpt, str(merged)]) == 0
    capsys.readouterr()
    texts = []
    for path in (ckpt, record["checkpoints"]["adapter"], str(merged)):
        assert lm_main(["generate", f"ckpt={path}", "prompt=ROMEO:", "strategy=greedy",
                        "max_new_tokens=40"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] == texts[2]
    assert lm_main(["evaluate", f"ckpt={ckpt}"]) == 0
    val_loss = float(capsys.readouterr().out.split("val/loss ")[1].split()[0])
    assert val_loss == pytest.approx(record["metrics"]["best"]["val/loss"], abs=1e-5)
    assert lm_main(["inspect", f"init_from={ckpt}"]) == 0
    assert "# adapters on 4 layers (blocks.0.attn.c_attn" in capsys.readouterr().out
    rows = compare([full["run_dir"], record["run_dir"]])["rows"]
    assert [r["n_params_trainable"] for r in rows] == [full["n_params_trainable"], 1536 * 2]
    for row, rec in zip(rows, (full, record)):
        gain = rec["metrics"]["final"]["val/loss"] - rec["metrics"]["initial"]["val/loss"]
        assert row["gain_mean"] == pytest.approx(gain) and gain < 0
        assert row["checkpoint_mb"] == pytest.approx(Path(rec["checkpoints"]["last"]).stat().st_size / 2**20, abs=1e-3)
