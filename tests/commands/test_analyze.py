"""lm analyze end to end on the session's tiny trained checkpoint: every kind writes its
figures and tables, whose numbers are the library's (checked against TransformerLens in
tests/analysis/interp/), and bad input is one ``error:`` line with exit code 2."""

import csv

import matplotlib.image
import pytest
import torch

from lm.analysis.interp.heads import mean_head_scores
from lm.checkpoint import load_checkpoint
from lm.cli import main as lm

PROMPT = "ROMEO: But soft, what light. ROMEO: But"


def rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run(ckpt, tmp_path, *settings, capsys) -> tuple[str, str]:
    """Run ``lm analyze`` with ``settings``; (stdout, stderr); asserts exit code 0."""
    capsys.readouterr()
    code = lm(["analyze", f"ckpt={ckpt}", f"out={tmp_path}", *settings])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def image_size(path) -> tuple[int, int]:
    """(height, width) in pixels of a PNG, read back by matplotlib."""
    return matplotlib.image.imread(path).shape[:2]


@pytest.fixture
def ckpt(tiny_trained):
    return tiny_trained.ckpt


def test_attention_writes_one_figure_per_layer_and_every_weight(ckpt, tmp_path, capsys):
    out, _ = run(ckpt, tmp_path, "kind=attention", f"prompt={PROMPT}", capsys=capsys)
    model, tokenizer, _ = load_checkpoint(ckpt)
    L, H, T = model.config.n_layer, model.config.n_head, len(tokenizer.encode(PROMPT))
    for i in range(L):
        assert min(image_size(tmp_path / f"attention_blocks.{i}.png")) > 200
    table = rows(tmp_path / "attention.csv")
    assert len(table) == L * H * T * (T + 1) // 2  # every (query, key <= query) pair
    first = [r for r in table if r["layer"] == "blocks.1" and r["head"] == "2" and r["query_pos"] == "5"]
    assert sum(float(r["weight"]) for r in first) == pytest.approx(1.0, abs=1e-5)
    assert [r["key_token"] for r in first] == ["R", "O", "M", "E", "O", ":"]
    assert f"wrote {tmp_path}/attention_blocks.0.png" in out


def test_heads_table_holds_the_libraries_scores_averaged_over_windows(ckpt, tmp_path, capsys):
    text = (PROMPT + " ") * 4  # longer than block_size: several windows
    out, _ = run(ckpt, tmp_path, "kind=heads", f"prompt={text}", capsys=capsys)
    model, tokenizer, _ = load_checkpoint(ckpt)
    ids = tokenizer.encode(text)
    B = model.config.block_size
    assert len(ids) > B
    expected = mean_head_scores(model, [torch.tensor(ids[i : i + B]) for i in range(0, len(ids), B)])
    table = rows(tmp_path / "heads.csv")
    got = torch.tensor([[float(r["induction"]) for r in table if r["layer"] == f"blocks.{i}"]
                        for i in range(model.config.n_layer)])
    torch.testing.assert_close(got, expected["induction"], atol=1e-6, rtol=0)
    assert "head scores over" in out and (tmp_path / "heads.png").stat().st_size > 0
    assert (tmp_path / "heads.md").read_text().startswith("# head scores over")


def test_heads_on_repeated_random_tokens(ckpt, tmp_path, capsys):
    out, _ = run(ckpt, tmp_path, "kind=heads", "random_tokens=8", "seed=3", capsys=capsys)
    assert "8 random tokens repeated twice" in out


def test_logit_lens_last_row_is_the_models_prediction(ckpt, tmp_path, capsys):
    out, _ = run(ckpt, tmp_path, "kind=logit_lens", f"prompt={PROMPT}", "target=o", capsys=capsys)
    model, tokenizer, _ = load_checkpoint(ckpt)
    ids = torch.tensor(tokenizer.encode(PROMPT))
    with torch.no_grad():
        probs = model(ids[None])[0][0].softmax(-1)  # (T, V)
    table = rows(tmp_path / "logit_lens.csv")
    final = [r for r in table if r["layer"] == f"blocks.{model.config.n_layer - 1}"]
    assert len(final) == len(ids)
    assert final[-1]["target"] == "o"
    assert float(final[-1]["target_p"]) == pytest.approx(float(probs[-1, tokenizer.encode("o")[0]]), abs=1e-5)
    assert float(final[3]["top_p"]) == pytest.approx(float(probs[3].max()), abs=1e-5)
    assert final[3]["target"] == "O"  # "ROMEO": position 3 (E)'s next prompt token
    assert "target 'o' p=" in out and image_size(tmp_path / "logit_lens.png")[1] > 500


def test_patching_table_and_figure(ckpt, tmp_path, capsys):
    out, _ = run(ckpt, tmp_path, "kind=patching", "prompt=ROMEO: But ROM",
                 "prompt_corrupt=MENEN: But ROM", "target=E", "contrast=A", capsys=capsys)
    model, _, _ = load_checkpoint(ckpt)
    table = rows(tmp_path / "patching.csv")
    L, H = model.config.n_layer, model.config.n_head
    assert len([r for r in table if r["patched"] == "resid_pre"]) == L * len("ROMEO: But ROM")
    assert len([r for r in table if r["patched"] == "head_out"]) == L * H
    assert out.startswith("logit['E'] - logit['A']: clean")
    assert min(image_size(tmp_path / "patching.png")) > 200


def test_dla_rows_sum_to_the_printed_total(ckpt, tmp_path, capsys):
    out, _ = run(ckpt, tmp_path, "kind=dla", f"prompt={PROMPT}", "target= ", "contrast=e",
                 capsys=capsys)
    table = rows(tmp_path / "dla.csv")
    total = float(out.split("(sum ")[1].split(")")[0])
    assert sum(float(r["attribution"]) for r in table) == pytest.approx(total, abs=1e-3)
    assert table[0]["component"] == "embed" and table[-1]["component"] == "ln_f.bias"
    assert "logit['␣'] - logit['e']" in out


def test_cache_saves_the_named_activations(ckpt, tmp_path, capsys):
    from safetensors.torch import load_file

    run(ckpt, tmp_path, "kind=cache", "names=blocks.0.attn.hook_z,hook_logits", "prompt=ROMEO",
        capsys=capsys)
    saved = load_file(tmp_path / "cache.safetensors")
    assert set(saved) == {"blocks.0.attn.hook_z", "hook_logits"}
    model, tokenizer, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokenizer.encode("ROMEO")]))
    torch.testing.assert_close(saved["hook_logits"], logits, atol=0, rtol=0)


@pytest.mark.parametrize("settings, message", [
    (["kind=lens"], ("kind='lens' must be one of ['attention', 'logit_lens', 'patching', 'dla', "
                     "'heads', 'cache']")),
    (["kind=cache", "names=blocks.0.hook_nothing"],
     "pattern 'blocks.0.hook_nothing' matches no hook point (closest: "),
    (["kind=dla", "target=RO"],
     "target='RO' is 2 tokens ['R', 'O'] of this tokenizer; it must be exactly one token"),
    (["kind=patching", "prompt=ROMEO", "prompt_corrupt=ROME", "target=E", "contrast=A"],
     "prompt and prompt_corrupt must be the same number of tokens for patching; they are 5 and 4"),
    (["kind=patching", "prompt=ROMEO"], "kind=patching needs prompt_corrupt=, target= and contrast="),
    (["kind=logit_lens", "prompt=" + "ROMEO " * 20],
     "prompt is 120 tokens, longer than the model's block_size="),
    (["kind=attention", "random_tokens=500"], "random_tokens=500 must be in [1, "),
    (["kind=attention", "layers=[7]"], "pattern 'blocks.7.attn.hook_pattern' matches no hook point"),
    (["kind=dla", "random_tokens=4"], "random_tokens=4 applies to kind=attention or kind=heads"),
])
def test_bad_input_is_one_line_and_exit_code_2(ckpt, tmp_path, capsys, settings, message):
    capsys.readouterr()
    assert lm(["analyze", f"ckpt={ckpt}", f"out={tmp_path / 'out'}", *settings]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_checkpoint_without_a_model_is_one_line(tmp_path, tiny_trained, capsys):
    path = tmp_path / "no_model.ckpt"
    good = torch.load(tiny_trained.ckpt, weights_only=True)
    torch.save({k: v for k, v in good.items() if k != "state_dict"}, path)
    assert lm(["analyze", f"ckpt={path}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "state_dict" in err
