"""Class-prior images: generated once by the base model and cached, or given as a folder."""

import pytest
import torch
from PIL import Image

from benchmark.core.errors import ConfigError
from benchmark.engine.backbone import load_backbone
from benchmark.engine.class_images import class_images
from benchmark.engine.sampling import Sampler
from tests.helpers import compose


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = compose(["model=tiny", "method=custom_diffusion", "sampling.steps=2"])
    backbone = load_backbone(cfg["model"], tmp_path_factory.mktemp("models"))
    made = []

    def make_sampler():
        made.append(1)
        return Sampler(backbone, cfg["sampling"], torch.device("cpu"), torch.no_grad)

    return cfg, backbone, make_sampler, made


@pytest.mark.slow
def test_generated_once_and_cached(tmp_path, setup):
    cfg, backbone, make_sampler, made = setup
    prior = {**cfg["method"]["prior"], "num_class_images": 3}
    images, captions = class_images(prior, "toy", backbone, make_sampler, tmp_path, cfg["sampling"], progress=False)
    assert len(images) == 3 and captions == ["photo of a toy"] * 3
    files = sorted(tmp_path.rglob("*.png"))
    stamps = [f.stat().st_mtime_ns for f in files]
    calls = len(made)
    class_images(prior, "toy", backbone, make_sampler, tmp_path, cfg["sampling"], progress=False)
    assert len(made) == calls, "a complete cache builds no sampler"
    more, _ = class_images({**prior, "num_class_images": 4}, "toy", backbone, make_sampler, tmp_path,
                           cfg["sampling"], progress=False)
    assert len(more) == 4
    assert [f.stat().st_mtime_ns for f in files] == stamps, "existing images are kept, only the new one is made"
    class_images(prior, "dog", backbone, make_sampler, tmp_path, cfg["sampling"], progress=False)
    assert len({f.parent for f in tmp_path.rglob("*.png")}) == 2, "one folder per class prompt"


def test_user_folder_with_captions(tmp_path, setup):
    cfg, backbone, make_sampler, _ = setup
    for i in range(2):
        Image.new("RGB", (80, 64), (i * 100, 0, 0)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "captions.txt").write_text("a red toy\na dark toy\n")
    prior = {**cfg["method"]["prior"], "class_images_dir": str(tmp_path)}
    images, captions = class_images(prior, "toy", backbone, make_sampler, tmp_path / "cache", cfg["sampling"])
    assert captions == ["a red toy", "a dark toy"] and images[0].size == (80, 64)
    (tmp_path / "captions.txt").write_text("only one\n")
    with pytest.raises(ConfigError, match="1 captions for 2 images"):
        class_images(prior, "toy", backbone, make_sampler, tmp_path / "cache", cfg["sampling"])
