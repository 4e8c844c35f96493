"""Real scale without the hub: the real-shape twins run end to end (at 256 px here, which also shows
that the configured resolution reaches every stage; `make real-shape` runs them at 512 px), the weights of
`model=sd15 metrics=real` are fetched or listed, and the preflight catches what would fail on a
cluster before anything is submitted.

The twins are SD v1.5's and the metric models' exact architectures with random weights; the test
fills the libraries' caches with them by hand, as a user without network would with real files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from benchmark.engine.backbone import resolve_pretrained
from benchmark.protocol.config import cache_root
from benchmark.store import records
from benchmark.weights.files import required_files
from tests.helpers import PROJECT_ROOT, compose
from tests.twin_caches import fill_metrics, fill_sd, hub_env

pytestmark = pytest.mark.slow
METHODS = ("textual_inversion", "dreambooth_lora", "custom_diffusion")
SAMPLE = PROJECT_ROOT / "concepts" / "sample" / "duck_toy"
REAL_SHAPE = ["model=sd15_twin", "metrics=real_twin", "ldet.batch_size=2", "sampling.steps=1",
              "sampling.n_train_prompts=1", "sampling.n_val_prompts=1", "progress=false", "log_every=1"]


def cli(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def twin_folder() -> Path:
    """SD v1.5's architecture with random weights, built once into the test cache (4 GB, ~40 s)."""
    cfg = compose(["model=sd15_twin"])
    return Path(resolve_pretrained(cfg["model"], cache_root(cfg))[0])


@pytest.fixture(scope="module")
def filled_caches(twin_folder, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("caches")
    cfg = compose(["model=sd15", "metrics=real"])
    files = required_files(cfg)
    fill_sd(root, [f for f in files if f.what.startswith("model")], twin_folder)
    fill_metrics(root, compose(["metrics=real_twin"])["metrics"], files)
    return root


def concept_data(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for f in SAMPLE.glob("*.jpg"):
            shutil.copy(f, root / name / f.name)
    return root


def test_textual_inversion_with_dvar_runs_end_to_end_at_real_shape(tmp_path, twin_folder):
    from benchmark.engine.train import run

    results = tmp_path / "results"
    # 256 px: SD v1.5's every weight and code path at a quarter of the activations (about 3x faster on
    # 2 cores, which keeps CI near 20 minutes); 512 is the architecture's default, so it would not show
    # a resolution the code forgot to pass.
    cfg = compose([*REAL_SHAPE, "model.resolution=256", "method=textual_inversion", "strategy=dvar", "strategy.max_steps=2",
                   "strategy.window=2", "strategy.threshold=0.5", f"paths.results={results}"])
    row = run(cfg)
    assert row["status"] == "completed" and row["model_identity"].startswith("built-")
    steps = records.read(results, "steps").sort_values("step")
    assert list(steps.step) == list(range(row["iterations"] + 1)) and steps.l_det.notna().all()
    final = records.read(results, "evals").query("phase == 'final'").iloc[0]
    for metric in ("train_clip_img", "val_clip_img", "val_clip_txt", "dino", "div"):
        assert -1.0 <= final[metric] <= 1.0 or metric == "div" and final[metric] >= 0, metric
    from safetensors.torch import load_file

    learned = load_file(next((results / row["weights_dir"]).glob("*.safetensors")))
    assert [tuple(t.shape) for t in learned.values()] == [(1, 768)], "one token of CLIP ViT-L/14's width"
    grid = Image.open(next((results / "work" / "default" / row["run_id"] / "samples").glob("*.png")))
    assert grid.size == (3 * 256, 256), "one train and two val images at the configured 256 px"


def test_fetch_without_network_fails_at_once_naming_every_file(tmp_path):
    t0 = time.perf_counter()
    proc = cli(["-m", "benchmark.weights", "fetch", "model=sd15", "metrics=real"], hub_env(tmp_path))
    assert proc.returncode == 2 and time.perf_counter() - t0 < 60
    err = proc.stderr
    assert "15 weight files are missing here" in err
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "tokenizer/vocab.json",
                 "open_clip_model.safetensors", "timm/vit_small_patch16_224.dino", "alexnet-owt-7be5be79.pth"):
        assert name in err, name
    assert "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/451f4fe16113bff5a5d2269ed5ad43b0592e9a14/unet/diffusion_pytorch_model.safetensors" in err
    assert f"{tmp_path}/hub/models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots/451f4fe" in err
    assert f"{tmp_path}/torch/hub/checkpoints/alexnet-owt-7be5be79.pth" in err
    assert not (tmp_path / "hub").exists() and not (tmp_path / "torch").exists(), "nothing written"


def test_filled_caches_are_found_verified_and_checked(filled_caches):
    env = hub_env(filled_caches)
    listing = cli(["-m", "benchmark.weights", "list", "model=sd15", "metrics=real"], env)
    assert listing.returncode == 0 and "15 files, 0 missing" in listing.stdout
    fetched = cli(["-m", "benchmark.weights", "fetch", "model=tiny", "metrics=real"], env)
    # The CLIP and DINO blobs are named by their SHA-256 and check out; the twin's AlexNet is not
    # torchvision's file, and fetch says so instead of trusting the name.
    assert fetched.returncode == 2 and "alexnet-owt-7be5be79.pth: the bytes do not match their sha256-prefix" in fetched.stderr


def test_preflight_passes_offline_and_the_dry_run_prices_table1(filled_caches, tmp_path):
    data = concept_data(tmp_path / "data", "dog", "cat")
    args = ["-m", "benchmark.sweep", "experiment=table1", f"paths.data={data}", f"paths.results={tmp_path / 'results'}",
            f"paths.cache={tmp_path / 'cache'}", "--dry-run", "concept=dog,cat"]
    proc = cli(args, hub_env(filled_caches))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ok    15 weight files in the cache, every model loads with the network off" in out
    assert "ok    class images: 400 to generate" in out
    assert "estimate on NVIDIA A100 80GB" in out and "Slurm time limit per job:" in out
    rows = [r for r in map(str.split, out.splitlines()) if len(r) == 8 and r[0] in METHODS]
    assert len(rows) == 15 and all(r[2] == "2" for r in rows), "2 runs per method x strategy"
    assert all(float(r[4]) <= float(r[6]) for r in rows), "expected minutes never exceed the worst case"
    assert "phase 1: 18 runs to do" in out, "Few-iters wait for CLIP-s"
    assert not (tmp_path / "results").exists(), "a dry run writes nothing"


def test_preflight_lists_every_failure_at_once(filled_caches, tmp_path):
    data = concept_data(tmp_path / "data", "dog", "cat")
    (data / "cat" / "01.jpg").write_bytes(b"not a jpeg")
    blocker = tmp_path / "a_file"  # a results folder that cannot be created, even by root
    blocker.write_text("")
    env = {**hub_env(filled_caches), "TORCH_HOME": str(tmp_path / "empty_torch_home")}  # AlexNet is missing
    proc = cli(["-m", "benchmark.preflight", "experiment=table1", f"paths.data={data}",
                f"paths.results={blocker / 'results'}", "method.learning_rate=-1", "concept=dog,cat"], env)
    assert proc.returncode == 2
    err = proc.stderr
    assert "the sweep cannot start: 4 problems, nothing was submitted" in err
    assert "method.learning_rate must be a number in (0, 1] (got -1)" in err
    assert "cat/01.jpg: not an image file" in err
    assert "1 weight files are not in the cache" in err and "alexnet-owt-7be5be79.pth" in err
    assert f"paths.results={blocker / 'results'}: not writable" in err
