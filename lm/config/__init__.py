"""Hydra plumbing: the config schema, composing, checking a command line, validating.

Import from the submodules:

- ``schema.py``: the dataclasses that type ``conf/train.yaml`` (``TrainConfig`` and its
  nodes, the optimizer and scheduler option schemas), their registration in Hydra's
  ConfigStore, and ``typed`` (a command's config as its dataclass).
- ``compose.py``: ``CONF_DIR``, ``compose_config``, ``register_configs`` (the schemas and
  resolvers, the hook every entry point calls first) and the config groups ``--help`` lists.
- ``overrides.py``: a command line split into flags and overrides, free text quoted for
  Hydra's grammar, and ``check_overrides`` with its one-line errors, before Hydra starts.
- ``validate.py``: ``validate`` (``Validated``): the ranges, keys and devices a config is
  checked against before any work, as ``ConfigError`` (one line).
- ``app.py``: ``Command`` and ``run_hydra``: an ``lm`` command run under ``@hydra.main``.
"""
