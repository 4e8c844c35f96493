"""Config composition for tests: the real conf/ tree, the tiny model, small step budgets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
SHARED_DREAMBOOTH = PROJECT_ROOT.parent / "shared" / "datasets" / "dreambooth"

# Small but real: every code path runs, a few updates each.
TINY = [
    "model=tiny", "metrics=tiny", "progress=false", "log_every=1000", "train_batch_size=1",
    "ldet.batch_size=4", "sampling.steps=2", "sampling.n_train_prompts=2", "sampling.save_images=none",
]
SMALL_STRATEGY = {
    "baseline": ["strategy.max_steps=4", "strategy.eval_every=2"],
    "clip_s": ["strategy.max_steps=8", "strategy.eval_every=2", "strategy.patience=0", "strategy.eps=0.5"],
    "few_iters": ["strategy.steps=3"],
    "few_iters_mean": ["strategy.steps=2"],
    "few_iters_max": ["strategy.steps=3"],
    "dvar": ["strategy.max_steps=12", "strategy.window=3", "strategy.threshold=0.9"],
}
SMALL_METHOD = {"custom_diffusion": ["method.prior.num_class_images=2"]}


def compose(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """conf/run.yaml composed with overrides and resolved to a plain dict (what `run` receives)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from benchmark.protocol.config import resolve

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="run", overrides=list(overrides))
    return resolve(cfg)


def tiny_run_config(method: str, strategy: str, results: Path, *extra: str) -> dict:
    return compose([*TINY, f"method={method}", f"strategy={strategy}", f"paths.results={results}",
                    *SMALL_STRATEGY.get(strategy, []), *SMALL_METHOD.get(method, []), *extra])


TIMING = ("train_s", "ldet_s", "sampling_s", "wall_s", "scoring_s")


def without_timing(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in TIMING if c in df.columns]).sort_values("step").reset_index(drop=True)
METHOD_NAMES = ["textual_inversion", "dreambooth_lora", "custom_diffusion"]


def fitted(cfg: dict):
    """Train one run and keep its live trajectory (models, method, data) for inspection."""
    from benchmark.engine.observer import Observer
    from benchmark.engine.train import Session

    session = Session([Observer(cfg)], share_models=True)
    session.run()
    return session.trajectory, session.observers[0].row


def set_up(cfg: dict):
    """A trajectory set up (models loaded, method installed, data decoded), not trained."""
    from benchmark.engine.trajectory import Trajectory

    t = Trajectory(cfg, share_models=True)
    t.setup()
    return t
