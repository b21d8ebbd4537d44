import json

import keras
import numpy as np
import pytest

from alignseg_keras.backbones.encoders import ResNetEncoder
from alignseg_keras.models.alignseg import AlignSeg
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


def test_a_functional_encoder_with_a_pyramid_attribute_saves_and_loads(tmp_path):
    # The attribute is not in a functional model's config: the saved model did not load.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    features, pyramid = inputs, {}
    for level in range(1, 6):
        features = keras.layers.Conv2D(8, 3, strides=2, padding="same")(features)
        pyramid[f"P{level}"] = features
    encoder = keras.Model(inputs, features, name="encoder")  # the last map as its output
    encoder.pyramid_outputs = pyramid
    encoder.input_convention = {"mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0], "bgr": True}
    model = AlignSeg(3, image_encoder=encoder, decoder_channels=8, context_bins=2)
    assert model.image_converter.bgr and list(model.image_converter.mean) == [104.0, 117.0, 123.0]
    images = np.random.default_rng(0).uniform(0, 255, (1, 40, 36, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "model.keras")
    model.save_to_preset(tmp_path / "preset")
    for loaded in (keras.saving.load_model(tmp_path / "model.keras"),
                   AlignSeg.from_preset(tmp_path / "preset")):
        np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`image_encoder` must be a keras.Model"):
        AlignSegBackbone("resnet18")
    with pytest.raises(ValueError, match="`alignment` must be one of"):
        AlignSegBackbone(ResNetEncoder("resnet18"), alignment="bilinear")


# === The paper's ablations (Tables 1-4) as decoder options ===

# (fusion, align_fa_offsets, context, context_bins) of every ablation row of the Tables.
ABLATIONS = {
    "table1_baseline": ("bilinear", "both", None, 3),
    "table1_alignfa": ("align", "both", None, 3),
    "table1_aligncm_table2_rgs_table3_neither": ("bilinear", "both", "align", 3),
    "table2_deconv": ("deconv", "both", "align", 3),
    "table3_high_res": ("align", "high_res", "align", 3),
    "low_res": ("align", "low_res", "align", 3),
    "table4_pool_bins2": ("align", "both", "pool", 2),
    "table4_pool_bins6": ("align", "both", "pool", 6),
    "table4_align_bins6": ("align", "both", "align", 6),
}


def tiny_backbone(**options):
    keras.utils.set_random_seed(1)
    return AlignSegBackbone(
        TinyPyramidEncoder(), decoder_channels=8, context_hidden_channels=12, **options
    )


def ablation(name):
    fusion, align_fa_offsets, context, bins = ABLATIONS[name]
    return dict(
        fusion=fusion, align_fa_offsets=align_fa_offsets, context=context, context_bins=bins
    )


def expected_offsets(fusion, align_fa_offsets, context, height, width):
    shapes = {}
    if fusion == "align":
        channels = 4 if align_fa_offsets == "both" else 2
        shapes.update(
            {f"align_fa{level}": (1, height // 4, width // 4, channels) for level in (2, 3, 4, 5)}
        )
    if context == "align":
        shapes["align_cm"] = (1, -(-height // 32), -(-width // 32), 2)
    return shapes


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_builds_trains_saves_and_loads(name, tmp_path):
    options = ablation(name)
    backbone = tiny_backbone(**options)
    images = np.random.default_rng(0).uniform(-1, 1, (1, 64, 96, 3)).astype("float32")
    outputs = backbone(images)
    shapes = {"d3": (1, 16, 24, 8), "d5": (1, 16, 24, 8)}
    shapes.update(expected_offsets(options["fusion"], options["align_fa_offsets"],
                                   options["context"], 64, 96))
    assert {key: tuple(value.shape) for key, value in outputs.items()} == shapes
    assert backbone.offset_modules == tuple(m for m in OFFSET_MODULES if m in shapes)
    config = backbone.get_config()
    for key, value in options.items():
        assert config[key] == value
    clone = AlignSegBackbone.from_config(config)
    assert json.dumps(clone.get_config()) == json.dumps(config)
    assert clone.count_params() == backbone.count_params()

    # The segmenter takes the options too, trains a step, and saves / loads.
    keras.utils.set_random_seed(2)
    model = AlignSeg(3, image_encoder=TinyPyramidEncoder(), decoder_channels=8, **options)
    assert {key: model.backbone.get_config()[key] for key in options} == options
    assert set(model.offset_outputs) == set(shapes) - {"d3", "d5"}
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 45, 70, 3)).astype("float32")
    masks = rng.integers(0, 3, (2, 45, 70)).astype("int32")
    model.compile(learning_rate=0.1, jit_compile=False)
    before = [np.array(weight) for weight in model.trainable_weights]
    loss = model.train_on_batch(images, masks)
    assert np.all(np.isfinite(loss))
    changed = [not np.array_equal(np.array(w), old)
               for w, old in zip(model.trainable_weights, before)]
    # Every weight learns but the zero-initialised offset heads' hidden layers.
    assert sum(changed) > len(changed) // 2
    path = tmp_path / "ablation.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert json.dumps(restored.get_config()) == json.dumps(model.get_config())
    np.testing.assert_array_equal(np.asarray(restored(images)), np.asarray(model(images)))


def _fusion_params(backbone, prefix):
    return sum(
        layer.count_params() for layer in backbone.layers if layer.name.startswith(prefix)
    )


def test_parameter_counts_of_the_ablations():
    full = tiny_backbone()
    head = full.get_layer("align_fa2").low_resolution_offsets.count_params()
    assert head == full.get_layer("align_fa2").high_resolution_offsets.count_params()
    context_head = full.get_layer("align_cm").offset_head.count_params()
    total = full.count_params()

    # Bilinear fusion: no weights in place of AlignFA's 8 offset heads.
    bilinear = tiny_backbone(fusion="bilinear")
    assert _fusion_params(full, "align_fa") == 8 * head
    assert _fusion_params(bilinear, "fusion") == 0
    assert bilinear.count_params() == total - 8 * head
    # One alignment per AlignFA: half the offset heads.
    for side in ("high_res", "low_res"):
        one_side = tiny_backbone(align_fa_offsets=side)
        assert _fusion_params(one_side, "align_fa") == 4 * head
        assert one_side.count_params() == total - 4 * head
    high_res = tiny_backbone(align_fa_offsets="high_res").get_layer("align_fa3")
    assert high_res.low_resolution_offsets is None
    assert high_res.high_resolution_offsets is not None
    # Deconvolution: 4x4 kernels of 8x8 channels, 1 + 2 + 3 + 3 stride-2 stages.
    deconv = tiny_backbone(fusion="deconv")
    assert _fusion_params(deconv, "fusion") == 16 * 8 * 8 * 9
    assert len(deconv.get_layer("fusion4").deconvolutions) == 3
    assert len(deconv.get_layer("fusion3").deconvolutions) == 2
    # Context without alignment: AlignCM less its offset head; no context: less AlignCM.
    assert tiny_backbone(context="pool").count_params() == total - context_head
    no_context = tiny_backbone(context=None)
    assert no_context.count_params() == total - full.get_layer("align_cm").count_params()
    assert "align_cm" not in {layer.name for layer in no_context.layers}


def _resize_align_corners(x, height, width):
    """NumPy bilinear resizing with align_corners=True, one output pixel at a time."""
    in_h, in_w = x.shape[1:3]
    out = np.zeros((x.shape[0], height, width, x.shape[3]))
    for i in range(height):
        y = i * (in_h - 1) / (height - 1) if height > 1 else 0.0
        y0 = min(int(np.floor(y)), in_h - 1)
        y1, wy = min(y0 + 1, in_h - 1), y - y0
        for j in range(width):
            x_ = j * (in_w - 1) / (width - 1) if width > 1 else 0.0
            x0 = min(int(np.floor(x_)), in_w - 1)
            x1, wx = min(x0 + 1, in_w - 1), x_ - x0
            out[:, i, j] = ((1 - wy) * (1 - wx) * x[:, y0, x0] + (1 - wy) * wx * x[:, y0, x1]
                            + wy * (1 - wx) * x[:, y1, x0] + wy * wx * x[:, y1, x1])
    return out


def _adaptive_pool(x, bins):
    """PyTorch's AdaptiveAvgPool2d: bin k covers [floor(k n / b), ceil((k + 1) n / b))."""
    height, width = x.shape[1:3]
    out = np.zeros((x.shape[0], bins, bins, x.shape[3]))
    for k in range(bins):
        r0, r1 = k * height // bins, -(-(k + 1) * height // bins)
        for m in range(bins):
            c0, c1 = m * width // bins, -(-(m + 1) * width // bins)
            out[:, k, m] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def test_bilinear_fusion_with_pooled_context_equals_a_hand_computation():
    backbone = tiny_backbone(fusion="bilinear", context="pool", context_bins=3)
    rng = np.random.default_rng(3)
    for weight in backbone.weights:  # non-trivial weights and BN statistics
        value = rng.normal(scale=0.3, size=weight.shape) + ("variance" in weight.path)
        weight.assign(value.astype("float32"))
    images = rng.uniform(-1, 1, (2, 70, 100, 3)).astype("float32")
    layer = backbone.get_layer

    def run(name, x):
        return np.asarray(layer(name)(x.astype("float32")), "float64")

    def fuse(high, low):
        return high + _resize_align_corners(low, *high.shape[1:3])

    c2, c3, c4, c5 = (np.asarray(c, "float64") for c in layer("image_encoder_pyramid")(images))
    assert c5.shape[1:3] == (3, 4)
    d1 = run("rcb1a", c2)
    d2 = run("rcb2b", fuse(d1, run("rcb2a", c3)))
    d3 = run("rcb3b", fuse(d2, run("rcb3a", c4)))
    d4 = run("rcb4b", fuse(d3, run("rcb4a", c5)))
    module = layer("pooled_context")
    pooled = _adaptive_pool(c5, 3).astype("float32")
    context = np.asarray(module.context_project(module.context_reduce(pooled)), "float64")
    local = np.asarray(module.local_project(module.local_reduce(c5.astype("float32"))))
    c5_context = local + _resize_align_corners(context, *local.shape[1:3])
    d5 = run("rcb5b", fuse(d4, run("rcb5a", c5_context)))
    outputs = backbone(images)
    assert set(outputs) == {"d3", "d5"}
    np.testing.assert_allclose(np.asarray(outputs["d3"]), d3, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(outputs["d5"]), d5, rtol=1e-4, atol=1e-4)


def test_no_context_feeds_the_stride_32_feature_straight_in():
    backbone = tiny_backbone(fusion="bilinear", context=None)
    images = np.random.default_rng(4).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    layer = backbone.get_layer
    c5 = layer("image_encoder_pyramid")(images)[3]
    d4 = keras.Model(backbone.inputs[0], layer("rcb4b").output)(images)
    # d5 = RCB5b(fuse(d4, RCB5a(C5))).
    expected = layer("rcb5b")(layer("fusion5")([d4, layer("rcb5a")(c5)]))
    np.testing.assert_allclose(np.asarray(backbone(images)["d5"]), np.asarray(expected),
                               atol=1e-5)


def test_default_is_the_full_model_with_unchanged_layers_and_weights():
    full = tiny_backbone()
    explicit = tiny_backbone(fusion="align", align_fa_offsets="both", context="align")

    def decoder_paths(backbone):  # the encoder's layers have automatic names
        return [w.path for w in backbone.weights if not w.path.startswith("conv2d")]

    assert decoder_paths(full) == decoder_paths(explicit)
    assert len(full.weights) == len(explicit.weights)
    assert full.offset_modules == OFFSET_MODULES
    names = [w.path for w in full.get_layer("align_fa2").weights]
    assert names[0].startswith("align_fa2/low_resolution_offsets/")
    assert any(p.startswith("align_fa2/high_resolution_offsets/") for p in names)
    assert any(p.startswith("align_cm/offset_head/") for p in (w.path for w in full.weights))


def test_the_segmenter_passes_the_options_through():
    model = AlignSeg(3, image_encoder=TinyPyramidEncoder(), decoder_channels=8, context=None,
                     fusion="deconv")
    assert model.backbone.context is None and model.backbone.fusion == "deconv"
    assert model.offset_outputs == {}
    with pytest.raises(ValueError, match="no alignment module"):
        model.offset_model()
    # Left out, `context` is AlignCM (None means "no context", not "the default").
    model = AlignSeg(3, image_encoder=TinyPyramidEncoder(), decoder_channels=8,
                     align_fa_offsets="low_res")
    assert model.backbone.context == "align"
    offsets = model.offset_model()(np.zeros((1, 64, 64, 3), "float32"))
    assert tuple(offsets["align_fa3"].shape) == (1, 16, 16, 2)
    preset = AlignSeg.from_preset("alignseg_resnet18_small", num_classes=3, fusion="bilinear",
                                  context="pool", context_bins=6)
    config = preset.backbone.get_config()
    assert (config["fusion"], config["context"], config["context_bins"]) == ("bilinear", "pool", 6)
    with pytest.raises(ValueError, match="cannot change them"):
        AlignSeg(3, backbone=tiny_backbone(), context=None)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(fusion="nearest"), "`fusion` must be one of"),
        (dict(align_fa_offsets="neither"), "`align_fa_offsets` must be one of"),
        (dict(context="aspp"), "`context` must be one of"),
        (dict(fusion="bilinear", align_fa_offsets="high_res"),
         "`align_fa_offsets`.*fusion='align'"),
    ],
)
def test_bad_ablation_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        tiny_backbone(**options)


def test_an_encoder_of_one_size_that_padding_would_change_needs_no_padding():
    encoder = TinyPyramidEncoder(image_shape=(80, 80, 3))  # not a multiple of 32
    with pytest.raises(ValueError, match=r"images of 80x80 pixels only, which padding to a "
                                         r"multiple of pad_to_multiple=32 would change; pass "
                                         r"pad_to_multiple=None"):
        AlignSeg(3, image_encoder=encoder, decoder_channels=8)
    model = AlignSeg(3, image_encoder=encoder, decoder_channels=8, pad_to_multiple=None)
    logits = model.predict(np.zeros((1, 80, 80, 3), "float32"), verbose=0)
    assert logits.shape == (1, 80, 80, 3)
    # A size that padding keeps is fine with the default.
    AlignSeg(3, image_encoder=TinyPyramidEncoder(image_shape=(64, 96, 3)), decoder_channels=8)
