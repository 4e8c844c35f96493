"""A run's id covers every input file it reads from its concept folder: the images and captions.txt.
An edited file makes a new run (not one skipped as done, nor records replaced under the old id),
also within one process and when the edit keeps the file's size and modification time."""

import os
import shutil
from pathlib import Path

import pytest

from benchmark.concepts.manifest import CONCEPTS_DIR
from benchmark.engine.train import run
from benchmark.protocol.config import concept_images, run_id
from benchmark.store import records
from tests.helpers import tiny_run_config

SAMPLE = CONCEPTS_DIR / "sample" / "duck_toy"


def concept(data: Path, captions: str | None = None) -> Path:
    folder = data / "duck_toy"
    shutil.copytree(SAMPLE, folder)
    if captions is not None:
        (folder / "captions.txt").write_text(captions)
    return folder


def config(tmp_path: Path) -> dict:
    return tiny_run_config("textual_inversion", "few_iters", tmp_path / "results", "concept=duck_toy",
                           f"paths.data={tmp_path / 'data'}")


def rewrite_keeping_size_and_time(path: Path, data: bytes) -> None:
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
def test_edited_captions_make_a_new_run(tmp_path):
    folder = concept(tmp_path / "data", "".join(f"a {{}} on table {i}\n" for i in range(4)))
    cfg = config(tmp_path)
    first = run(cfg, share_models=True)
    rewrite_keeping_size_and_time(folder / "captions.txt", "".join(f"a {{}} on chair {i}\n" for i in range(4)).encode())
    second = run(cfg, share_models=True)
    assert second["run_id"] != first["run_id"], "new captions are a new run, not one skipped as done"
    assert records.read(tmp_path / "results", "runs").run_id.nunique() == 2


def test_a_folder_without_captions_keeps_its_digest():
    """Counting captions in the identity leaves the runs of every concept without them as they were."""
    assert concept_images("sample_duck_toy", "data") == "65303efe2af5f58d"  # the images' digest before captions counted
    assert concept_images("toy_blue_plain_triangle", "data") != "4c2893d15080e8f9", "a toy concept has captions"


def test_an_image_edited_in_place_changes_the_id_within_one_process(tmp_path):
    """The digest is cached per folder state; an edit that keeps size and modification time (a copy
    with preserved times, a same-size fix) must still reach it."""
    folder = concept(tmp_path / "data")
    cfg = config(tmp_path)
    before = run_id(cfg)
    image = folder / "01.jpg"
    data = bytearray(image.read_bytes())
    data[-3] ^= 0xFF
    rewrite_keeping_size_and_time(image, bytes(data))
    assert run_id(cfg) != before
