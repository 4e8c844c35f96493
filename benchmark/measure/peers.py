"""Time the diffusers training examples beside our runs, on the same tiny pipeline saved to disk.

Not part of the harness: `python -m benchmark.measure.bench --peers DIR` runs the scripts the user fetched
into DIR (diffusers `examples/textual_inversion/textual_inversion.py` and
`examples/dreambooth/train_dreambooth_lora.py`; nothing of them is kept in this repository).

Both sides run as fresh processes with the same model folder, images, train batch, resolution,
precision (fp32 on CPU) and thread count; each is timed at two step counts and the time per step is
the difference of the wall times over the difference of the steps, which cancels start-up, model
loading and the final save or evaluation. Our runs have L_det monitoring off (the examples have
none) and write their usual records.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark.concepts.manifest import CONCEPTS_DIR
from benchmark.engine.backbone import resolve_pretrained
from benchmark.protocol.config import compose

PEER_SCRIPTS = {"textual_inversion": "textual_inversion.py", "dreambooth_lora": "train_dreambooth_lora.py"}


def theirs(method: str, script: Path, model: str, images: Path, out: Path, steps: int, resolution: int, batch: int) -> list[str]:
    common = ["--pretrained_model_name_or_path", model, "--resolution", str(resolution), "--train_batch_size", str(batch),
              "--max_train_steps", str(steps), "--output_dir", str(out), "--seed", "0", "--mixed_precision", "no",
              "--checkpointing_steps", "1000000", "--dataloader_num_workers", "0", "--report_to", "tensorboard"]
    if method == "textual_inversion":
        return [sys.executable, str(script), "--train_data_dir", str(images), "--placeholder_token", "<duck>",
                "--initializer_token", "toy", "--learnable_property", "object", "--learning_rate", "5e-3",
                "--save_steps", "1000000", *common]
    return [sys.executable, str(script), "--instance_data_dir", str(images), "--instance_prompt", "a photo of sks toy",
            "--learning_rate", "5e-4", "--rank", "4", *common]


def ours(method: str, out: Path, steps: int, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "benchmark.run", f"method={method}", "strategy=few_iters", f"strategy.steps={steps}",
            "ldet.enabled=false", "progress=false", f"paths.results={out}", "concept=sample_duck_toy",
            "sampling.save_images=none", "checkpoint_every=0", *overrides]


def wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def compare(peers: str, overrides: list[str], steps: tuple[int, int]) -> None:
    cfg = compose(overrides)
    model, _ = resolve_pretrained(cfg["model"], Path(cfg["paths"]["cache"]).expanduser())
    project = Path(__file__).resolve().parents[2]
    n1, n2 = steps
    print(f"\npeers (diffusers examples from {peers}), fresh processes, per-step time from {n1} and {n2} steps:")
    print(f"{'method':<20}{'ours ms':>9}{'theirs ms':>11}{'ours/theirs':>13}")
    for method, name in PEER_SCRIPTS.items():
        script = Path(peers) / name
        if not script.exists():
            print(f"{method:<20} skipped: {script} not found")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            images = Path(tmp) / "images"  # the examples read every file of the folder as an image
            images.mkdir()
            for f in (CONCEPTS_DIR / "sample" / "duck_toy").glob("*.jpg"):
                shutil.copy(f, images / f.name)
            t = {}
            for side in ("ours", "theirs"):  # interleave the two step counts to share machine drift
                for n in (n1, n2):
                    out = Path(tmp) / f"{side}{n}"
                    cmd = ours(method, out, n, overrides) if side == "ours" else theirs(
                        method, script, model, images, out, n, cfg["model"]["resolution"], cfg["train_batch_size"])
                    t[side, n] = wall(cmd, project if side == "ours" else Path(tmp))
            mine = (t["ours", n2] - t["ours", n1]) / (n2 - n1)
            peer = (t["theirs", n2] - t["theirs", n1]) / (n2 - n1)
            print(f"{method:<20}{1e3 * mine:>9.1f}{1e3 * peer:>11.1f}{mine / peer:>13.2f}")
