"""The files in conf/: each value written once, and every group option complete.

The schema (lm/config/schema.py) gives types; the YAML files give values, each once:
a comment says a key's purpose and range, never "default X" again, and the model
options inherit their shared keys from conf/model/base/gpt.yaml.
"""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lm.config.compose import CONF_DIR, compose_config

# "default 1e-3", "Default true.", "default every layer": a value said again in a comment.
# Not "(the default)", "by default)", "defaults:" or a key such as default_hp_metric.
RESTATED_DEFAULT = re.compile(r"\b[Dd]efault\b[:;]?\s+\S")
GROUP_DIRS = sorted(d for d in CONF_DIR.rglob("*") if d.is_dir() and d.name != "base")


def comment(line: str) -> str:
    """The comment part of a YAML line ('' if none); a ``#`` inside quotes is not one."""
    quote = None
    for i, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1] in " \t"):
            return line[i + 1:]
    return ""


def test_comment_finds_only_comments():
    assert comment("lr: 1.0e-3   # peak; default 1e-3") == " peak; default 1e-3"
    assert comment('prompt: "a # b"   # text') == " text"
    assert comment("# header") == " header" and comment("url: a#b") == ""
    assert RESTATED_DEFAULT.search(" peak; default 1e-3") and RESTATED_DEFAULT.search(" Default true.")
    assert not RESTATED_DEFAULT.search(" (the default)") and not RESTATED_DEFAULT.search(" by default)")


def test_no_yaml_comment_restates_a_value_as_its_default():
    restated = [f"{path.relative_to(CONF_DIR)}:{n}: {line.strip()}"
                for path in sorted(CONF_DIR.rglob("*.yaml"))
                for n, line in enumerate(path.read_text().splitlines(), 1)
                if RESTATED_DEFAULT.search(comment(line))]
    assert not restated, "write each value once (the YAML value):\n" + "\n".join(restated)


def test_model_options_set_their_size_and_only_what_differs_from_the_base():
    base = OmegaConf.load(CONF_DIR / "model" / "base" / "gpt.yaml")
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        option = OmegaConf.load(path)
        assert "base/gpt@_here_" in option.defaults, path.name
        # set here, or GPTConfig's own default would fill in silently
        assert {"n_layer", "n_head", "n_embd", "block_size"} <= set(option), path.name
        same = [k for k in option if k in base and option[k] == base[k]]
        assert not same, f"{path.name} repeats the base's {same}"


def _options():
    for group in GROUP_DIRS:
        for path in sorted(group.glob("*.yaml")):
            yield str(group.relative_to(CONF_DIR)), path


@pytest.mark.parametrize("group,path", list(_options()),
                         ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_every_option_sets_every_key_it_does_not_require(group, path):
    """The schema leaves values to the YAML files (MISSING), so an option file that
    left a key out would compose to ``???``; only keys its own file marks ``???`` may
    stay unset."""
    cfg = compose_config([f"{group}={path.stem}", "paths.output_dir=x"])
    missing = {key.rsplit(".", 1)[-1] for key in OmegaConf.missing_keys(cfg)}
    own = OmegaConf.load(path)
    required = {k for k in own if OmegaConf.is_missing(own, k)}
    assert missing <= required, f"{group}={path.stem} leaves unset: {sorted(missing - required)}"


def defaults_comments() -> dict[str, str]:
    """Each entry of conf/train.yaml's defaults list (``model``, ``hydra/help``) -> its
    comment, with the comment lines below it that continue it."""
    comments, entry = {}, None
    lines = (CONF_DIR / "train.yaml").read_text().split("\ndefaults:\n", 1)[1].splitlines()
    for line in lines:
        if not line.startswith(" "):
            break
        if match := re.match(r"\s+- (?:override )?([\w/]+)[^#]*#\s?(.*)", line):
            entry = match[1]
            comments[entry] = match[2]
        elif (more := re.match(r"\s+#\s?(.*)", line)) and entry:
            comments[entry] += " " + more[1]
    return comments


def test_train_yaml_lists_the_options_each_group_has():
    """A list ``a | b | c`` in the comment of a defaults entry names exactly the options
    of that group in conf/ (``data/tokenizer=a | b``: of that group)."""
    lists = [(sub or group, names.split(" | "))
             for group, text in defaults_comments().items()
             for sub, names in re.findall(r"(?:([\w/]+)=)?(\w+(?: \| \w+)+)", text)]
    assert {g for g, _ in lists} >= {"model", "data", "data/tokenizer", "optimizer", "scheduler",
                                     "trainer", "logger", "adapter", "experiment"}
    for group, names in lists:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert sorted(names) == options, f"conf/train.yaml lists {group}: {names}; conf/ has {options}"
