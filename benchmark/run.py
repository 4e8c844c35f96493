"""`python -m benchmark.run [overrides]`: one run from the Hydra config in conf/ (see --help)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from benchmark.config import CONF_DIR
from benchmark.errors import ConfigError



def setup_logging() -> None:
    logger = logging.getLogger("dvar")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[dvar] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="run")
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from benchmark.config import refuse_new_keys
    from benchmark.runs import Busy
    from benchmark.train import run

    setup_logging()
    try:
        overrides = list(HydraConfig.get().overrides.task)
        refuse_new_keys(overrides, [o for o in overrides if not o.startswith("+")])
        row = run(cfg, force=bool(cfg.get("force", False)))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Busy as err:
        print(f"busy: {err}", file=sys.stderr)
        sys.exit(3)
    metrics = " ".join(f"{k} {row[k]:.4f}" for k in ("train_clip_img", "val_clip_img", "val_clip_txt", "dino", "div")
                       if row.get(k) is not None)
    print(f"run {row['run_id']}: {row['stop_reason']} after {row['iterations']} steps, reported step "
          f"{row['reported_step']}; {metrics}; {row['total_s'] / 60:.2f} min")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
