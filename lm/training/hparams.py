"""What TensorBoard's HParams tab shows for a run and for a sweep.

Each run writes one *session* (``session_start_pb``): its whole resolved config
(``hparam_values``: defaults included, so a swept value equal to its default still has
a column), named by its run label (``lr:1e-3 1efc3874``: the tab's Trial ID), at its
first validation. It writes no *experiment* summary of its own: TensorBoard then
builds the table from all the sessions under ``--logdir`` and puts the keys whose
values differ first, which are the ones it ticks. A sweep adds one experiment summary
in its own dir when it ends (``write_experiment``): the keys it varied first, then
``val/loss``, ``val/ppl``, ``val/bpb`` and ``train/loss`` as the metric columns.

The protocol buffers come from TensorBoard's own hparams plugin (its v1 summary API),
as Lightning's ``TensorBoardLogger.log_hyperparams`` uses them.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lm.training.hashing import HASH_EXCLUDED_KEYS, drop_dotted, fill_neutral_defaults

# The HParams tab's metric columns, in this order (scalars the runs log).
METRICS = ("val/loss", "val/ppl", "val/bpb", "train/loss")
EXPERIMENT_SUFFIX = ".hparams"  # names the events file of an experiment summary
_INSTANTIATION_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_")


def settings(cfg: DictConfig | dict) -> dict:
    """The resolved config of a run as plain data, without ``HASH_EXCLUDED_KEYS`` (the
    keys that cannot change the numbers) but with every default, a key missing from an
    older run's config filled with its ``HASH_NEUTRAL_DEFAULTS`` value. Paths stay paths
    (the hash holds their digests instead)."""
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    raw = OmegaConf.to_container(OmegaConf.create(raw), resolve=False)  # a copy
    for dotted in HASH_EXCLUDED_KEYS:
        drop_dotted(raw, dotted)
    plain = fill_neutral_defaults(OmegaConf.to_container(OmegaConf.create(raw), resolve=True),
                                  new_groups=False)
    if isinstance(plain.get("adapter"), dict) and plain["adapter"].get("name") == "none":
        plain["adapter"] = {"name": "none"}  # r, alpha, ... mean nothing without one
    return plain


def flatten(tree: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and None become strings (TensorBoard's
    hparams take bool, int, float or str); Hydra's instantiation keys (``_target_``,
    ``_partial_``) are left out."""
    flat = {}
    for key, value in tree.items():
        if key in _INSTANTIATION_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def hparam_values(cfg: DictConfig | dict) -> dict[str, bool | int | float | str]:
    """The HParams tab's values for a run: ``flatten(settings(cfg))``, ordered by key."""
    return dict(sorted(flatten(settings(cfg)).items()))


@rank_zero_only  # the other ranks' loggers write nothing
def write_session(logger: Any, hparams: dict, name: str) -> None:
    """Write the HParams session of a run to ``logger`` (Lightning's
    ``TensorBoardLogger``; anything else is left alone): ``hparams`` as its values,
    ``name`` as its Trial ID (the session group name). Its metrics are the run's own
    scalars (``METRICS``), so no value is written twice."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    if not hasattr(logger, "experiment") or not hasattr(logger.experiment, "_get_file_writer"):
        return
    start = plugin_data_pb2.SessionStartInfo(group_name=name)
    for key, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[key].number_value = value
        else:
            start.hparams[key].string_value = str(value)
    _write(logger.experiment, metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))


def differing_keys(runs: Sequence[dict]) -> list[str]:
    """The keys whose values are not the same in all of ``runs`` (flat hparams dicts; a
    key some runs lack differs), sorted."""
    keys = {k for run in runs for k in run}
    return sorted(k for k in keys if len({repr(run.get(k)) for run in runs}) > 1)


def write_experiment(log_dir: str | Path, runs: Sequence[dict]) -> list[str]:
    """Write a TensorBoard HParams experiment summary into ``log_dir`` for the flat
    hparams of ``runs``: the keys that differ first (flagged, so the tab ticks them),
    then the others; ``METRICS`` as the metric columns. It replaces the one written
    there before (TensorBoard keeps the first it reads of a tag). Returns the
    differing keys.

    TensorBoard reads one experiment summary under its ``--logdir`` (the first run's
    it finds: the logdir's own before those below it), so a sweep writes one in its
    own dir and one in the registry dir (``outputs/``), where the latest sweep's leads.
    """
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    differ = differing_keys(runs)
    # Keys null in every run (options left off) carry nothing; TensorBoard shows the
    # rest by name after the differing ones.
    others = sorted({k for run in runs for k, v in run.items() if v != "None"} - set(differ))
    infos = []
    for key in [*differ, *others]:
        values = [run[key] for run in runs if key in run]
        kind = (api_pb2.DATA_TYPE_BOOL if all(isinstance(v, bool) for v in values) else
                api_pb2.DATA_TYPE_FLOAT64 if all(isinstance(v, (int, float)) for v in values) else
                api_pb2.DATA_TYPE_STRING)
        infos.append(api_pb2.HParamInfo(name=key, type=kind, differs=key in differ))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    remove_experiments(log_dir, below=False)
    with SummaryWriter(str(log_dir), filename_suffix=EXPERIMENT_SUFFIX) as writer:
        _write(writer, metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))
    return differ


def remove_experiments(log_dir: str | Path, below: bool) -> None:
    """Delete the HParams experiment summaries (``write_experiment``) in ``log_dir``, and
    with ``below`` those in the dirs under it too."""
    log_dir, pattern = Path(log_dir), f"events.out.tfevents.*{EXPERIMENT_SUFFIX}"
    for old in log_dir.rglob(pattern) if below else log_dir.glob(pattern):
        old.unlink(missing_ok=True)


def _write(writer: Any, tag: str, data: Any) -> None:
    """Write hparams plugin ``data`` under ``tag`` with ``writer`` (a torch
    ``SummaryWriter``), as TensorBoard's own hparams summaries are written (an empty
    tensor whose metadata carries the data)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    value = Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))
    writer._get_file_writer().add_summary(Summary(value=[value]))


class RunDirLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` writing into the run dir itself (``name=""``,
    ``version=""``), without the ``hparams.yaml`` it saves beside its events: the run
    dir's ``config.yaml`` already says everything, and the hyperparameters are in the
    events (``write_session``)."""

    @rank_zero_only
    def save(self) -> None:
        self.experiment.flush()  # what the base logger's save does, minus the yaml
