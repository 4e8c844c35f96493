"""Bad concepts and images fail before training, naming the file or key and the fix."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from benchmark.concepts.manifest import CONCEPTS_DIR
from benchmark.core.errors import ConfigError
from benchmark.engine.train import run
from tests.helpers import tiny_run_config

SAMPLE = CONCEPTS_DIR / "sample" / "duck_toy"


def concept_dir(data: Path, name: str = "duck_toy") -> Path:
    folder = data / name
    folder.mkdir(parents=True)
    for f in SAMPLE.glob("*.jpg"):
        shutil.copy(f, folder / f.name)
    return folder


def attempt(results: Path, data: Path, concept: str = "duck_toy"):
    cfg = tiny_run_config("textual_inversion", "few_iters", results, f"concept={concept}", f"paths.data={data}")
    return run(cfg, share_models=True)


def assert_nothing_recorded(results: Path):
    assert not results.exists() or not any(results.iterdir()), f"written although the run never started: " \
        f"{sorted(p.relative_to(results) for p in results.rglob('*'))[:5]}"


def test_missing_concept_folder_names_the_fetch_command(tmp_path):
    with pytest.raises(ConfigError, match=r"duck_toy.*does not exist.*benchmark.concepts fetch duck_toy"):
        attempt(tmp_path / "results", tmp_path / "data")
    assert_nothing_recorded(tmp_path / "results")


def test_empty_concept_folder(tmp_path):
    (tmp_path / "data" / "duck_toy").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no images"):
        attempt(tmp_path / "results", tmp_path / "data")


def test_truncated_image_is_named(tmp_path):
    folder = concept_dir(tmp_path / "data")
    data = (folder / "01.jpg").read_bytes()
    (folder / "01.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"01\.jpg: cannot decode"):
        attempt(tmp_path / "results", tmp_path / "data")
    assert_nothing_recorded(tmp_path / "results")


def test_text_file_named_jpg_is_named(tmp_path):
    folder = concept_dir(tmp_path / "data")
    (folder / "notes.jpg").write_text("not an image")
    with pytest.raises(ConfigError, match=r"notes\.jpg: not an image"):
        attempt(tmp_path / "results", tmp_path / "data")


def test_tiny_image_is_named(tmp_path):
    folder = concept_dir(tmp_path / "data")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    with pytest.raises(ConfigError, match=r"dot\.png: image is 1x1"):
        attempt(tmp_path / "results", tmp_path / "data")


def test_unknown_concept_suggests(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean: duck_toy"):
        attempt(tmp_path / "results", tmp_path / "data", concept="duck_tyo")


def test_concept_captions_file(tmp_path):
    """A concept may bring its own captions (one per image, "{}" for the concept): training and the
    train-prompt evaluation use them instead of the generic templates."""
    from tests.helpers import set_up

    folder = concept_dir(tmp_path / "data")
    lines = [f"a toy number {i} like {{}} on a table" for i in range(4)]
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    cfg = tiny_run_config("textual_inversion", "few_iters", tmp_path / "r", "concept=duck_toy", f"paths.data={tmp_path / 'data'}")
    trainer = set_up(cfg)
    expected = [line.format("<duck_toy>") for line in lines]
    assert trainer.data.image_captions == expected
    assert trainer.evaluator.train_prompts == expected[: len(trainer.evaluator.train_prompts)]
    import torch

    batch = trainer.data.sample(torch.Generator().manual_seed(0), 6)
    assert batch.captions == [expected[int(i)] for i in batch.image_index], "each image keeps its caption"

    (folder / "captions.txt").write_text("only one {}\n")
    with pytest.raises(ConfigError, match=r"captions\.txt: needs one caption per image \(4\)"):
        set_up(cfg)


def test_a_placeholder_that_is_already_a_word_is_refused(tmp_path):
    cfg = tiny_run_config("textual_inversion", "few_iters", tmp_path / "r", "method.placeholder_token=photo")
    with pytest.raises(ConfigError, match="method.placeholder_token 'photo' is already a word of the tokenizer"):
        run(cfg, share_models=True)


def bomb_png(path: Path, side: int = 20000) -> None:
    """A valid PNG header declaring side x side pixels: what PIL refuses to decode (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_is_named_by_the_run_and_by_validate(tmp_path):
    folder = concept_dir(tmp_path / "data")
    bomb_png(folder / "huge.png")
    with pytest.raises(ConfigError, match=r"huge\.png: the image declares more pixels than PIL decodes safely"):
        attempt(tmp_path / "results", tmp_path / "data")
    assert_nothing_recorded(tmp_path / "results")
    proc = cli(["-m", "benchmark.concepts", "validate", "duck_toy", f"data={tmp_path / 'data'}"])
    assert proc.returncode == 1 and "huge.png" in proc.stdout and "more pixels than PIL decodes safely" in proc.stdout


@pytest.mark.parametrize("make, message", [
    (lambda f: (f / "broken.jpg").symlink_to(f / "nowhere.jpg"), r"broken\.jpg: a broken link, named like an image"),
    (lambda f: (f / "x.jpg").mkdir(), r"x\.jpg: not a file, named like an image"),
    (lambda f: shutil.copy(f / "00.jpg", f / "copy.jpg"), r"copy\.jpg: an exact duplicate of 00\.jpg"),
])
def test_entries_that_are_not_usable_images_are_errors(tmp_path, make, message):
    folder = concept_dir(tmp_path / "data")
    make(folder)
    with pytest.raises(ConfigError, match=message):
        attempt(tmp_path / "results", tmp_path / "data")
    assert_nothing_recorded(tmp_path / "results")


def cli(args: list[str]):
    import os
    import subprocess
    import sys

    from tests.helpers import PROJECT_ROOT

    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_new_images_make_a_new_run(tmp_path):
    from benchmark.protocol.config import run_id

    folder = concept_dir(tmp_path / "data")
    cfg = tiny_run_config("textual_inversion", "few_iters", tmp_path / "r", "concept=duck_toy",
                          f"paths.data={tmp_path / 'data'}")
    before = run_id(cfg)
    Image.open(folder / "00.jpg").transpose(Image.FLIP_LEFT_RIGHT).save(folder / "00.jpg")
    assert run_id(cfg) != before, "the images are part of what identifies a run"
