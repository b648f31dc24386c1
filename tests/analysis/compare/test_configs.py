"""lm/analysis/compare/configs.py: config diffs (nested keys, hooks as one change) and
content keys compared by digest."""

import hashlib

from lm.analysis.compare.configs import ABSENT, config_diff
from lm.analysis.compare.labels import describe_diff
from lm.analysis.compare.report import compare
from lm.training.hashing import hashable_config
from tests.analysis.conftest import make_config, make_run


def test_config_diff_gives_nested_keys_old_to_new_without_seed_or_excluded_keys():
    base = hashable_config(make_config())
    other = hashable_config(make_config({
        "seed": 7, "optimizer.lr": 3e-4, "model.n_layer": 4,
        "trainer.log_every_n_steps": 1, "paths.output_dir": "elsewhere",  # not in the hash
    }))
    assert config_diff(base, other) == [("model.n_layer", 2, 4), ("optimizer.lr", 1e-3, 3e-4)]
    other["model"]["bias"] = False
    assert ("model.bias", ABSENT, False) in config_diff(base, other)
    assert describe_diff([("optimizer.lr", 1e-3, 3e-4)]) == "optimizer.lr: 1e-3 -> 3e-4"


def test_adding_a_hook_is_one_change_and_reordering_hooks_is_one_too():
    clip = {"_target_": "lm.hooks.GradClipCustom", "max_norm": 1.0}
    z = {"_target_": "lm.hooks.ZLoss", "weight": 1e-4}
    base = {"seed": 0, "hooks": {"order": []}}
    one = {"seed": 0, "hooks": {"order": ["grad_clip_custom"], "grad_clip_custom": clip}}
    assert config_diff(base, one) == [("hooks.grad_clip_custom", ABSENT, clip)]
    ab = {"seed": 0, "hooks": {"order": ["grad_clip_custom", "z_loss"],
                               "grad_clip_custom": clip, "z_loss": z}}
    ba = {"seed": 0, "hooks": {**ab["hooks"], "order": ["z_loss", "grad_clip_custom"]}}
    assert config_diff(ab, ba) == [
        ("hooks.order", ["grad_clip_custom", "z_loss"], ["z_loss", "grad_clip_custom"])]
    changed = {"seed": 0, "hooks": {"order": ["grad_clip_custom"],
                                    "grad_clip_custom": {**clip, "max_norm": 0.5}}}
    assert config_diff(one, changed) == [("hooks.grad_clip_custom.max_norm", 1.0, 0.5)]


def test_content_keys_are_compared_by_digest_and_named_by_path(tmp_path):
    corpus = tmp_path / "corpora"
    corpus.mkdir()
    for name, text in [("a.txt", "to be"), ("copy.txt", "to be"), ("c.txt", "or not")]:
        (corpus / name).write_text(text)
    runs = tmp_path / "runs"
    make_run(runs, "a", {"data.path": str(corpus / "a.txt")})
    make_run(runs, "copy", {"data.path": str(corpus / "copy.txt"), "seed": 1})  # same bytes
    make_run(runs, "c", {"data.path": str(corpus / "c.txt")})
    result = compare([str(runs)], str(runs / "a"))
    digest = hashlib.sha256(b"or not").hexdigest()
    assert [r["group"] for r in result["rows"]] == [
        "baseline", f"data.path={corpus / 'c.txt'} (sha256 {digest[:8]})"]
    assert result["rows"][0]["n"] == 2
    assert result["legends"][1] == f"data.path=c.txt@{digest[:6]}"
