"""The trainer options (conf/trainer/: cpu, debug, gpu, mps, ddp, fsdp), their checks (the
device each needs, faked present or absent), hash, the FSDP strategy, and the SLURM
multi-node example (composed: no cluster here)."""

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lm.config.compose import compose_config
from lm.config.overrides import check_overrides
from lm.config.validate import validate
from lm.errors import ConfigError
from lm.model import Block
from lm.training.hashing import config_hash
from lm.training.strategies import build_strategy


def composed(tmp_path, *overrides):
    return compose_config([f"paths.output_dir={tmp_path}", *overrides])


@pytest.fixture
def devices(monkeypatch):
    """``devices(cuda, mps)``: make this machine have a CUDA GPU, an Apple GPU, or not."""

    def have(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return have


@pytest.mark.parametrize("option, expected", [
    ("ddp", {"strategy": "ddp", "devices": 2, "accelerator": "auto", "precision": "32-true"}),
    ("fsdp", {"strategy": "fsdp", "accelerator": "gpu", "precision": "bf16-mixed", "compile": True}),
    ("mps", {"strategy": "auto", "devices": 1, "accelerator": "mps", "deterministic": False}),
    ("gpu", {"strategy": "auto", "devices": 1, "precision": "bf16-mixed", "compile": True}),
])
def test_each_trainer_option_composes_and_validates(tmp_path, devices, option, expected):
    devices(cuda=True, mps=True)  # where its device is
    cfg = composed(tmp_path, f"trainer={option}")
    assert {key: cfg.trainer[key] for key in expected} == expected
    validate(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.strategy=ddp_spawn"], ("trainer.strategy=ddp_spawn is invalid: must be one of auto, "
     "ddp, fsdp (ddp_spawn is not supported: its processes do not hand their state back to the "
     "launching one; use ddp)")),
    (["trainer.strategy=deepspeed"], "trainer.strategy=deepspeed is invalid: must be one of auto, ddp, fsdp"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0 is invalid: must be an integer >= 1"),
    (["trainer.devices=0"], "trainer.devices=0 is invalid: must be an integer >= 1"),
    (["trainer.peak_tflops=0"], "trainer.peak_tflops=0.0 is invalid: must be null or > 0 (TFLOP/s of one device)"),
    (["trainer=fsdp", "trainer.accelerator=cpu"], ("trainer.accelerator=cpu is invalid: must be gpu "
     "with trainer.strategy=fsdp (FSDP shards over GPUs; on CPUs use trainer=ddp)")),
    (["trainer=mps", "trainer.devices=2"], ("trainer.accelerator=mps is invalid: mps runs on one "
     "device: trainer.devices=1, num_nodes=1, strategy=auto")),
])
def test_bad_trainer_values_get_one_line(tmp_path, devices, overrides, message):
    devices(cuda=True, mps=True)  # the rules, not the machine
    with pytest.raises(ConfigError) as err:
        validate(composed(tmp_path, *overrides))
    assert str(err.value) == message


def test_new_trainer_keys_at_their_defaults_leave_the_hash_alone(tmp_path):
    base = config_hash(composed(tmp_path))
    explicit = ["trainer.strategy=auto", "trainer.num_nodes=1", "trainer.peak_tflops=100"]
    assert config_hash(composed(tmp_path, *explicit)) == base  # peak_tflops: a measure, not the numbers
    assert config_hash(composed(tmp_path, "trainer.devices=2")) != base  # the world size is in it
    assert config_hash(composed(tmp_path, "trainer.num_nodes=2")) != base


NO_CUDA = "a CUDA GPU (torch.cuda.is_available() is False here)"
NO_MPS = "an Apple GPU (torch.backends.mps.is_available() is False here)"
CPU_ONLY = {  # a trainer option -> its line on a machine without CUDA or MPS: before Hydra, in
    # validate (a config composed another way, where the key is all there is to name)
    "gpu": (f"trainer=gpu needs {NO_CUDA}; use trainer=cpu",
            f"trainer.accelerator=gpu needs {NO_CUDA}; use trainer.accelerator=cpu or auto"),
    "mps": (f"trainer=mps needs {NO_MPS}; use trainer=cpu",
            f"trainer.accelerator=mps needs {NO_MPS}; use trainer.accelerator=cpu or auto"),
    "fsdp": (f"trainer=fsdp needs {NO_CUDA}; use trainer=ddp (DDP runs on CPUs too)",
             f"trainer.accelerator=gpu needs {NO_CUDA}; use trainer=ddp (DDP runs on CPUs too)"),
}


@pytest.mark.parametrize("option", CPU_ONLY)
def test_a_trainer_without_its_device_is_one_line_before_hydra_and_in_validate(tmp_path, devices,
                                                                                option):
    devices(cuda=False, mps=False)
    before_hydra, in_validate = CPU_ONLY[option]
    assert check_overrides([f"trainer={option}"]) == before_hydra
    with pytest.raises(ConfigError) as err:
        validate(composed(tmp_path, f"trainer={option}"))
    assert str(err.value) == in_validate


@pytest.mark.parametrize("argv, message", [
    (["trainer=ddp", "trainer.accelerator=gpu"], ("trainer.accelerator=gpu needs a CUDA GPU "
     "(torch.cuda.is_available() is False here); use trainer.accelerator=cpu or auto")),
    (["trainer=cpu", "trainer.accelerator=cuda"], "trainer.accelerator=cuda needs a CUDA GPU"),
    (["-m", "trainer=cpu,gpu"], "trainer=gpu needs a CUDA GPU"),  # each job of a sweep
])
def test_an_accelerator_set_by_key_is_named_by_its_key(devices, argv, message):
    devices(cuda=False, mps=False)
    assert check_overrides(argv).startswith(message)


@pytest.mark.parametrize("argv", [
    ["trainer=ddp"],  # accelerator auto: gloo on CPUs
    ["trainer=ddp", "trainer.accelerator=cpu"],
    ["trainer=cpu", "trainer.accelerator=auto"],
    ["trainer=gpu", "--cfg", "job"],  # only prints the config
    ["trainer=gpu", "--help"],
    ["-m", "experiment=slurm_ddp"],  # the SLURM launcher runs the jobs on GPU nodes
])
def test_what_runs_on_a_cpu_or_runs_elsewhere_passes(tmp_path, devices, argv):
    devices(cuda=False, mps=False)
    assert check_overrides(argv) is None
    if argv[0].startswith("trainer=") and "--cfg" not in argv and "--help" not in argv:
        validate(composed(tmp_path, *argv))


def test_slurm_example_runs_ddp_across_nodes_through_submitit(tmp_path, devices):
    devices(cuda=True, mps=False)  # a GPU node's view
    cfg = compose_config(["experiment=slurm_ddp", f"paths.output_dir={tmp_path}"], with_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    trainer = cfg.trainer
    assert (trainer.strategy, trainer.devices, trainer.num_nodes, trainer.accelerator) == ("ddp", 8, 2, "gpu")
    resized = compose_config(["experiment=slurm_ddp", "trainer.num_nodes=4", "trainer.devices=4",
                              f"paths.output_dir={tmp_path}"], with_hydra=True)
    assert (resized.hydra.launcher.nodes, resized.hydra.launcher.tasks_per_node) == (4, 4)
    validate(cfg)


def test_fsdp_wraps_each_block(tmp_path):
    strategy = build_strategy("fsdp")
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"
    assert build_strategy("ddp") == "ddp" and build_strategy("auto") == "auto"
