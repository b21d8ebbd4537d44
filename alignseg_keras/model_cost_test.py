"""model_cost: hand-computed layers, published ResNet figures, and PyTorch's FlopCounterMode."""

import importlib.util
import pathlib

import keras
import pytest

from alignseg_keras.backbones.encoders import ResNetEncoder
from alignseg_keras.layers.align_cm import AlignCM
from alignseg_keras.layers.align_fa import AlignFA
from alignseg_keras.layers.residual_conv_block import ResidualConvBlock
from alignseg_keras.model_cost import KINDS
from alignseg_keras.model_cost import count_parameters
from alignseg_keras.model_cost import layer_cost
from alignseg_keras.model_cost import model_cost
from alignseg_keras.testing import tiny_alignseg

TORCH_REFERENCE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "torch_reference.py"


def expected(**macs):
    return {kind: macs.get(kind, 0) for kind in KINDS}


# === (a) Hand computations ===


def test_conv2d_counts_kernel_times_input_channels_per_output_element():
    # 'same' 3x3 convolution, 8 -> 16 channels, on 10x12: every output pixel
    # of every output channel costs 3*3*8 multiply-adds; the bias is not counted.
    assert layer_cost(keras.layers.Conv2D(16, 3, padding="same"), (1, 10, 12, 8)) == expected(
        conv=10 * 12 * 16 * (3 * 3 * 8)
    )
    # Stride 2 'valid' on 11x11 -> 5x5; groups divide the input channels.
    assert layer_cost(keras.layers.Conv2D(6, 3, strides=2, groups=2), (2, 11, 11, 4)) == (
        expected(conv=2 * 5 * 5 * 6 * (3 * 3 * 2))
    )
    # A transposed convolution scatters each input pixel through the kernel.
    assert layer_cost(keras.layers.Conv2DTranspose(5, 4, strides=2, padding="same"),
                      (1, 3, 7, 6)) == expected(conv=3 * 7 * 6 * (4 * 4 * 5))
    assert layer_cost(keras.layers.DepthwiseConv2D(3, padding="same"), (1, 4, 4, 7)) == (
        expected(conv=4 * 4 * 7 * 9)
    )
    assert layer_cost(keras.layers.Dense(10), (3, 20)) == expected(conv=3 * 10 * 20)


def test_residual_conv_block_by_hand():
    # unify 1x1 32 -> 16; residual 3x3 16 -> 4, BN; 3x3 4 -> 16; BN after the sum.
    pixels = 8 * 8
    assert layer_cost(ResidualConvBlock(16), (1, 8, 8, 32)) == expected(
        conv=pixels * (32 * 16 + 9 * 16 * 4 + 9 * 4 * 16),
        norm=pixels * (4 + 16),
    )


def test_align_fa_by_hand():
    # A 8x8x16, F 4x4x16: up(F) to 8x8 (4 taps per output element), two offset
    # heads on concat([A, up(F)]) (32 channels): 1x1 -> 8, BN, 3x3 -> 2; two
    # samplers of 16 channels at 8x8 (4 taps each).
    pixels, channels, hidden = 8 * 8, 16, 8
    head = pixels * (2 * channels * hidden + 9 * hidden * 2)
    cost = layer_cost(AlignFA(offset_channels=hidden), [(1, 8, 8, channels), (1, 4, 4, channels)])
    assert cost == expected(
        conv=2 * head, norm=2 * pixels * hidden, resample=3 * 4 * pixels * channels
    )
    # One alignment (Table 3): one head, one sampler.
    cost = layer_cost(AlignFA(offset_channels=hidden, align_fa_offsets="low_res"),
                      [(1, 8, 8, channels), (1, 4, 4, channels)])
    assert cost == expected(conv=head, norm=pixels * hidden, resample=2 * 4 * pixels * channels)


def test_align_fa_as_computed_by_hand():
    # Each head: 1x1 16 -> 8 on A (8x8) and on F (4x4), its output upsampled to
    # 8x8 (8 channels), BN, 3x3 -> 2; then up(F) and two samplers as in the paper's form.
    pixels, coarse, channels, hidden = 8 * 8, 4 * 4, 16, 8
    head = pixels * channels * hidden + coarse * channels * hidden + pixels * 9 * hidden * 2
    cost = layer_cost(AlignFA(offset_channels=hidden), [(1, 8, 8, channels), (1, 4, 4, channels)],
                      offset_heads="computed")
    assert cost == expected(
        conv=2 * head, norm=2 * pixels * hidden,
        resample=3 * 4 * pixels * channels + 2 * 4 * pixels * hidden,
    )
    with pytest.raises(ValueError, match="offset_heads"):
        layer_cost(AlignFA(), [(1, 8, 8, 4), (1, 4, 4, 4)], offset_heads="split")


def test_align_cm_by_hand():
    # x: 6x10x20; context: pool to 3x3, 1x1 -> 12, 3x3 -> 8; local: the same
    # convolutions at 6x10; offsets from concat([local, up(context)]) (16 ch):
    # 1x1 -> 4, 3x3 -> 2; the sampler reads the 3x3 context at 6x10.
    pixels, bins = 6 * 10, 3 * 3
    cost = layer_cost(
        AlignCM(8, context_bins=3, context_hidden_channels=12, offset_channels=4),
        (1, 6, 10, 20),
    )
    assert cost == expected(
        conv=bins * (20 * 12 + 9 * 12 * 8) + pixels * (20 * 12 + 9 * 12 * 8)
        + pixels * (16 * 4 + 9 * 4 * 2),
        norm=bins * (12 + 8) + pixels * (12 + 8) + pixels * 4,
        resample=4 * pixels * 8 + 4 * pixels * 8,
        pool=pixels * 20,
    )


# === The model walk ===


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_alignseg(num_classes=5)


def test_parts_add_up_to_the_totals(tiny_model):
    cost = model_cost(tiny_model, (97, 130))  # padded to 128x160 inside the model
    parts = [row.part for row in cost.rows]
    for part in ("image_encoder (resnet18)", "rcb1a", "align_fa2", "align_fa5", "align_cm",
                 "rcb5b", "head", "auxiliary_head", "head_upsample"):
        assert part in parts
    assert not cost.uncounted
    assert cost.macs == sum(row.macs for row in cost.rows if not row.training_only)
    assert cost.training_macs == sum(row.macs for row in cost.rows)
    assert {row.part for row in cost.rows if row.training_only} == {
        "auxiliary_head", "auxiliary_head_upsample", "auxiliary_head_crop"
    }
    assert cost.parameters == sum(row.parameters for row in cost.rows)
    # The head's 1x1 classifier at stride 4 of the padded 128x160 input.
    head = next(row for row in cost.rows if row.part == "head")
    assert head.macs_by_kind["conv"] == 32 * 40 * (9 * 16 * 16 + 16 * 5)
    # The logits are upsampled to the padded size, 4 taps per element.
    upsample = next(row for row in cost.rows if row.part == "head_upsample")
    assert upsample.macs == 4 * 128 * 160 * 5
    # MACs grow with the pixels (same padded size: same count).
    assert model_cost(tiny_model, (128, 160)).macs == cost.macs


def test_parameters_exclude_batchnorm_statistics(tiny_model):
    statistics = sum(
        2 * layer.moving_mean.shape[0]
        for layer in tiny_model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert count_parameters(tiny_model) == tiny_model.count_params() - statistics


def test_unknown_layers_are_reported():
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    inputs = keras.Input((8, 8, 3))
    outputs = Scale(name="scale")(keras.layers.Conv2D(4, 1, name="conv")(inputs))
    cost = model_cost(keras.Model(inputs, outputs), (8, 8))
    assert cost.uncounted == [("scale", "Scale", True)]
    assert cost.macs == 8 * 8 * 4 * 3
    with pytest.raises(ValueError, match="No counting rule"):
        layer_cost(Scale(), (1, 4, 4, 3))


def test_fixed_input_size_is_checked():
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    with pytest.raises(ValueError, match="32x32 only"):
        model_cost(model, (64, 64))


# === (b) Published figures ===

# He et al. 2016, Table 1 ("FLOPs", multiply-adds, at 224x224): 1.8, 3.6, 3.8 and
# 7.6 billion. keras.applications' ResNet-50/101 are that paper's networks (the
# stride on the first 1x1 convolution of a stage); torchvision's ResNet v1.5 puts
# it on the 3x3 and costs 4.1 / 7.8 GMACs. The encoders have no classifier (2M
# MACs of 2048x1000, 0.05%); the figures are rounded to 0.1 G: 3% tolerance.
PUBLISHED_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6}


@pytest.mark.parametrize("architecture", sorted(PUBLISHED_GMACS))
def test_resnet_encoders_match_the_published_figures(architecture):
    cost = model_cost(ResNetEncoder(architecture), (224, 224))
    conv = cost.macs_by_kind()["conv"]
    assert conv / 1e9 == pytest.approx(PUBLISHED_GMACS[architecture], rel=0.03)


# === (c) PyTorch's FlopCounterMode on the reference network ===


def test_official_preset_matches_pytorch_flop_counter():
    """Convolution MACs, part by part, equal FlopCounterMode's on `ReferenceAlignSeg`.

    FlopCounterMode counts 2 FLOPs per multiply-add of convolutions (no bias)
    and nothing else, so the comparison is of the "conv" MACs, exactly: the
    reference computes the deep-supervision head too (training-only here).
    Resizing, the sampler (grid_sample), BatchNorm and pooling are not in
    PyTorch's count; they are 1% of ours.
    """
    torch = pytest.importorskip("torch", reason="the comparison needs PyTorch")
    from torch.utils.flop_counter import FlopCounterMode

    from alignseg_keras import AlignSeg

    spec = importlib.util.spec_from_file_location("torch_reference", TORCH_REFERENCE)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    network = reference.ReferenceAlignSeg(num_classes=19, depth=101).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, 128, 256))
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}

    def torch_macs(*modules):
        return sum(flops[f"ReferenceAlignSeg.{module}"] for module in modules) // 2

    cost = model_cost(AlignSeg.from_preset("alignseg_resnet101_official"), (128, 256))
    conv = {row.part: row.macs_by_kind["conv"] for row in cost.rows}
    assert conv["image_encoder (resnet101_deepstem)"] == torch_macs(
        "conv1", "conv2", "conv3", "layer1", "layer2", "layer3", "layer4"
    )
    pairs = {f"rcb{level}": f"RRB{level}" for level in ("1a", "2a", "2b", "3a", "3b", "4a",
                                                          "4b", "5a", "5b")}
    pairs.update({f"align_fa{level}": f"CAB{level}" for level in (2, 3, 4, 5)})
    pairs.update({"align_cm": "CAM", "head": "head", "auxiliary_head": "dsn"})
    for part, module in pairs.items():
        assert conv[part] == torch_macs(module), part
    assert sum(conv.values()) == flops["Global"] // 2
    assert cost.parameters == sum(p.numel() for p in network.parameters())
    # What PyTorch does not count is small: BN, resizing, sampler and pooling.
    assert 0 < cost.training_macs - sum(conv.values()) < 0.02 * cost.training_macs
