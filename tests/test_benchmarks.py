"""The side-by-side benchmark with the authors' network (`benchmarks/authors.py`) and its report."""

import inspect
import json
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import authors
from benchmarks import report
from benchmarks import training_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_restated_constants_agree_with_the_library():
    from alignseg_keras import AlignSeg
    from alignseg_keras.checks import IGNORE_INDEX

    assert authors.IGNORE_INDEX == IGNORE_INDEX
    assert authors.AUX_LOSS_WEIGHT == inspect.signature(AlignSeg.compile).parameters["aux_loss_weight"].default


def test_our_side_measures_time_and_memory_in_this_process():
    result = authors.measure("keras", "inference", "float32", (64, 64), 1, repeats=2, warmup=1, depth=50)
    assert set(result) == {"setup_seconds", "seconds", "median_seconds", "first_call_seconds", "rss_before_mib",
                           "peak_rss_mib", "rss_after_mib", "file_rss_before_mib", "file_rss_mib",
                           "peak_anonymous_mib", "anonymous_before_mib"}
    assert 0 < result["seconds"] <= result["median_seconds"] and 0 < result["setup_seconds"]
    assert 0 < result["rss_before_mib"] <= result["peak_rss_mib"]
    assert 0 < result["rss_after_mib"] <= result["peak_rss_mib"]
    # TensorFlow's libraries are resident once imported (0.4-0.5 GiB, more than PyTorch's).
    assert 100 < result["file_rss_before_mib"] <= result["file_rss_mib"] < result["peak_rss_mib"]
    assert result["peak_anonymous_mib"] == result["peak_rss_mib"] - result["file_rss_mib"]
    assert result["anonymous_before_mib"] == result["rss_before_mib"] - result["file_rss_before_mib"]


def test_our_frozen_inference_computes_the_models_logits():
    from alignseg_keras import AlignSeg
    from alignseg_keras.models.presets import OFFICIAL_PRESETS
    from alignseg_keras.testing import randomize_statistics

    model = AlignSeg.from_preset(OFFICIAL_PRESETS[50], num_classes=authors.NUM_CLASSES)
    randomize_statistics(model, biases=True)
    images, _ = authors.random_batch((64, 64), 1)
    expected = np.asarray(authors.keras_inference(model, "float32", None, frozen=False)(images))
    logits = np.asarray(authors.keras_inference(model, "float32", None, frozen=True)(images))
    # The same float32 arithmetic, fused and ordered as TensorFlow chooses: a few roundings.
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    result = authors.measure("keras", "inference", "float32", (64, 64), 1, repeats=1, warmup=1, depth=50,
                             frozen=True)
    assert result["seconds"] > 0 and result["first_call_seconds"] > 0
    with pytest.raises(SystemExit):
        authors.parse(["--side", "torch", "--kind", "inference", "--frozen"])
    assert authors.parse(["--side", "keras", "--kind", "inference", "--frozen"]).frozen


def test_file_backed_pages_are_the_mapped_files_not_the_heap(tmp_path):
    from benchmarks.timing import current_rss_mib
    from benchmarks.timing import file_backed_rss_mib

    path = tmp_path / "pages"
    path.write_bytes(b"\1" * 32 * 2**20)
    file_before, rss_before = file_backed_rss_mib(), current_rss_mib()
    # Anonymous memory, touched: a mapping of its own, since freed heap memory that
    # the allocator kept from earlier tests would not raise the resident size.
    heap = np.frombuffer(mmap.mmap(-1, 48 * 2**20), np.uint8)
    heap[:] = 1
    assert file_backed_rss_mib() - file_before == pytest.approx(0, abs=2)
    mapped = np.memmap(path, np.uint8, mode="r")
    assert int(mapped.sum()) == mapped.size  # a file mapped and read: its pages are file-backed
    assert file_backed_rss_mib() - file_before == pytest.approx(32, abs=2)
    assert current_rss_mib() - rss_before == pytest.approx(32 + heap.nbytes / 2**20, abs=4)
    del mapped


def test_the_cpu_is_named_with_its_family_and_features(tmp_path):
    from benchmarks.timing import cpu_model

    cpuinfo = tmp_path / "cpuinfo"
    processor = ("processor\t: {}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
                 "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f amx_bf16 "
                 "amx_tile amx_int8 avx512_bf16\n\n")
    cpuinfo.write_text(processor.format(0) + processor.format(1).replace("avx2 ", ""))
    assert cpu_model(str(cpuinfo)) == (
        "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143; amx_bf16 amx_int8 avx512_bf16 avx512f avx2)")
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2\n")
    assert cpu_model(str(cpuinfo)) == "AMD EPYC"
    assert cpu_model(str(tmp_path / "absent")) != ""


def last_line_of_process(command):
    """Runs `command` in the project root (a process of its own) and returns its last output line."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def test_runs_record_the_variables_that_choose_the_cpu_kernels(monkeypatch):
    from benchmarks import report
    from benchmarks.timing import kernel_settings
    from benchmarks.timing import machine_info

    environ = {"TF_ENABLE_ONEDNN_OPTS": "1", "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=",
               "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "0", "OMP_NUM_THREADS": "2", "HOME": "/root"}
    assert kernel_settings(environ) == {key: environ[key] for key in list(environ)[:3]}
    assert kernel_settings({}) == {}
    for name in ("TF_ENABLE_ONEDNN_OPTS", "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    machine = machine_info("jax")
    assert machine["settings"] == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    older = dict(machine, settings=None)
    del older["settings"]  # a run recorded before the settings were
    store = {"sections": {}, "entries": {}}
    report.record(store, "alignment", [], machine, 0.5, 0.7)
    report.record(store, "data", [], dict(machine, backend="tensorflow", settings={}), 0.5, 0.7)
    report.record(store, "inference", [], dict(older, backend="tensorflow"), 0.5, 0.7)
    lines = report.machine_lines(store)
    assert "| Kernel settings |" in lines[3]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[5:]}
    assert "| XLA_FLAGS=--xla_force_host_platform_device_count=2 |" in rows["alignment, jax"]
    assert "| defaults |" in rows["data, tensorflow"]
    assert "| not recorded |" in rows["inference, tensorflow"]


def test_the_authors_side_trains_in_a_process_without_keras_or_tensorflow():
    pytest.importorskip("torch")
    code = (
        "import json, sys\n"
        "from benchmarks import authors\n"
        "result = authors.measure('torch', 'training', 'bfloat16', (64, 64), 2, repeats=1, warmup=1, depth=50)\n"
        "result['loaded'] = sorted({'keras', 'tensorflow', 'alignseg_keras'} & set(sys.modules))\n"
        "print(json.dumps(result))\n"
    )
    result = json.loads(last_line_of_process([sys.executable, "-c", code]))
    assert result["loaded"] == []  # its memory is PyTorch's and the network's alone
    assert 0 < result["seconds"] and 0 < result["rss_before_mib"] <= result["peak_rss_mib"]


def test_the_authors_momentum_buffers_exist_before_the_first_step_and_change_no_step():
    torch = pytest.importorskip("torch")
    images, labels = authors.random_batch((64, 64), 2)
    steps = []
    for _ in range(2):
        torch.manual_seed(0)
        steps.append(authors.torch_step("training", "float32", images, labels, depth=50))
    prebuilt, lazy = steps
    parameters = [p for group in prebuilt.optimizer.param_groups for p in group["params"]]
    assert all(not prebuilt.optimizer.state[p]["momentum_buffer"].any() for p in parameters)
    lazy.optimizer.state.clear()  # torch's own start: the first step creates the buffers
    for call in range(2):
        for step in (prebuilt, lazy):
            torch.manual_seed(call)  # the same dropout masks on both sides
            step()
    for with_zeros, without in zip(parameters, (p for group in lazy.optimizer.param_groups for p in group["params"])):
        torch.testing.assert_close(with_zeros, without, rtol=0, atol=0)


def test_the_goals_configurations_come_first_and_none_twice():
    full = list(authors.configurations(quick=False))
    assert full[:4] == [("inference", "float32", (512, 512), 1), ("inference", "bfloat16", (512, 512), 1),
                        ("training", "float32", (512, 512), 2), ("training", "bfloat16", (512, 512), 2)]
    assert len(full) == len(set(full)) == 2 * (len(authors.INFERENCE_SIZES) + len(authors.TRAINING_SIZES))
    quick = list(authors.configurations(quick=True))
    assert quick[:4] == full[:4] and ("inference", "float32", (256, 256), 1) in quick


def entry(side, kind, precision, seconds, size=(512, 512), batch=1, run="r1", peak=1024.0):
    return {"section": "authors", "run": run, "side": side, "kind": kind, "precision": precision,
            "size": list(size), "batch": batch, "seconds": seconds, "rss_before_mib": peak / 2,
            "peak_rss_mib": peak, "peak_anonymous_mib": peak - 256.0,
            "key": authors.entry_key(kind, precision, size, batch, side)}


def store_of(entries):
    by_key = {e["key"]: e for e in entries}
    for ours in (e for e in entries if e["side"] == "keras" and e["kind"] != "peak"):
        configuration = (ours["kind"], ours["precision"], ours["size"], ours["batch"])
        theirs = by_key.get(authors.entry_key(*configuration, "torch"))
        if theirs:
            authors.add_ratios(ours, theirs)
    return {"sections": {}, "entries": by_key}


def test_best_precision_ratio_takes_each_sides_faster_precision():
    entries = [
        entry("keras", "inference", "float32", 0.9), entry("torch", "inference", "float32", 1.0),
        entry("keras", "inference", "bfloat16", 0.45), entry("torch", "inference", "bfloat16", 1.2),
    ]
    ratio, text = report.authors_best_ratio(entries, "inference", (512, 512), 1)
    assert ratio == pytest.approx(0.45 / 1.0)
    assert "bfloat16 against 1.00 s float32" in text
    rows = report.authors_target_rows(store_of(entries))
    assert rows[0][-1] == "no" and rows[2][2] == "0.90x" and rows[2][-1] == "no"
    assert rows[1][2] == "not measured in one run" and rows[1][-1] == "not measured"


def test_ratios_are_not_taken_across_runs():
    entries = [
        entry("keras", "inference", "float32", 0.9), entry("torch", "inference", "float32", 1.0),
        entry("keras", "inference", "bfloat16", 0.3, run="r2"), entry("torch", "inference", "bfloat16", 1.2, run="r2"),
    ]
    assert report.authors_best_ratio(entries, "inference", (512, 512), 1) == (None, "not measured in one run")


def test_tables_show_both_sides_with_times_memory_and_ratios():
    entries = [
        entry("keras", "training", "float32", 4.0, batch=2, peak=4096.0),
        entry("torch", "training", "float32", 10.0, batch=2, peak=2048.0),
        entry("keras", "inference", "float32", 1.0, size=(256, 256)),
        entry("torch", "inference", "float32", 2.0, size=(256, 256)),
        entry("keras", "inference", "float32", 3.0, size=(1024, 2048)),  # theirs missing: no row
    ]
    lines = report.authors_lines(store_of(entries))
    text = "\n".join(lines)
    assert ("| 256x256 | 1 | float32 | 1.000 | 2.000 | 0.50x | 0.50 / 1.00 | 0.50 / 1.00 | 1.00x "
            "| 0.75 / 0.75 | 1.00x |") in text
    assert ("| 512x512 | 2 | float32 | 4.000 | 10.000 | 0.40x | 2.00 / 4.00 | 1.00 / 2.00 | 2.00x "
            "| 3.75 / 1.75 | 2.14x |") in text
    assert "1024x2048" not in text
    rows = report.authors_target_rows(store_of(entries))
    assert rows[1][2].startswith("0.40x (4.00 s float32 against 10.00 s float32)")
    assert rows[1][-1] == "yes"  # the goal is "at most 0.40x"
    del entries[1]["peak_anonymous_mib"]  # theirs from a run before it was recorded: empty cells
    text = "\n".join(report.authors_lines({"sections": {}, "entries": {e["key"]: e for e in entries}}))
    assert "| 4.000 | 10.000 | 0.40x | 2.00 / 4.00 | 1.00 / 2.00 | 2.00x |  |  |" in text


def peak_entry(precision, gflops, run="r1"):
    return {"section": "authors", "run": run, "side": "keras", "kind": "peak", "precision": precision,
            "peak_gflops": gflops, "inference_gflop": 200.0, "training_gflop": 1200.0,
            "key": f"authors peak {precision}"}


def test_the_convolution_peak_bounds_the_best_ratio():
    entries = [
        entry("keras", "inference", "float32", 0.9), entry("torch", "inference", "float32", 1.0),
        entry("keras", "inference", "bfloat16", 0.5), entry("torch", "inference", "bfloat16", 0.8),
        peak_entry("float32", 200.0), peak_entry("bfloat16", 400.0),
    ]
    # 200 GFLOP at 400 GFLOP/s: 0.5 s at best, 0.62x their 0.8 s.
    ratio, text = report.authors_best_ratio(entries, "inference", (512, 512), 1)
    assert ratio == pytest.approx(0.5 / 0.8)
    assert text.endswith("at this machine's best convolution rate at least 0.62x (0.50 s)")
    # A peak of another run bounds nothing; the tables list no peak rows.
    other = entries[:4] + [peak_entry("bfloat16", 400.0, run="r0")]
    assert "convolution rate" not in report.authors_best_ratio(other, "inference", (512, 512), 1)[1]
    rows = [line for line in report.authors_lines(store_of(entries)) if line.startswith("| 512x512")]
    assert len(rows) == 2


def test_convolution_rates_are_measured_for_every_shape():
    from benchmarks import convolution_peak

    rates = convolution_peak.convolution_rates("float32", repeats=1)
    assert set(rates) == {shape[0] for shape in convolution_peak.SHAPES}
    assert all(rate > 0 for rate in rates.values())
    assert convolution_peak.bound_seconds(
        {"peak_gflops": 100.0, "training_gflop": 300.0}, "training") == pytest.approx(3.0)


def test_training_memory_parts_run_on_both_sides():
    pytest.importorskip("torch")
    for side in ("keras", "torch"):
        for part in ("encoder", "loss"):
            result = training_memory.measure(side, part, (64, 64), 1, depth=50)
            assert result["side"] == side and result["part"] == part
            assert 0 < result["rss_before_mib"] <= result["peak_rss_mib"]
            assert result["held_mib"] == result["peak_rss_mib"] - result["rss_before_mib"]
            assert result["held_anonymous_mib"] == result["peak_anonymous_mib"] - result["anonymous_before_mib"]
    # Replacing the sampler patches AlignmentLayer, so it runs in a process of its own.
    command = [sys.executable, "-m", "benchmarks.training_memory", "--one", "--side", "keras",
               "--part", "network_resize", "--size", "64", "64", "--batch", "1", "--depth", "50"]
    assert json.loads(last_line_of_process(command))["part"] == "network_resize"


def test_resizing_replaces_sampling_only_where_asked():
    code = (
        "import numpy as np\n"
        "from alignseg_keras.layers import AlignmentLayer\n"
        "from alignseg_keras.layers.alignment import resize_bilinear\n"
        "from benchmarks import training_memory\n"
        "features = np.random.rand(1, 4, 4, 3).astype('float32')\n"
        "offsets = np.full((1, 8, 8, 2), 0.7, 'float32')\n"
        "layer = AlignmentLayer()\n"
        "assert not np.allclose(layer([features, offsets]), resize_bilinear(features, (8, 8)))\n"
        "training_memory._resize_instead_of_sampling()\n"
        "np.testing.assert_allclose(layer([features, offsets]), resize_bilinear(features, (8, 8)))\n"
    )
    last_line_of_process([sys.executable, "-c", code])


def test_training_memory_table_gives_the_difference_per_part():
    entries = [{"side": side, "part": part, "held_mib": held, "held_anonymous_mib": held - 10}
               for side, part, held in (("keras", "encoder", 2000.0), ("torch", "encoder", 1990.0),
                                        ("keras", "network", 4800.0), ("torch", "network", 4400.0),
                                        ("keras", "network_resize", 4500.0),
                                        ("keras", "step", 5900.0), ("torch", "step", 5000.0))]
    entries[-1]["held_anonymous_mib"] = 4900.0
    lines = training_memory.table(entries, (512, 512), 2).splitlines()
    assert not [line for line in lines if line.startswith("| loss")]  # not measured: no row
    assert "| encoder | 2000 | 1990 | +10 | 1990 | 1980 | +10 |" in lines
    assert "| network_resize | 4500 |  |  | 4490 |  |  |" in lines
    assert "| step | 5900 | 5000 | +900 | 5890 | 4900 | +990 |" in lines


def test_progress_lines_name_times_and_rates():
    from benchmarks.run import entry_summary

    assert entry_summary(entry("keras", "inference", "float32", 0.25)) == "0.2500 s"
    assert entry_summary(peak_entry("bfloat16", 421.9)) == "421.9 GFLOP/s"


def test_decoder_forms_are_restored_and_timed():
    from alignseg_keras.layers import alignment
    from alignseg_keras.layers.offset_head import OffsetHead
    from benchmarks import decoder_forms

    images = np.zeros((1, 4, 4, 2), "float32")
    split, shifted = OffsetHead.call_on_upsampled_pair, OffsetHead._offsets_from_hidden
    with decoder_forms.decoder_form("before"):
        assert not alignment._uses_fused_resize(images)
        assert OffsetHead.call_on_upsampled_pair is decoder_forms._concatenated_pair
    with decoder_forms.decoder_form("fused_resize"):
        assert alignment._uses_fused_resize(images)
        assert OffsetHead.call_on_upsampled_pair is decoder_forms._concatenated_pair
        assert not alignment._uses_fused_sampler(images)
    with decoder_forms.decoder_form("split"):
        assert OffsetHead.call_on_upsampled_pair is split
        assert not alignment._uses_fused_sampler(images)
    with decoder_forms.decoder_form("fused_sampler"):
        assert alignment._uses_fused_sampler(images)
        assert OffsetHead._offsets_from_hidden is decoder_forms._offsets_by_convolution
    with decoder_forms.decoder_form("shifted_offsets"):
        assert OffsetHead._offsets_from_hidden is shifted
    assert OffsetHead.call_on_upsampled_pair is split and alignment._uses_fused_resize(images)
    assert alignment._uses_fused_sampler(images) and OffsetHead._offsets_from_hidden is shifted
    result = decoder_forms.measure("inference", "float32", rounds=1, size=(64, 64), depth=50)
    assert set(result["min_seconds"]) == set(decoder_forms.FORMS)
    assert decoder_forms.parse(["--forms", "fused_sampler", "shifted_offsets"]).forms == [
        "fused_sampler", "shifted_offsets"]
    with pytest.raises(ValueError, match="folded"):
        decoder_forms.measure("training", "float32", rounds=1, size=(64, 64), forms=["folded"])


def test_op_kinds_sort_tensorflow_and_onednn_op_types():
    from benchmarks import op_profile

    assert op_profile.op_kind("_MklNativeConv2DBackpropFilterWithBias") == "convolution, kernel gradient"
    assert op_profile.op_kind("Conv2DBackpropInput") == "convolution, input gradient"
    assert op_profile.op_kind("_MklNativeFusedConv2D") == "convolution, forward"
    assert op_profile.op_kind("_MklNativeFusedBatchNormGradV3") == "batch normalization"
    assert op_profile.op_kind("UnsortedSegmentSum") == op_profile.op_kind("CropAndResize")
    assert op_profile.op_kind("ResizeBilinearGrad") == "resizing"
    assert op_profile.op_kind("AddV2") == op_profile.OTHER
    kinds = op_profile.by_kind({"Conv2D": (3.0, 2), "_MklNativeConv2D": (1.0, 1), "AddV2": (1.0, 5)})
    assert kinds[0] == {"kind": "convolution, forward", "seconds": 4.0, "calls": 3, "share": 0.8}
    assert kinds[1]["kind"] == op_profile.OTHER and kinds[1]["share"] == pytest.approx(0.2)


def test_op_profile_records_the_ops_of_a_training_step():
    from benchmarks import op_profile

    result = op_profile.profile("training", "float32", (64, 64), 1, depth=50, warmup=1)
    kinds = {entry["kind"]: entry for entry in result["kinds"]}
    # A ResNet-50 AlignSeg: 53 + decoder convolutions forward, the same again for each gradient.
    assert kinds["convolution, forward"]["calls"] >= 53
    assert kinds["convolution, kernel gradient"]["calls"] >= 53
    assert kinds["batch normalization"]["calls"] > 0
    assert kinds["sampler (gather, scatter, crop-and-resize)"]["calls"] > 0
    # CropAndResize (the fused sampler's forward pass) runs as an asynchronous kernel.
    assert result["op_types"]["CropAndResize"]["calls"] == 9  # 4 AlignFA x 2 + AlignCM
    assert sum(entry["share"] for entry in result["kinds"]) == pytest.approx(1.0)
    assert result["wall_seconds"] > 0
    assert "Conv2DBackpropInput" in op_profile.format_report(result)


def test_convolution_passes_compute_the_same_gradients_in_tensorflow_and_pytorch():
    pytest.importorskip("torch")
    from benchmarks import convolution_passes

    shape, kernel_size, filters = (2, 9, 7, 5), 3, 4
    ours = {name: f() for name, f in convolution_passes.tensorflow_passes(shape, kernel_size, filters,
                                                                          "float32").items()}
    for channels_last in (True, False):
        passes = convolution_passes.torch_passes(shape, kernel_size, filters, "float32", channels_last=channels_last)
        all_three = [t.contiguous().numpy() for t in passes.pop(convolution_passes.ALL_PASSES)()]
        theirs = {name: f().contiguous().numpy() for name, f in passes.items()}
        # Three passes in one call: the gradients of sum(output * upstream), as the separate passes.
        np.testing.assert_allclose(all_three[0], theirs["input gradient"], atol=1e-5)
        np.testing.assert_allclose(all_three[1], theirs["kernel gradient"], rtol=1e-5, atol=1e-5)
        # PyTorch's layouts back to TensorFlow's: NCHW -> NHWC, OIHW -> HWIO. Tolerances: float32
        # rounding of sums of 45 (forward), 36 (input gradient) and 126 (kernel gradient) products.
        np.testing.assert_allclose(ours["forward"], theirs["forward"].transpose(0, 2, 3, 1), atol=1e-5)
        np.testing.assert_allclose(ours["input gradient"], theirs["input gradient"].transpose(0, 2, 3, 1),
                                   atol=1e-5)
        np.testing.assert_allclose(ours["kernel gradient"], theirs["kernel gradient"].transpose(2, 3, 1, 0),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[convolution_passes.MATRIX_PRODUCTS], ours["kernel gradient"], rtol=1e-5, atol=1e-5)
    for name in (convolution_passes.ALL_PASSES, convolution_passes.SHIFTED_PRODUCTS):
        input_gradient, kernel_gradient = ours[name]
        np.testing.assert_allclose(input_gradient, ours["input gradient"], atol=1e-5)
        np.testing.assert_allclose(kernel_gradient, ours["kernel gradient"], rtol=1e-5, atol=1e-5)
    result = convolution_passes.measure(shape, kernel_size, filters, "float32", repeats=1)
    assert len(result["gflops"]) == 14 and all(rate > 0 for rate in result["gflops"].values())


def test_kernel_gradient_as_matrix_products_for_every_kernel_size():
    import tensorflow as tf

    from benchmarks.convolution_passes import kernel_gradient_by_matrix_products
    from benchmarks.convolution_passes import random_inputs

    for kernel_size in (1, 3, 5):
        images, _, upstream = random_inputs((2, 6, 5, 3), kernel_size, 4)
        expected = tf.raw_ops.Conv2DBackpropFilter(
            input=images, filter_sizes=[kernel_size, kernel_size, 3, 4], out_backprop=upstream,
            strides=[1, 1, 1, 1], padding="SAME")
        # Sums of at most 60 products in float32.
        np.testing.assert_allclose(kernel_gradient_by_matrix_products(tf.constant(images), tf.constant(upstream),
                                                                      kernel_size), expected, rtol=1e-5, atol=1e-5)


def test_gpu_driver_keeps_the_last_json_line_of_a_configuration():
    from benchmarks import gpu

    # subprocess.TimeoutExpired carries bytes even in text mode; a configuration prints its
    # timings before its memory analyses, so the last line is the most complete one.
    output = b'progress\n{"inference": 1}\nwarning\n{"inference": 1, "training": 2}\n'
    assert gpu.last_json_line(output) == {"inference": 1, "training": 2}
    assert gpu.last_json_line("no result\n") is None
    assert gpu.last_json_line(None) is None


def test_gpu_program_memory_counts_arguments_outputs_and_donation():
    jax = pytest.importorskip("jax")
    from benchmarks import gpu

    array = np.ones((256, 256), np.float32)  # 256 KiB

    def double(x):
        return x * 2.0

    kept = gpu.program_memory_gib(jax.jit(double).lower(array).compile()) * 2**30
    donated = gpu.program_memory_gib(jax.jit(double, donate_argnums=0).lower(array).compile()) * 2**30
    assert kept >= 2 * array.nbytes  # the argument and the output
    assert kept - donated == array.nbytes  # the output reuses the donated argument


def test_onnx_operator_times_sum_the_kernels_of_the_last_run(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto
    from onnx import helper

    from benchmarks import int8

    # images -> Relu -> Add(itself) -> Relu: two Relu kernels and one Add per run.
    nodes = [helper.make_node("Relu", ["images"], ["a"]), helper.make_node("Add", ["a", "a"], ["b"]),
             helper.make_node("Relu", ["b"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 64, 64, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 64, 64, 3])])
    path = str(tmp_path / "tiny.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    times = int8.onnx_operator_times(path, np.ones((1, 64, 64, 3), "float32"), calls=3)
    assert list(times)[0] == "model run" and set(times) == {"model run", "Relu", "Add"}
    assert all(value > 0 for value in times.values())
    # One run's kernels only: together they fit inside that run.
    assert times["Relu"] + times["Add"] <= times["model run"]
    assert list(times)[1:] == sorted(list(times)[1:], key=lambda name: -times[name])


def test_trace_union_counts_overlaps_once():
    from benchmarks.trace_summary import union_length

    assert union_length([(0, 10), (5, 15), (20, 25)]) == 20
    assert union_length([(0, 10), (2, 3)]) == 10
    assert union_length([]) == 0


def test_trace_summary_of_a_pytorch_gpu_trace():
    from benchmarks.trace_summary import summarize

    # The shape of PyTorch's Chrome trace of a CUDA run: a host process and a GPU
    # process labelled "GPU 0" whose kernels and copies run on streams.
    def meta(pid, name, args):
        return {"ph": "M", "pid": pid, "tid": 0, "name": name, "args": args}

    def event(pid, category, name, ts, dur):
        return {"ph": "X", "pid": pid, "tid": 7, "cat": category, "name": name, "ts": ts, "dur": dur}

    events = [
        meta(4242, "process_name", {"name": "python"}),
        meta(0, "process_name", {"name": "python"}), meta(0, "process_labels", {"labels": "GPU 0"}),
        event(4242, "cpu_op", "aten::conv2d", 0, 3000), event(4242, "cpu_op", "aten::convolution", 10, 2900),
        event(0, "gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 100, 400),
        event(0, "kernel", "sm90_xmma_fprop", 600, 1000), event(0, "kernel", "sm90_xmma_fprop", 1700, 1000),
        event(0, "kernel", "elementwise_kernel", 2700, 100),
    ]
    summary = summarize(events, top=2)
    assert list(summary) == ["python", "python [GPU 0]"]  # busiest first: the host spans 3 ms
    gpu = summary["python [GPU 0]"]
    assert gpu["busy_ms"] == pytest.approx(2.5) and gpu["span_ms"] == pytest.approx(2.7) and gpu["events"] == 4
    assert gpu["by_name"] == [["sm90_xmma_fprop", pytest.approx(2.0), 2],
                              ["Memcpy HtoD (Pageable -> Device)", pytest.approx(0.4), 1]]
    assert gpu["by_category"] == {"kernel": pytest.approx(2.1), "gpu_memcpy": pytest.approx(0.4)}
    # Nested host events are summed by name but their union counts once.
    assert summary["python"]["busy_ms"] == pytest.approx(3.0)


def test_trace_summary_reads_a_jax_profile(tmp_path):
    pytest.importorskip("jax")
    from benchmarks.trace_summary import load_events
    from benchmarks.trace_summary import summarize

    # In a process of its own: JAX's profiler beside TensorFlow's is not asked for here.
    script = (
        "import jax, jax.numpy as jnp\n"
        "f = jax.jit(lambda x: jnp.tanh(x @ x).sum())\n"
        "x = jnp.ones((256, 256)); f(x).block_until_ready()\n"
        f"with jax.profiler.trace({str(tmp_path)!r}):\n"
        "    for _ in range(3): f(x).block_until_ready()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    (path,) = [str(p) for p in tmp_path.glob("plugins/profile/*/*.trace.json.gz")]
    summary = summarize(load_events(path))
    host = summary["/host:CPU"]
    assert 0 < host["busy_ms"] <= host["span_ms"]
    names = [name for name, _, _ in host["by_name"]]
    assert any("PjitFunction" in name for name in names)


def test_gpu_script_profiles_the_pytorch_side_on_the_cpu():
    torch = pytest.importorskip("torch")
    from benchmarks import gpu

    convolution = torch.nn.Conv2d(3, 4, 3)
    images = torch.ones(1, 3, 16, 16)
    summary = gpu.torch_profile(lambda: convolution(images).sum().backward(), steps=2, cuda=False)
    host = next(value for name, value in summary.items() if "[CPU]" in name)
    calls = {name: count for name, _, count in host["by_name"]}
    assert calls["aten::convolution_backward"] == 2 and 0 < host["busy_ms"] <= host["span_ms"]


def test_the_results_store_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from benchmarks import timing

    path = tmp_path / "results.json"
    store = {"sections": {"inference, tensorflow": {"load_before": 0.5}}, "entries": {}}
    report.save(store, path)
    assert report.load(path) == store
    before = path.read_bytes()

    def full_disk(path, mode):  # writes a part of the file, then the disk is full
        with open(path, mode) as handle:
            handle.write('{"sections": {')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(timing, "open", full_disk, raising=False)
    with pytest.raises(OSError, match="No space left"):
        report.save({"sections": {}, "entries": {"lost": 1}}, path)
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["results.json"]
    # The page beside it too: mostly hand-written analysis that no run could write again.
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nHand-written analysis.\n")
    with pytest.raises(OSError, match="No space left"):
        report.write_markdown({"sections": {}, "entries": {}}, str(page))
    assert page.read_text() == "# Benchmarks\n\nHand-written analysis.\n"


def _machine(date, backend="tensorflow"):
    return {"date": date, "backend": backend, "cpu": "CPU", "cores": 2, "gpus": [], "versions": {}}


def test_a_sections_rows_are_of_one_run_and_ratios_across_runs_are_refused():
    step = {"key": "training b2", "section": "training", "model": "AlignSeg-R101", "batch": 2,
            "seconds": 2.0, "config": "float32, graph", "size": [512, 512]}
    data = {"key": "data", "section": "data", "images_per_second": 10.0, "batches": 10}
    jax_row = {"key": "inference jax", "section": "inference", "model": "AlignSeg-R101",
               "mode": "jax.jit (XLA)", "seconds": 1.0}
    store = {"sections": {}, "entries": {}}
    for entry in (step, dict(step, key="training b2 bf16", seconds=1.0), data):
        report.record(store, entry["section"], [entry], _machine("run 1"), 0.1, 0.1)
    report.record(store, "inference", [jax_row], _machine("run 1", "jax"), 0.1, 0.1)
    [row] = [r for r in report.target_rows(store) if r.startswith("| tf.data")]
    assert "| 5.0x | yes |" in row  # 10 images/s against 2 a second: one run
    # A later quick run measures one training configuration and tf.data again.
    report.record(store, "training", [dict(step, seconds=4.0)], _machine("run 2"), 0.1, 0.1)
    assert [e["seconds"] for e in store["entries"].values() if e["section"] == "training"] == [4.0]
    [row] = [r for r in report.target_rows(store) if r.startswith("| tf.data")]
    assert "| not measured in one run | not measured |" in row
    report.record(store, "data", [dict(data, images_per_second=5.0)], _machine("run 2"), 0.1, 0.1)
    [row] = [r for r in report.target_rows(store) if r.startswith("| tf.data")]
    assert "| 10.0x | yes |" in row  # 5 images/s against 0.5
    # Other backends' and other sections' rows stay, stamped with their run; a faster
    # step of another backend's run does not hide this run's ratio.
    assert store["entries"]["inference jax"]["measured"] == "run 1"
    report.record(store, "training", [dict(step, key="jax step", seconds=0.1)],
                  _machine("run 3", "jax"), 0.1, 0.1)
    [row] = [r for r in report.target_rows(store) if r.startswith("| tf.data")]
    assert "| 10.0x | yes |" in row


def test_entries_stored_before_runs_were_named_get_their_sections_run(tmp_path):
    store = {"sections": {"inference, jax": {"machine": _machine("jax run", "jax")},
                          "inference, tensorflow": {"machine": _machine("tf run")},
                          "alignment, jax": {"machine": _machine("alignment run", "jax")}},
             "entries": {"a": {"section": "inference", "mode": "jax.jit (XLA)"},
                         "b": {"section": "inference", "mode": "graph"},
                         "c": {"section": "alignment", "run": "jax"}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(store))
    entries = report.load(str(path))["entries"]
    assert [(entries[k]["backend"], entries[k]["measured"]) for k in "abc"] == [
        ("jax", "jax run"), ("tensorflow", "tf run"), ("jax", "alignment run")]


def test_the_gpu_driver_records_its_code_and_arguments_and_replaces_its_file_whole(
        tmp_path, monkeypatch):
    from benchmarks import gpu

    lines = {"jax": '{"side": "jax", "inference_ms": 1}\n', "torch": '{"side": "torch"}\n'}

    run = subprocess.run

    def configuration(command, **kwargs):  # stands for a configuration's process
        if "--side" not in command:  # git, for the commit
            return run(command, **kwargs)
        side = command[command.index("--side") + 1]
        return subprocess.CompletedProcess(command, 0, stdout=lines[side], stderr="")

    monkeypatch.setattr(gpu.subprocess, "run", configuration)
    monkeypatch.setattr(gpu, "gpu_name", lambda: "a GPU")
    output = tmp_path / "gpu.json"
    args = gpu.parse(["--output", str(output), "--precisions", "float32", "--repeats", "4"])
    gpu.drive(args)
    results = json.loads(output.read_text())
    assert results["arguments"]["repeats"] == 4 and results["arguments"]["preset"] == (
        "alignseg_resnet101_official")
    assert "code" in results and len(results["runs"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["gpu.json"]  # no partial file left


def test_a_precision_run_keeps_the_sections_it_does_not_measure(tmp_path, capsys, monkeypatch):
    from benchmarks import precision

    # The official model's sections stand in for themselves: this is about the file.
    monkeypatch.setattr(precision, "official_models", lambda seed: None)
    monkeypatch.setattr(precision, "official", lambda models, images: {"agreement": 0.5})
    monkeypatch.setattr(precision, "timing", lambda models, repeats: {"seconds": 1.0})
    output = tmp_path / "precision.json"
    earlier = {"demo": {"machine": {"date": "2026-12-06"}, "agreement": 0.999},
               "official": {"machine": {"date": "2026-12-06"}, "agreement": 0.998}}
    output.write_text(json.dumps(earlier))
    # Every section, as the default run; the demo model is not there (a fresh clone).
    precision.main(["--demo-model", str(tmp_path / "missing.keras"), "--output", str(output)])
    results = json.loads(output.read_text())
    assert results["demo"] == earlier["demo"]  # it was deleted
    assert results["official"]["agreement"] == 0.5 and results["timing"]["seconds"] == 1.0
    assert "keeps its demo figures of 2026-12-06" in capsys.readouterr().out
