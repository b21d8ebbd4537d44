"""The ablation miniature (`benchmarks/ablation.py`): its data, statistics and a tiny run."""

import json
import os

import numpy as np
import pytest

from benchmarks import ablation


def tiny_settings():
    return dict(ablation.SETTINGS["tiny"])


def test_every_variant_of_every_table_is_defined_and_distinct():
    named = {variant for _, reference, rows in ablation.TABLES for variant in (reference, *(r[1] for r in rows))}
    assert named == set(ablation.VARIANTS)
    configurations = [tuple(sorted(v.items())) for v in ablation.VARIANTS.values()]
    assert len(set(configurations)) == len(configurations)
    full = ablation.SETTINGS["full"]
    assert ablation.variants_of(full) == list(dict.fromkeys(ablation.variants_of(full)))
    assert set(ablation.variants_of(full)) == set(ablation.VARIANTS)
    assert len(full["seeds"]) >= 3


def test_modes_from_the_command_line():
    assert ablation.parse([]).mode == "full"
    assert ablation.parse([]).output == os.path.join("docs", "ablation.md")
    quick = ablation.parse(["--quick"])
    assert quick.mode == "quick" and quick.runs == ablation.parse([]).runs
    assert ablation.parse(["--mode", "tiny", "--seeds", "3"]).settings["seeds"] == (3,)


def test_training_batches_depend_only_on_seed_and_step():
    from alignseg_keras.synthetic_scenes import synthetic_scene_arrays

    settings = tiny_settings()
    images, masks = synthetic_scene_arrays(4, settings["image_size"], seed=0)
    first = ablation.training_batch(images, masks, settings, seed=3, step=5)
    again = ablation.training_batch(images, masks, settings, seed=3, step=5)
    other = ablation.training_batch(images, masks, settings, seed=4, step=5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    batch_images, batch_masks = first
    assert batch_images.shape == (settings["batch_size"], *settings["crop_size"], 3)
    assert batch_masks.shape == (settings["batch_size"], *settings["crop_size"])
    assert batch_images.dtype == np.float32 and batch_masks.dtype == np.int32
    assert set(np.unique(batch_masks)) <= set(np.unique(masks))


def test_a_crop_is_a_piece_of_its_scene_flipped_or_not():
    settings = dict(tiny_settings(), batch_size=1, scale_range=(1.0, 1.0))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (1, 64, 128, 3), dtype=np.uint8)
    masks = rng.integers(0, 8, (1, 64, 128), dtype=np.uint8)
    flips = 0
    for step in range(16):
        image, mask = ablation.training_batch(images, masks, settings, seed=0, step=step)
        found = False
        for flipped in (False, True):
            source_image = images[0][:, ::-1] if flipped else images[0]
            source_mask = masks[0][:, ::-1] if flipped else masks[0]
            for left in range(128 - 64 + 1):
                if np.array_equal(source_mask[:, left : left + 64], mask[0]) and np.array_equal(
                    source_image[:, left : left + 64], image[0].astype(np.uint8)
                ):
                    found, flips = True, flips + flipped
                    break
            if found:
                break
        assert found, f"step {step}: the crop is not a piece of the scene"
    assert 0 < flips < 16


def test_scenes_smaller_than_the_crop_are_padded_with_the_mean_and_the_ignore_label():
    from alignseg_keras.backbones.encoders import IMAGENET_RGB
    from alignseg_keras.checks import IGNORE_INDEX

    settings = dict(tiny_settings(), batch_size=1, scale_range=(0.5, 0.5), crop_size=(64, 64))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (1, 64, 128, 3), dtype=np.uint8)
    masks = rng.integers(0, 8, (1, 64, 128), dtype=np.uint8)
    image, mask = ablation.training_batch(images, masks, settings, seed=0, step=0)
    # Scaled to 32x64 (no stretching): the bottom half is padding, the top half the scene.
    assert (mask[0, 32:] == IGNORE_INDEX).all() and (mask[0, :32] < 8).all()
    np.testing.assert_array_equal(image[0, 32:], np.broadcast_to(np.float32(IMAGENET_RGB["mean"]), (32, 64, 3)))


def test_paired_statistics():
    runs = {
        ("a", 0): {"miou": 0.5}, ("a", 1): {"miou": 0.7}, ("a", 2): {"miou": 0.6},
        ("b", 0): {"miou": 0.6}, ("b", 1): {"miou": 0.9}, ("b", 2): {"miou": 0.6},
    }
    differences = ablation.paired_differences(runs, "b", "a", "miou", (0, 1, 2))
    np.testing.assert_allclose(differences, [0.1, 0.2, 0.0], atol=1e-12)
    mean, spread = ablation.mean_std(differences)
    assert mean == pytest.approx(0.1) and spread == pytest.approx(0.1)
    assert ablation.cell(mean, spread, signed=True) == "+10.0 ± 10.0"
    # 0.1 -/+ t(0.975, 2 df) 0.1 / sqrt(3) = 0.1 -/+ 0.248
    assert ablation.paired_cell(differences) == "+10.0 ± 10.0 [-14.8, +34.8] (2/3 higher)"
    assert ablation.paired_cell([0.1, 0.3]) == "+20.0 ± 14.1 [-107.1, +147.1] (2/2 higher)"
    assert ablation.paired_interval([0.1]) is None
    assert ablation.paired_cell([]) == "n/a"
    single_mean, single_spread = ablation.mean_std([0.25])
    assert single_mean == 0.25 and single_spread != single_spread
    assert ablation.cell(*ablation.mean_std([])) == "n/a"


def test_a_seed_with_a_nan_score_is_left_out_of_the_comparison():
    nan = float("nan")
    runs = {("a", 0): {"b": 0.5}, ("a", 1): {"b": 0.5}, ("a", 2): {"b": 0.5},
            ("v", 0): {"b": 0.51}, ("v", 1): {"b": nan}, ("v", 2): {"b": 0.53}}
    differences = ablation.paired_differences(runs, "v", "a", "b", (0, 1, 2))
    np.testing.assert_allclose(differences, [0.01, 0.03])
    # Two seeds: t with 1 degree of freedom (12.706), and "of 2", not of 3.
    assert ablation.paired_cell(differences) == "+2.0 ± 1.4 [-10.7, +14.7] (2/2 higher)"


def test_the_t_quantiles_are_students():
    scipy_stats = pytest.importorskip("scipy.stats")
    for degrees, quantile in ablation.T_QUANTILES_95.items():
        assert quantile == pytest.approx(scipy_stats.t.ppf(0.975, degrees), abs=5e-4)
    for degrees in (31, 40, 100, 1000):  # beyond the table (an interval for 12 seeds was dropped)
        assert ablation.t_quantile_95(degrees) == pytest.approx(scipy_stats.t.ppf(0.975, degrees), abs=1e-4)


def test_only_the_full_settings_replace_the_published_page_and_picture():
    published = ablation.parse([])
    assert published.output == os.path.join("docs", "ablation.md")
    assert ablation.picture_path(published) == os.path.join("docs", "images", "ablation.png")
    subset = ablation.parse(["--seeds", "3"])
    assert subset.output == os.path.join("runs", "ablation", "ablation_full.md")
    other = ablation.parse(["--output", os.path.join("docs", "ablation_2026-12-02.md")])
    assert ablation.picture_path(other) == os.path.join("docs", "images", "ablation_2026-12-02.png")


def test_every_variant_of_a_seed_reads_the_same_batches_in_the_same_order(monkeypatch):
    # Keras shuffled the PyDataset's batch indices with Python's random state, which the
    # variants' initialisers leave in different places: the pairs were not paired.
    read = []
    training_batch = ablation.training_batch
    monkeypatch.setattr(ablation, "training_batch", lambda images, masks, settings, seed, step: (
        read.append(step), training_batch(images, masks, settings, seed, step))[1])
    settings = dict(tiny_settings(), steps=6)
    orders = {}
    for variant in ("baseline", "full"):
        read.clear()
        ablation.train_and_evaluate(variant, 0, settings)
        orders[variant] = list(read)
    # Keras first peeks at a batch or two for their structure; then the steps in order.
    assert orders["baseline"] == orders["full"] and orders["full"][-6:] == list(range(6))


def test_the_report_keeps_the_hand_written_text(tmp_path):
    path = tmp_path / "ablation.md"
    path.write_text("# Title\n\nBefore.\n\n<!-- BEGIN GENERATED: x -->\nold\n<!-- END GENERATED -->\n\nAfter.\n")
    merged = ablation.merged_report(str(path), "<!-- BEGIN GENERATED: y -->\nnew\n<!-- END GENERATED -->")
    assert merged.startswith("# Title\n\nBefore.\n\n<!-- BEGIN GENERATED: y -->\nnew\n")
    assert merged.endswith("<!-- END GENERATED -->\n\nAfter.\n") and "old" not in merged


def test_tiny_ablation_runs_resumes_and_reports(tmp_path, capsys):
    runs, output = tmp_path / "runs", tmp_path / "report" / "ablation.md"
    arguments = ["--mode", "tiny", "--runs", str(runs), "--output", str(output), "--jobs", "0"]
    ablation.main(arguments)
    stored = sorted(os.listdir(runs))
    assert stored == ["baseline_seed0.json", "baseline_seed1.json", "full_seed0.json", "full_seed1.json"]
    result = json.loads((runs / "full_seed1.json").read_text())
    assert result["code"] is None or len(result["code"].split("+")[0]) >= 7  # the commit
    for metric in ("miou", "boundary_iou", "thin_iou"):
        assert 0.0 <= result[metric] <= 1.0
    assert result["parameters"] > json.loads((runs / "baseline_seed1.json").read_text())["parameters"]
    text = output.read_text()
    assert "### Table 1: modules" in text and "+ AlignFA + AlignCM" in text and "(reference)" in text
    assert "2 of" not in text and "4 of 4 runs" in text
    assert (output.parent / "ablation.png").stat().st_size > 1000
    # A second run finds every result stored and only rebuilds the report.
    times = {name: os.path.getmtime(runs / name) for name in stored}
    ablation.main(arguments)
    assert {name: os.path.getmtime(runs / name) for name in stored} == times
    # A run trained with other settings is not mixed into the tables.
    result["settings"]["steps"] = 3
    (runs / "full_seed1.json").write_text(json.dumps(result))
    capsys.readouterr()
    ablation.main([*arguments, "--report-only"])
    printed = capsys.readouterr().out
    assert "Left out" in printed and "full_seed1.json" in printed and "steps 3 against 2" in printed
    assert "3 of 4 runs" in output.read_text()
