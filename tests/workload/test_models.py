"""Extractors and the unified model: shapes, architecture properties, one learning step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import experiments.trajectory_video.extractors  # noqa: F401  (registers the extractors)
from experiments.trajectory_video import metrics
from experiments.trajectory_video.config import CONFIG_DIR, load_yaml
from experiments.trajectory_video.extractors.i3d import inflate_conv2d
from experiments.trajectory_video.extractors.magvit import LookupFreeQuantizer, MagVitEncoder
from shared.base_extractor import (
    VideoSpec,
    build_extractor,
    registered_extractors,
    split_feature_dim,
)
from shared.unified_model import CAMERA_FEATURES, UnifiedModel

SPEC = VideoSpec(channels=3, frames=8, size=16)
TINY = load_yaml(CONFIG_DIR / "train_tiny.yaml")["extractors"]
NAMES = ["i3d", "slowfast", "transformer", "magvit"]


def test_all_four_registered() -> None:
    assert registered_extractors() == sorted(NAMES)
    with pytest.raises(ValueError, match="unknown key"):
        build_extractor("i3d", {"no_such_option": 1}, SPEC)


@pytest.mark.parametrize("name", NAMES)
def test_extractor_output_shape(name: str) -> None:
    torch.manual_seed(0)
    extractor = build_extractor(name, TINY[name], SPEC)
    features = extractor(torch.rand(5, 3, 8, 16, 16))
    assert features.shape == (5, extractor.feature_dim)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("name", NAMES)
def test_training_step_lowers_loss_on_fixed_batch(name: str) -> None:
    torch.manual_seed(0)
    model = UnifiedModel(build_extractor(name, TINY[name], SPEC), views=4, num_classes=4,
                         fusion_dim=16, dropout=0.0)
    videos = torch.randint(0, 256, (8, 4, 8, 3, 16, 16), dtype=torch.uint8)
    cameras = torch.randn(8, 4, CAMERA_FEATURES)
    labels = torch.arange(8) % 4
    target = torch.randn(8, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        logits, position = model(videos, cameras)
        aux = sum(model.auxiliary_losses().values(), torch.zeros(()))
        return F.cross_entropy(logits, labels) + F.mse_loss(position, target) + aux

    with torch.no_grad():
        first = float(loss())
    for _ in range(8):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(loss()) < 0.8 * first


def test_inflated_conv_matches_2d_conv_on_static_video() -> None:
    torch.manual_seed(0)
    conv2d = nn.Conv2d(3, 6, 5, stride=2, padding=2)
    conv3d = inflate_conv2d(conv2d, time_kernel=3)
    assert conv3d.weight.shape == (6, 3, 3, 5, 5)
    frame = torch.rand(2, 3, 16, 16)
    static = frame[:, :, None].repeat(1, 1, 7, 1, 1)
    out3d = conv3d(static)
    expected = conv2d(frame)
    # Frames away from the zero-padded ends see three identical frames: same answer.
    for t in range(1, 6):
        torch.testing.assert_close(out3d[:, :, t], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out3d[:, :, 0], expected, atol=1e-3)


def test_magvit_encoder_is_causal_in_time() -> None:
    torch.manual_seed(0)
    encoder = MagVitEncoder(MagVitEncoder.config_class(
        width=4, multipliers=(1,), temporal_down=(False,), bits=4, embed_dim=8), SPEC).eval()
    video = torch.rand(1, 3, 8, 16, 16)
    changed = video.clone()
    changed[:, :, 5:] = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        a, b = encoder.encoder(video), encoder.encoder(changed)
    torch.testing.assert_close(a[:, :, :5], b[:, :, :5])
    assert not torch.allclose(a[:, :, 5:], b[:, :, 5:])


def test_lookup_free_quantizer() -> None:
    quantizer = LookupFreeQuantizer(bits=3)
    z = torch.tensor([[0.5, -0.2, 0.1], [-1.0, -1.0, 2.0]]).T.reshape(1, 3, 2)
    z.requires_grad_(True)
    quantised, tokens, losses = quantizer(z)
    assert quantised.detach().abs().eq(1).all()
    assert tokens.tolist() == [[0b101, 0b100]]
    quantised.sum().backward()  # straight-through: identity gradient
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    assert set(losses) == {"commitment", "entropy"}


def test_slowfast_pathway_ratios() -> None:
    extractor = build_extractor("slowfast", {"width": 8, "alpha": 4, "beta_inv": 4}, SPEC)
    slow = extractor.slow_stem(torch.rand(1, 3, 8, 16, 16)[:, :, ::4])
    fast = extractor.fast_stem(torch.rand(1, 3, 8, 16, 16))
    assert slow.shape[1:3] == (8, 2) and fast.shape[1:3] == (2, 8)
    fused = extractor.laterals[0](slow, fast)
    assert fused.shape[1:3] == (8 + 4, 2)  # lateral adds 2x fast channels at slow rate


def test_macro_f1_and_confusion() -> None:
    matrix = metrics.confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 3]), 4)
    assert matrix.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert metrics.accuracy(matrix) == 0.5
    # F1 per class: 2/3, 2/3, 0, 0.
    assert metrics.macro_f1(matrix) == pytest.approx((2 / 3 + 2 / 3) / 4)


def test_magvit_decoder_reconstructs_the_clip_shape_and_freezing_stops_gradients() -> None:
    torch.manual_seed(0)
    extractor = build_extractor("magvit", TINY["magvit"], SPEC)
    video = torch.rand(2, 3, 8, 16, 16)
    with torch.no_grad():
        recon, tokens, _ = extractor.tokenize(video)
    assert recon.shape == video.shape and 0.0 <= float(recon.min()) <= float(recon.max()) <= 1
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 2 ** TINY["magvit"]["bits"]
    losses = extractor.pretrain_losses(video)
    assert set(losses) == {"reconstruction", "lfq_commitment", "lfq_entropy"}
    extractor.set_frozen(True)
    extractor(video).sum().backward()
    assert all(p.grad is None for p in extractor.encoder.parameters())
    assert all(p.grad is not None for p in extractor.embed.parameters())
    assert extractor.auxiliary_losses() == {}


def test_feature_dim_projection() -> None:
    model = UnifiedModel(build_extractor("i3d", TINY["i3d"], SPEC), views=4, num_classes=4,
                         fusion_dim=16, feature_dim=40)
    videos = torch.randint(0, 256, (2, 4, 8, 3, 16, 16), dtype=torch.uint8)
    assert model.features(videos).shape == (8, 40) and model.feature_dim == 40
    with pytest.raises(ValueError, match="feature_dim"):
        split_feature_dim({"feature_dim": -1})
    assert split_feature_dim({"width": 4, "feature_dim": 8}) == ({"width": 4}, 8)


def test_rmse_is_mean_over_coordinates() -> None:
    predicted = np.zeros((2, 3))
    target = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert metrics.rmse(predicted, target) == pytest.approx(np.sqrt(9.0 / 6))
