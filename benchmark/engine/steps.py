"""A step of a trajectory as it passes from the loop to every run observing it (and into the
snapshot's trace, from which a run that joins later takes its earlier rows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Update:
    """What one optimizer update gives: the loss, the unscaled gradient norm, and under fp16 the loss
    scale and whether the GradScaler skipped the update (the gradient norm is then None)."""

    train_loss: float
    grad_norm: float | None
    loss_scale: float | None = None
    update_skipped: bool | None = None


@dataclass
class LdetPass:
    """L_det of one variant at one step: its columns (l_det, interval losses) and its seconds."""

    values: dict[str, float]
    seconds: float


@dataclass
class Step:
    """Step k (the state after k updates; step 0 has no update) and the L_det of each variant any
    observer computed there, keyed by `benchmark.protocol.config.ldet_variant`."""

    step: int
    train_loss: float | None = None
    grad_norm: float | None = None
    loss_scale: float | None = None
    update_skipped: bool | None = None
    lr: float | None = None
    train_s: float = 0.0
    ldet: dict[str, LdetPass] = field(default_factory=dict)

    @classmethod
    def after(cls, step: int, update: Update, lr: float, train_s: float) -> Step:
        return cls(step, **asdict(update), lr=lr, train_s=train_s)

    def columns(self) -> dict:
        """The values every run's `steps` row shares, in the records' column order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ldet"}
