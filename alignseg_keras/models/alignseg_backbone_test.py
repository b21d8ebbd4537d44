import keras
import numpy as np
import pytest

from alignseg_keras.backbones.encoders import ResNetEncoder
from alignseg_keras.models.alignseg_backbone import OFFSET_MODULES
from alignseg_keras.models.alignseg_backbone import AlignSegBackbone
from alignseg_keras.testing import TinyPyramidEncoder
from alignseg_keras.testing.layer_test import run_backbone_test


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(0)
    return AlignSegBackbone(
        ResNetEncoder("resnet18"), decoder_channels=16, context_hidden_channels=32
    )


def test_outputs_are_the_stride_4_streams_and_every_offset_field(backbone):
    outputs = backbone(np.random.rand(2, 61, 75, 3).astype("float32"))
    assert set(outputs) == {"d3", "d5", *OFFSET_MODULES}
    assert tuple(outputs["d5"].shape) == (2, 16, 19, 16)
    assert tuple(outputs["d3"].shape) == (2, 16, 19, 16)
    for module in ("align_fa2", "align_fa3", "align_fa4", "align_fa5"):
        assert tuple(outputs[module].shape) == (2, 16, 19, 4)
        # Zero-initialised offset heads: training starts from plain upsampling.
        assert np.all(np.asarray(outputs[module]) == 0)
    assert tuple(outputs["align_cm"].shape) == (2, 2, 3, 2)


def test_offset_heads_are_as_wide_as_the_decoder(backbone):
    head = backbone.get_layer("align_fa3").low_resolution_offsets
    assert head.hidden.conv.filters == 16
    assert backbone.get_layer("align_cm").offset_head.hidden.conv.filters == 16


def test_backbone_contract(backbone, tmp_path):
    images = np.random.rand(1, 40, 52, 3).astype("float32")
    shapes = {"d3": (1, 10, 13, 16), "d5": (1, 10, 13, 16), "align_cm": (1, 2, 2, 2)}
    shapes.update({f"align_fa{level}": (1, 10, 13, 4) for level in (2, 3, 4, 5)})
    run_backbone_test(backbone, images, shapes, tmp_path)
    assert backbone.get_config()["image_encoder"]["class_name"] == "ResNetEncoder"


def test_any_pyramid_encoder_works():
    encoder = TinyPyramidEncoder([("P1", 8), ("P2", 8), ("P3", 8), ("P4", 8), ("P5", 8)])
    backbone = AlignSegBackbone(encoder, decoder_channels=8, context_bins=2)
    outputs = backbone(np.zeros((1, 64, 64, 3), "float32"))
    assert tuple(outputs["d5"].shape) == (1, 16, 16, 8)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`image_encoder` must be a keras.Model"):
        AlignSegBackbone("resnet18")
    with pytest.raises(ValueError, match="`alignment` must be one of"):
        AlignSegBackbone(ResNetEncoder("resnet18"), alignment="bilinear")
