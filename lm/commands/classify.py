"""``lm classify``: micrograd's two-moons demo on the scalar autograd engine.

    lm classify [steps=100] [seed=0] [out=outputs/reference/moons.png]

Settings: ``conf/classify.yaml``. The data, the model and the training loop are
``lm/reference/classify.py``'s.
"""

from dataclasses import dataclass

from lm.reference.classify import demo


@dataclass
class ClassifyConfig:
    """The settings of ``lm classify``: their types. Defaults and meaning:
    ``conf/classify.yaml``."""

    steps: int
    seed: int
    out: str


def classify_command(cfg: ClassifyConfig) -> int:
    """``lm classify``: the demo; exit code 0 whether or not it reached 100% accuracy.

    Raises:
        ValueError: ``steps`` < 1 (one line).
    """
    demo(cfg.steps, cfg.seed, cfg.out)
    return 0
