"""The manifest, fetching from a local mirror (resumable), validation of awkward images."""

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.concepts.fetch import fetch, pinned_checksums
from benchmark.concepts.images import decode_image
from benchmark.concepts.manifest import SOURCES, get_concept, load_manifest
from benchmark.concepts.validate import validate_folder
from benchmark.core.checksums import sha256
from benchmark.core.errors import ConfigError
from tests.helpers import PROJECT_ROOT, SHARED_DREAMBOOTH

REFERENCE_CSV = PROJECT_ROOT.parent / "shared" / "reference" / "concepts.csv"
PAPER = [c for c in load_manifest().values() if c.source != "bundled"]


def test_manifest_has_the_48_concepts_with_complete_fields():
    assert len(PAPER) == 48
    assert len({c.name for c in PAPER}) == 48
    by_source = {s: sum(c.source == s for c in PAPER) for s in SOURCES}
    assert by_source == {"textual_inversion": 9, "custom_diffusion": 9, "dreambooth": 30, "bundled": 0}
    for c in PAPER:
        assert c.class_noun and c.kind in ("object", "live") and c.initializer_token and c.license
        assert c.host_url and c.attribution and c.source_folder
        assert 3 <= len(c.val_prompts) <= 5 and all("{}" in p for p in c.val_prompts), c.name
    assert sum(c.kind == "live" for c in PAPER if c.source == "dreambooth") == 9
    assert {c.name: c.n_images for c in PAPER if c.source == "dreambooth"}["duck_toy"] == 4


@pytest.mark.skipif(not REFERENCE_CSV.exists(), reason="reference/concepts.csv not beside the project")
def test_manifest_matches_the_reference_prompts():
    with open(REFERENCE_CSV, newline="") as f:
        reference = {r["dvar_key"]: r for r in csv.DictReader(f)}
    assert set(reference) == {c.name for c in PAPER}
    for c in PAPER:
        assert " | ".join(c.val_prompts) == reference[c.name]["dvar_val_prompts"]
        assert c.class_noun == reference[c.name]["class_noun"]


def test_pinned_checksums_cover_every_dreambooth_file():
    pins = pinned_checksums()
    for c in PAPER:
        if c.source == "dreambooth":
            assert len(pins[c.name]) == c.n_images


def test_dreambooth_names_map_to_their_source_folders():
    assert get_concept("cat1").source_folder == "cat" and get_concept("dog1").source_folder == "dog"
    with pytest.raises(ConfigError, match="Did you mean: .*cat1"):
        get_concept("cat3")


# --- fetch ----------------------------------------------------------------------------------------
SUBSET = ["backpack", "can", "cat1", "duck_toy", "red_cartoon", "teapot"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """../shared/datasets/dreambooth when present; otherwise a mirror of made-up images whose
    checksums the test pins in its own checksums file."""
    if SHARED_DREAMBOOTH.is_dir():
        return SHARED_DREAMBOOTH
    root = tmp_path_factory.mktemp("mirror")
    rng = np.random.default_rng(0)
    for name in SUBSET:
        c = get_concept(name)
        (root / c.source_folder).mkdir()
        for i in range(c.n_images):
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(
                root / c.source_folder / f"{i:02d}.jpg")
    return root


@pytest.fixture
def pins(mirror, monkeypatch):
    if mirror == SHARED_DREAMBOOTH:
        return pinned_checksums()
    made = {n: {f.name: sha256(f) for f in (mirror / get_concept(n).source_folder).iterdir()} for n in SUBSET}
    path = mirror / "checksums.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["concept", "file", "bytes", "sha256"])
        w.writerows([n, name, 0, sha] for n in SUBSET for name, sha in made[n].items())
    monkeypatch.setenv("DVAR_CHECKSUMS", str(path))  # reaches the fetch subprocess too
    return made


def test_fetch_from_mirror_reproduces_the_folders(tmp_path, mirror, pins):
    concepts = [get_concept(n) for n in SUBSET]
    results = fetch(concepts, tmp_path, mirror, progress=False)
    assert [r.fetched for r in results] == [len(pins[n]) for n in SUBSET]
    for c in concepts:
        files = {f.name: sha256(f) for f in (tmp_path / c.name).iterdir()}
        assert files == pins[c.name]
        report = validate_folder(c.name, tmp_path / c.name, c.n_images, pins[c.name])
        assert report.status == "ok", report.problems
    recorded = list(csv.DictReader(open(tmp_path / "CHECKSUMS.csv")))
    assert len(recorded) == sum(len(pins[n]) for n in SUBSET)
    again = fetch(concepts, tmp_path, mirror, progress=False)
    assert sum(r.fetched for r in again) == 0, "a complete folder is never copied again"


# Loaded by the fetch process through PYTHONPATH: it kills itself with SIGKILL just before it renames
# its fourth copied `.part` file into place, so the kill lands midway on every machine (a kill timed
# from outside raced a fast copy and sometimes came after the last file).
KILL_AT_FOURTH_PART = """
import os, signal, sys
renamed = 0
def kill_at_fourth_part(event, args):
    global renamed
    if event == "os.rename" and str(args[0]).endswith(".part"):
        renamed += 1
        if renamed == 4:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(kill_at_fourth_part)
"""


@pytest.mark.slow
def test_interrupted_fetch_completes_without_copying_finished_files(tmp_path, mirror, pins):
    names = [c.name for c in PAPER if c.source == "dreambooth"] if mirror == SHARED_DREAMBOOTH else SUBSET
    total = sum(len(pins[n]) for n in names)
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "benchmark.concepts", "fetch", *names, f"data={data}", f"from={mirror}", "--quiet"]
    (tmp_path / "killer" / "sitecustomize.py").parent.mkdir()
    (tmp_path / "killer" / "sitecustomize.py").write_text(KILL_AT_FOURTH_PART)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    killed = subprocess.run(cmd, cwd=PROJECT_ROOT, env={**env, "PYTHONPATH": f"{tmp_path / 'killer'}:{PROJECT_ROOT}"},
                            capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()

    # a killed atomic write leaves its temporary, which the relaunch removes
    done_before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in data.rglob("*")
                   if p.is_file() and p.suffix != ".part" and p.name != "CHECKSUMS.csv" and ".tmp" not in p.name}
    assert len(done_before) == 3 < total and len(list(data.rglob("*.part"))) == 1, "killed before its fourth copy was in place"

    subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, check=True, capture_output=True)
    for p, stamp in done_before.items():
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, f"{p.name} was copied again"
    assert not list(data.rglob("*.part"))
    for n in names:
        assert {f.name: sha256(f) for f in (data / n).iterdir()} == pins[n]


def test_fetch_reports_a_corrupt_mirror_file_and_keeps_nothing(tmp_path, mirror, pins):
    bad = tmp_path / "mirror"
    folder = get_concept("can").source_folder
    shutil.copytree(mirror / folder, bad / folder)
    first = sorted((bad / folder).iterdir())[0]
    first.write_bytes(first.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=f"checksum mismatch for {first.name}"):
        fetch([get_concept("can")], tmp_path / "data", bad, progress=False)
    assert not (tmp_path / "data" / "can" / first.name).exists()


def test_textual_inversion_prints_what_to_download(tmp_path):
    (result,) = fetch([get_concept("cat_statue")], tmp_path, None, progress=False)
    assert "drive.google.com" in result.manual and str(tmp_path / "cat_statue") in result.manual


# --- validation ------------------------------------------------------------------------------------
@pytest.fixture
def awkward(tmp_path) -> Path:
    """A folder with every kind of awkward file the issue names."""
    d = tmp_path / "awkward"
    d.mkdir()
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    photo.save(d / "good.jpg", quality=95)
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(d / "cmyk.jpg")  # pure red in CMYK
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # one transparent pixel
    rgba.save(d / "rgba.png")
    Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16)).save(d / "deep16.png")
    Image.new("RGB", (1, 1)).save(d / "dot.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    tall = Image.new("RGB", (80, 40), (10, 20, 30))
    tall.paste((250, 250, 250), (0, 0, 10, 40))  # a white strip at the left edge
    tall.save(d / "rotated.jpg", exif=exif, quality=95)
    (d / "notes.jpg").write_text("this is not an image")
    (d / "readme.txt").write_text("sidecar")
    shutil.copy(d / "good.jpg", d / "good_copy.jpg")
    Image.new("L", (64, 64), 128).save(d / "gray.png")
    Image.new("P", (64, 64), 3).save(d / "palette.png")
    return d


def test_validate_names_every_problem(awkward):
    report = validate_folder("awkward", awkward)
    by_name = {f.path.name: f for f in report.files}
    assert by_name["truncated.jpg"].level == "error" and "truncated" in by_name["truncated.jpg"].detail
    assert by_name["notes.jpg"].level == "error" and "not an image" in by_name["notes.jpg"].detail
    assert by_name["dot.png"].level == "error" and "1x1" in by_name["dot.png"].detail
    assert by_name["good_copy.jpg"].level == "error" and "duplicate of good.jpg" in by_name["good_copy.jpg"].detail
    assert by_name["readme.txt"].level == "warning"
    assert "EXIF orientation 6" in by_name["rotated.jpg"].detail
    assert "CMYK -> RGB" in by_name["cmyk.jpg"].detail
    assert "RGBA -> RGB" in by_name["rgba.png"].detail and "white" in by_name["rgba.png"].detail
    assert "I;16" in by_name["deep16.png"].detail
    assert by_name["good.jpg"].level == "ok"
    assert report.status == "broken"


def test_conversions_give_the_right_pixels(awkward):
    rotated = np.asarray(decode_image(awkward / "rotated.jpg"))
    assert rotated.shape == (80, 40, 3), "EXIF orientation 6: the 80x40 image displays as 40x80"
    assert rotated[:10].mean() > 200 and rotated[-10:].mean() < 60, "the left strip ends up on top"
    cmyk = np.asarray(decode_image(awkward / "cmyk.jpg")).reshape(-1, 3).mean(0)
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60, f"CMYK (0,255,255,0) is red, got {cmyk}"
    rgba = np.asarray(decode_image(awkward / "rgba.png"))
    assert tuple(rgba[0, 0]) == (255, 255, 255) and tuple(rgba[5, 5]) == (0, 0, 255)
    assert np.asarray(decode_image(awkward / "deep16.png")).min() == 255, "16-bit white stays white"
    gray = np.asarray(decode_image(awkward / "gray.png"))
    assert gray.shape == (64, 64, 3) and (gray == 128).all()
    assert np.asarray(decode_image(awkward / "palette.png")).shape == (64, 64, 3)


def test_validate_cli_exit_code_and_table(tmp_path, mirror, pins):
    data = tmp_path / "data"
    shutil.copytree(mirror / get_concept("duck_toy").source_folder, data / "duck_toy")
    run = [sys.executable, "-m", "benchmark.concepts", "validate", "duck_toy", f"data={data}"]
    ok = subprocess.run(run, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "duck_toy" in ok.stdout and " ok " in ok.stdout
    (data / "duck_toy" / "01.jpg").write_bytes(b"garbage")
    bad = subprocess.run(run, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "duck_toy/01.jpg: error" in bad.stdout
