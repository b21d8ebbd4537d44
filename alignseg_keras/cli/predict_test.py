import numpy as np
import pytest

from alignseg_keras.cli import main
from alignseg_keras.data.cityscapes import LABEL_ID_TO_TRAIN_ID
from alignseg_keras.models.alignseg import OFFSET_MODULES
from alignseg_keras.testing import tiny_alignseg
from alignseg_keras.visualize import cityscapes_palette
from alignseg_keras.visualize import load_image
from alignseg_keras.visualize import save_png


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = tiny_alignseg(num_classes=19)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("first", (40, 56, 3)), ("second", (33, 47, 3))):
        path = tmp_path / "in" / f"{name}.png"
        save_png(path, rng.integers(0, 256, shape).astype("uint8"))
        paths.append(str(path))
    return paths


def test_predict_writes_pictures_and_reports_unreadable_images(
    model_path, images, tmp_path, capsys
):
    broken = tmp_path / "in" / "broken.png"
    broken.write_text("not a png")
    output = tmp_path / "out"
    code = main(["predict", images[0], str(broken), images[1], str(tmp_path / "missing.jpg"),
                 "--model", model_path, "--output", str(output), "--label-ids", "--offsets"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "missing.jpg" in err and "2 of 4 images failed" in err
    for name, size in (("first", (40, 56)), ("second", (33, 47))):
        colours = load_image(output / f"{name}_color.png")
        assert colours.shape == size + (3,)
        # Every pixel has one of the 19 class colours.
        palette = {tuple(colour) for colour in cityscapes_palette()}
        assert {tuple(c) for c in colours.reshape(-1, 3)} <= palette
        assert load_image(output / f"{name}_overlay.png").shape == size + (3,)
        label_ids = np.asarray(load_image(output / f"{name}_labelIds.png"))[..., 0]
        assert (LABEL_ID_TO_TRAIN_ID[label_ids] != 255).all()
        for module in OFFSET_MODULES:
            assert (output / f"{name}_{module}.png").exists()
    assert not (output / "broken_color.png").exists()


def test_predict_with_sliding_windows_scales_and_flip(model_path, images, tmp_path):
    output = tmp_path / "out"
    code = main(["predict", *images, "--model", model_path, "--output", str(output),
                 "--sliding", "32", "--scales", "0.75", "1.0", "--flip", "--palette", "ade20k"])
    assert code == 0
    colours = load_image(output / "second_color.png")
    assert colours.shape == (33, 47, 3)
    assert not (output / "second_labelIds.png").exists()


def test_predict_refuses_images_whose_pictures_would_collide(tmp_path, capsys):
    code = main(["predict", "a/scene.png", "b/scene.png", "--model", "unused.keras",
                 "--output", str(tmp_path)])
    assert code == 2
    assert "same name 'scene'" in capsys.readouterr().err
