"""Muon on the hidden matrices, AdamW on the rest, as one optimizer for Lightning.

Muon (Jordan et al. 2024) orthogonalises each 2-D weight's momentum by a Newton-Schulz
iteration; it is meant for the matrices inside the blocks only. Embeddings, the head,
biases and norm gains keep AdamW (Loshchilov & Hutter, 2019). Lightning's automatic
optimization steps one optimizer object, so ``MuonWithAdamW`` holds a
``torch.optim.Muon`` and a ``torch.optim.AdamW`` and shows their groups as its own.

Sources:
    Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"
    (kellerjordan.github.io/posts/muon), and ``MuonWithAuxAdam`` in KellerJordan/Muon
    ``muon.py`` (one optimizer over groups flagged ``use_muon``).
    Liu et al. 2025, "Muon is Scalable for LLM Training" (``adjust_lr_fn="match_rms_adamw"``).
    Jordan et al., modded-nanogpt (Muon for the blocks, Adam for embeddings and head).
"""

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.optim._muon as torch_muon

from lm.model import GPT

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
NS_DTYPES = ("bfloat16", "float32")


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float],
                       ns_steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation of a 2-D (A, B) matrix,
    step for step, but in the gradient's own dtype (float32) instead of bfloat16.

    X <- G / ||G||_F (transposed so A <= B); ns_steps times: M = X X^T,
    X <- a X + (b M + c M M) X; returns (A, B). A CPU without bfloat16 matrix units
    runs bfloat16 matmuls about 25x slower than float32 (0.87 s against 0.03 s per step
    for model=small's 16 matrices on this project's 2-core machine).
    """
    a, b, c = ns_coefficients
    x = grad.clone()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T  # (A, A)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


@contextmanager
def newton_schulz_dtype(dtype: str) -> Iterator[None]:
    """Run torch.optim.Muon's steps in this block with its Newton-Schulz iteration in
    ``dtype``: ``"bfloat16"`` (torch's own, fast on GPUs) or ``"float32"``
    (``newton_schulz_fp32``, for CPUs). torch looks the function up in its module at
    each step, so it is swapped there for the block and restored after it."""
    if dtype == "bfloat16":
        yield
        return
    original = torch_muon._zeropower_via_newtonschulz
    torch_muon._zeropower_via_newtonschulz = newton_schulz_fp32
    try:
        yield
    finally:
        torch_muon._zeropower_via_newtonschulz = original


def muon_param_groups(model: GPT) -> list[dict]:
    """Split a GPT's trainable parameters into three groups, by its own names
    (``GPT.named_layers()``), each parameter once (a tied head is ``wte``'s tensor):

    1. ``use_muon=True``: every 2-D weight inside ``blocks.{i}`` (``attn.c_attn``,
       ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``; attention-only blocks have the first
       two): Muon, with Muon's weight decay.
    2. ``use_muon=False``: the other tensors of 2 or more dimensions (``wte``, ``wpe``,
       ``lm_head``): AdamW, with AdamW's decoupled weight decay.
    3. ``use_muon=False, weight_decay=0``: 1-D tensors (biases, norm gains): AdamW, never
       decayed (nanoGPT's rule).

    Raises:
        ValueError: a trainable parameter that no part of ``named_layers()`` holds.
    """
    hidden, embeddings, vectors = [], [], []
    seen: set[int] = set()
    for name, module in model.named_layers().items():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if p.dim() == 2 and name.startswith("blocks."):
                hidden.append(p)
            elif p.dim() >= 2:
                embeddings.append(p)
            else:
                vectors.append(p)
    missed = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missed:
        raise ValueError(f"parameters outside GPT.named_layers() cannot be grouped for Muon: {missed}")
    return [
        {"params": hidden, "use_muon": True},
        {"params": embeddings, "use_muon": False},
        {"params": vectors, "use_muon": False, "weight_decay": 0.0},
    ]


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the groups flagged ``use_muon``, AdamW on the others, stepped together.

    ``param_groups`` lists every group (Muon's then AdamW's, in the order given), so a
    ``LambdaLR`` scales each group's own learning rate and gradient clipping sees every
    parameter; ``state`` holds both optimizers' state, and ``state_dict`` /
    ``load_state_dict`` are ``torch.optim.Optimizer``'s (an exact round trip).

    Args:
        params: groups from ``muon_param_groups`` (dicts with ``use_muon``), or plain
            tensors, of which the 2-D ones go to Muon.
        lr: Muon's peak learning rate (before ``adjust_lr_fn``'s per-shape factor).
        momentum, nesterov, ns_steps: Muon's momentum, Nesterov flag and number of
            Newton-Schulz iterations.
        weight_decay: Muon's decoupled weight decay (``p *= 1 - lr * weight_decay``).
        adjust_lr_fn: Muon's per-shape lr factor for an (A, B) matrix: ``None`` or
            ``"original"`` sqrt(max(1, A / B)) (Jordan), ``"match_rms_adamw"``
            0.2 sqrt(max(A, B)) (Liu et al.).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: AdamW's settings; a group
            that sets its own ``weight_decay`` (1-D tensors: 0) keeps it.
        ns_dtype: dtype of Muon's Newton-Schulz iteration: ``"bfloat16"`` (torch's
            Muon as it is) or ``"float32"`` (the same iteration in float32, via
            ``newton_schulz_dtype``: on CPUs bfloat16 matmuls are emulated and slow).

    Raises:
        ValueError: one line naming the ``optimizer.<key>`` out of range.
    """

    @staticmethod
    def param_groups_for(model: GPT) -> list[dict]:
        """The groups ``LMModule.configure_optimizers`` passes (``muon_param_groups``)."""
        return muon_param_groups(model)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float,
        nesterov: bool,
        ns_steps: int,
        weight_decay: float,
        adjust_lr_fn: str | None,
        adamw_lr: float,
        adamw_betas: Sequence[float],
        adamw_eps: float,
        adamw_weight_decay: float,
        ns_dtype: str = "bfloat16",
    ) -> None:
        _check_ranges(lr, momentum, ns_steps, weight_decay, adjust_lr_fn,
                      adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay)
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"optimizer.ns_dtype={ns_dtype} must be one of {list(NS_DTYPES)}")
        self.ns_dtype = ns_dtype
        groups = list(params)
        if groups and not isinstance(groups[0], dict):  # plain tensors: split by shape
            groups = [{"params": [p for p in groups if p.dim() == 2], "use_muon": True},
                      {"params": [p for p in groups if p.dim() != 2], "use_muon": False}]
        super().__init__(groups, defaults={})
        # Each inner optimizer fills in its defaults on the shared group dicts.
        self.muon = torch.optim.Muon(
            self._groups(use_muon=True), lr=lr, momentum=momentum, nesterov=nesterov,
            ns_steps=ns_steps, weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn)
        self.adamw = torch.optim.AdamW(
            self._groups(use_muon=False), lr=adamw_lr, betas=tuple(adamw_betas),
            eps=adamw_eps, weight_decay=adamw_weight_decay)
        self._share()

    def _groups(self, use_muon: bool) -> list[dict]:
        # Optimizer rejects an empty group list; an empty group is fine.
        groups = [g for g in self.param_groups if g["use_muon"] == use_muon]
        return groups or [{"params": [], "use_muon": use_muon}]

    def _share(self) -> None:
        """Point both inner optimizers at this one's group dicts and state."""
        self.muon.param_groups = [g for g in self.param_groups if g["use_muon"]]
        self.adamw.param_groups = [g for g in self.param_groups if not g["use_muon"]]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        """Call ``closure`` once (forward and backward, under grad), then step Muon and
        AdamW; return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with newton_schulz_dtype(self.ns_dtype):
            self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Optimizer.load_state_dict`` (which makes new group dicts and a new state),
        then the inner optimizers are pointed at them."""
        super().load_state_dict(state_dict)
        self._share()

    def __getstate__(self) -> dict[str, Any]:  # copy and pickle keep the inner optimizers
        return {**super().__getstate__(), "muon": self.muon, "adamw": self.adamw,
                "ns_dtype": self.ns_dtype}


def _check_ranges(lr, momentum, ns_steps, weight_decay, adjust_lr_fn,
                  adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay) -> None:
    rules = [
        ("lr", lr, lr > 0, "> 0"),
        ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
        ("ns_steps", ns_steps, 1 <= ns_steps < 100, "in [1, 100)"),
        ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
        ("adjust_lr_fn", adjust_lr_fn, adjust_lr_fn in ADJUST_LR_FNS,
         "null, original or match_rms_adamw"),
        ("adamw_lr", adamw_lr, adamw_lr > 0, "> 0"),
        ("adamw_betas", list(adamw_betas),
         len(adamw_betas) == 2 and all(0 <= b < 1 for b in adamw_betas), "two values in [0, 1)"),
        ("adamw_eps", adamw_eps, adamw_eps > 0, "> 0"),
        ("adamw_weight_decay", adamw_weight_decay, adamw_weight_decay >= 0, ">= 0"),
    ]
    for key, value, ok, rule in rules:
        if not ok:
            raise ValueError(f"optimizer.{key}={value} must be {rule}")
