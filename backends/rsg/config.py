"""RSG configuration: the phase schedule is data (a tuple of :class:`Phase`), not branches in a loop."""
from __future__ import annotations

from dataclasses import dataclass

from redegrade.errors import ConfigError

SPACES = ("w", "w+", "w++")


@dataclass(frozen=True)
class Phase:
    """One optimisation phase.

    ``space`` is the latent space (``w``: one 512-vector broadcast to every layer; ``w+``: one per
    layer; ``w++``: 512 per layer, RSG's filter-wise modulation). The latent always moves by
    normalised gradient descent with ``lr``. ``variables_lr`` is the Adam learning rate of the forward
    model's variables (e_g, e_l, n for the Redegrader); ``None`` keeps them frozen in this phase.
    """

    name: str
    space: str
    steps: int
    lr: float
    variables_lr: float | None = None

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ConfigError(f"phase {self.name}: unknown latent space {self.space!r}; choose one of {SPACES}")
        if self.steps < 0 or self.lr <= 0 or (self.variables_lr is not None and self.variables_lr <= 0):
            raise ConfigError(f"phase {self.name}: steps must be ≥ 0 and learning rates > 0")


@dataclass
class RSGConfig:
    """Settings of the RSG backend (seed 001 §5.3 on top of RSG, Poirier-Ginter & Lalonde 2023).

    The schedule is V → W → W+ → W++ with ``steps`` steps each; the variables of the forward model that
    :attr:`optimise` names move after V (by default none: e = E(y) and n stay fixed, V is skipped, and
    the loop is RSG's W → W+ → W++ through the redegrader):

    ====== ======= ================ ==================================================
    phase  space   latent lr (NGD)  forward-model variables (Adam)
    ====== ======= ================ ==================================================
    V      w       ``v_lr`` 0.08    frozen (the seed paper's V phase: only w moves)
    W      w       ``w_lr`` 0.08    ``variables_lr`` (0.01)
    W+     w+      ``wplus_lr`` 0.02 ``variables_lr · wplus_lr / w_lr`` (0.0025)
    W++    w++     ``wpp_lr`` 0.005  ``variables_lr · wpp_lr / w_lr`` (0.000625)
    ====== ======= ================ ==================================================

    V starts from ``G.mapping.w_avg``; each later phase starts where the previous one ended. Our
    choices (no published code has them, tech-facts §6): V is as long as the other phases and uses
    W's learning rate, so the image is roughly right before e_g, e_l and n may explain it away; the
    variables use Adam (per-element step sizes suit tensors as different as a 256-vector, [0,1] maps and
    N(0,1) noise maps, where NGD's per-row normalisation would be arbitrary), with a fresh Adam per phase
    and a learning rate that decays with the latent's, as RSG decays its own.
    ``phases`` picks a sub-sequence, e.g. ``"W,W+,W++"`` is plain RSG (no V phase).
    """

    generator: str = "stylegan2.ffhq1024"
    """Generator checkpoint: a registry name or a file ``redegrade_stylegan2.load_generator`` reads."""
    steps: int = 150
    """Steps per phase (every phase; small values make quick runs)."""
    loss: str = "lpips"
    """Objective name for :func:`redegrade.objective.build` when no objective is passed in."""
    seed: int = 0
    device: str = "auto"
    phases: str = "V,W,W+,W++"
    """Comma-separated phases to run, in order, from V, W, W+, W++ (e.g. ``W,W+,W++`` = plain RSG)."""
    v_lr: float = 0.08
    w_lr: float = 0.08
    wplus_lr: float = 0.02
    wpp_lr: float = 0.005
    variables_lr: float = 0.01
    """Adam learning rate of the forward model's variables in the W phase (scaled like the latent's after)."""
    optimise: str = ""
    """Which forward-model variables the phases after V may move, by name or prefix (``n`` = every noise
    map); the rest stay where ``reset`` put them (e = E(y), n seeded), and V, which only holds them, is
    skipped when none moves. ``"e_g,e_l,n"`` is the seed paper's schedule. Fixed is the default: on
    in-range targets moving them let the redegrader absorb what the generator got wrong (see
    ``benchmarks/README.md``)."""

    def optimised(self, names: list[str]) -> list[str]:
        """The variable names among ``names`` that :attr:`optimise` selects."""
        keys = [k.strip() for k in self.optimise.split(",") if k.strip()]
        return [n for n in names if any(n == k or n.startswith(k + ".") for k in keys)]

    def schedule(self) -> tuple[Phase, ...]:
        """The phases to run, as data."""
        scale = self.variables_lr / self.w_lr
        table = {
            "V": Phase("V", "w", self.steps, self.v_lr, None),
            "W": Phase("W", "w", self.steps, self.w_lr, self.variables_lr),
            "W+": Phase("W+", "w+", self.steps, self.wplus_lr, self.wplus_lr * scale),
            "W++": Phase("W++", "w++", self.steps, self.wpp_lr, self.wpp_lr * scale),
        }
        names = [p.strip() for p in self.phases.split(",") if p.strip()]
        unknown = [n for n in names if n not in table]
        if unknown or not names:
            raise ConfigError(f"phases={self.phases!r}: use a comma-separated sequence of {', '.join(table)}")
        order = list(table)
        if [order.index(n) for n in names] != sorted(order.index(n) for n in set(names)):
            raise ConfigError(f"phases={self.phases!r}: phases must be distinct and in the order V, W, W+, W++")
        return tuple(table[n] for n in names)
