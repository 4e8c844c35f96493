"""The evaluation batch: which sources stay fixed, accumulation, and latent caching."""

import itertools

import pytest
import torch

from benchmark.engine.objective import SOURCES, EvalBatch
from tests.helpers import set_up, tiny_run_config


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return set_up(tiny_run_config("textual_inversion", "few_iters", tmp_path_factory.mktemp("r")))


def eval_batch(trainer, fixed: dict, size=4, accumulation=1, seed=7, intervals=False, forward_batch=0):
    cfg = {"batch_size": size, "accumulation": accumulation, "fixed": fixed, "timestep_range": [0, 1000],
           "intervals": intervals, "forward_batch": forward_batch}
    return EvalBatch(cfg, trainer.data, trainer.encoder, trainer.forward, seed, trainer.latent_shape)


def source_values(draw):
    return {"images": (draw.image_index, draw.flipped, draw.pixels), "captions": draw.captions,
            "latents": draw.latent_eps, "noise": draw.noise, "timesteps": draw.timesteps}


def same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=5)))
def test_each_of_the_32_combinations(trainer, flags):
    """Fixed sources are identical at every evaluation; resampled ones change between evaluations."""
    fixed = dict(zip(SOURCES, flags))
    batch = eval_batch(trainer, fixed, size=8)
    draws = [batch.next_draw() for _ in range(3)]
    for source in SOURCES:
        values = [source_values(d)[source] for d in draws]
        if fixed[source]:
            assert same(values[0], values[1]) and same(values[1], values[2]), source
        else:
            assert not same(values[0], values[1]) and not same(values[1], values[2]), source


def test_fixed_batch_gives_the_same_loss_twice(trainer):
    batch = eval_batch(trainer, dict.fromkeys(SOURCES, True))
    a = batch.loss()
    b = batch.loss()
    assert a == b


@pytest.mark.parametrize("k, b", [(2, 4), (4, 2), (8, 1)])
def test_accumulated_passes_equal_one_big_pass(trainer, k, b):
    """k passes of batch b (one model call per pass, as the official code) equal one pass of k*b."""
    fixed = dict.fromkeys(SOURCES, True)
    small = eval_batch(trainer, fixed, size=b, accumulation=k).loss()["l_det"]
    big = eval_batch(trainer, fixed, size=k * b, accumulation=1).loss()["l_det"]
    assert small == pytest.approx(big, rel=1e-5)


def test_forward_batch_is_only_a_speed_knob(trainer):
    fixed = dict.fromkeys(SOURCES, True)
    one_at_a_time = eval_batch(trainer, fixed, size=1, accumulation=16).loss()["l_det"]
    grouped = eval_batch(trainer, fixed, size=1, accumulation=16, forward_batch=8).loss()["l_det"]
    assert grouped == pytest.approx(one_at_a_time, rel=1e-5)


def test_interval_losses_use_their_own_timesteps(trainer):
    batch = eval_batch(trainer, dict.fromkeys(SOURCES, True), size=8, intervals=True)
    draw = batch.next_draw()
    for name, (lo, hi) in {"begin": (0, 333), "middle": (333, 666), "end": (666, 1000)}.items():
        t = draw.interval_timesteps[name]
        assert len(set(t.tolist())) == 8 and lo <= int(t.min()) and int(t.max()) < hi
    out = batch.loss()
    assert set(out) == {"l_det", "l_det_begin", "l_det_middle", "l_det_end"}


def test_timesteps_are_distinct_and_in_range(trainer):
    batch = eval_batch(trainer, dict.fromkeys(SOURCES, True), size=8, accumulation=4)
    t = batch.next_draw().timesteps
    assert len(set(t.tolist())) == 32


def test_cached_latents_equal_fresh_encodings(trainer):
    """Flip-only augmentation: the VAE posterior is computed once per (image, flip)."""
    enc = trainer.encoder
    assert enc.cache is not None
    index, flipped = torch.tensor([0, 1, 2]), torch.tensor([False, True, False])
    mean, std = enc.cached_posterior(index, flipped)
    pixels = torch.stack([trainer.data.pixels[0], trainer.data.pixels[1].flip(-1), trainer.data.pixels[2]])
    fresh_mean, fresh_std = enc.posterior(pixels)
    assert torch.allclose(mean, fresh_mean, atol=1e-5) and torch.allclose(std, fresh_std, atol=1e-5)


def test_frozen_parts_have_no_gradients(trainer):
    trainable = {id(p) for p in trainer.method.parameters()}
    for module in (trainer.backbone.unet, trainer.backbone.vae, trainer.backbone.text_encoder):
        assert all(not p.requires_grad for p in module.parameters() if id(p) not in trainable)
    assert [p.shape for p in trainer.method.parameters()] == [torch.Size([1, 32])]


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """A concept that brings one caption per image (every toy concept does)."""
    return set_up(tiny_run_config("textual_inversion", "few_iters", tmp_path_factory.mktemp("c"),
                                  "concept=toy_orange_dotted_ring", "method.initializer_token=ring"))


@pytest.mark.parametrize("fixed_captions", [True, False])
@pytest.mark.parametrize("fixed_images", [True, False])
def test_each_evaluation_item_keeps_its_own_images_caption(captioned, fixed_captions, fixed_images):
    fixed = dict(zip(SOURCES, [fixed_images, fixed_captions, True, True, True]))
    batch = eval_batch(captioned, fixed, size=8)
    own = captioned.data.image_captions
    assert len(set(own)) == len(own) > 1, "the test needs distinct captions"
    for draw in [batch.next_draw() for _ in range(3)]:
        assert draw.captions == [own[int(i)] for i in draw.image_index]
