"""read_image: decoded pixels for a good file, ImageReadError naming the file otherwise."""

import os
import struct
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.image_io import ImageReadError, image_problem, read_image


def _picture() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    image[20:40] = (0, 128, 255)
    return image


def _encoded(ext: str, params: tuple[int, ...] = ()) -> bytes:
    ok, encoded = cv2.imencode(ext, _picture(), list(params))
    assert ok
    return encoded.tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("ext,params", [
    (".jpg", ()),
    (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    (".jpg", (cv2.IMWRITE_JPEG_RST_INTERVAL, 1)),
    (".png", ()),
    (".webp", ()),
    (".bmp", ()),
])
def test_a_valid_image_reads_like_imread(tmp_path: Path, ext: str, params: tuple) -> None:
    path = _write(tmp_path / f"good{ext}", _encoded(ext, params))
    image = read_image(path)
    np.testing.assert_array_equal(image, cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8


def test_bytes_after_the_jpeg_end_marker_are_allowed(tmp_path: Path) -> None:
    # Cameras append data there (a motion-photo video, padding); the picture is complete.
    path = _write(tmp_path / "padded.jpg", _encoded(".jpg") + b"\0" * 16 + b"trailer")
    assert read_image(path).shape == (60, 80, 3)


@pytest.mark.parametrize("ext,reason", [
    (".jpg", "truncated JPEG"),
    (".png", "truncated PNG"),
    (".webp", "truncated WebP"),
])
def test_a_file_cut_in_half_is_named_and_called_truncated(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], ext: str, reason: str
) -> None:
    data = _encoded(ext)
    path = _write(tmp_path / f"half{ext}", data[:len(data) // 2])
    # What the CLI used before: for JPEG a partial picture and only libjpeg's warning.
    partial = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert ext != ".jpg" or partial is not None
    capfd.readouterr()
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value) and info.value.path == path
    assert isinstance(info.value, ValueError)
    assert capfd.readouterr().err == ""  # rejected before libjpeg/libpng could print


def test_every_truncation_of_a_jpeg_and_a_png_is_caught() -> None:
    for ext in (".jpg", ".png"):
        data = _encoded(ext)
        for cut in range(len(data) // 50, len(data), len(data) // 50):
            assert image_problem(data[:cut]) is not None, (ext, cut)


def test_a_png_with_damaged_pixels_fails_its_crc(tmp_path: Path) -> None:
    data = bytearray(_encoded(".png"))
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF
    with pytest.raises(ImageReadError, match="CRC mismatch in its IDAT chunk"):
        read_image(_write(tmp_path / "damaged.png", bytes(data)))


def test_random_bytes_empty_and_missing_files(tmp_path: Path) -> None:
    noise = _write(tmp_path / "noise.jpg", np.random.default_rng(1).bytes(4000))
    with pytest.raises(ImageReadError, match=r"noise\.jpg: corrupt, or not an image format"):
        read_image(noise)
    with pytest.raises(ImageReadError, match=r"empty\.png: empty file"):
        read_image(_write(tmp_path / "empty.png", b""))
    with pytest.raises(ImageReadError, match=r"missing\.jpg: no such file"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)
    # A JPEG header whose first segment claims a length below its own 2 bytes.
    broken = b"\xff\xd8\xff\xe0" + struct.pack(">H", 1) + b"\0" * 32
    with pytest.raises(ImageReadError, match="corrupt JPEG"):
        read_image(_write(tmp_path / "broken.jpg", broken))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions")
def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    path = _write(tmp_path / "locked.png", _encoded(".png"))
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match=r"locked\.png: permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_a_truncated_bmp_is_left_to_the_decoder_which_rejects_it_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = _encoded(".bmp")
    path = _write(tmp_path / "half.bmp", data[:len(data) // 2])
    capfd.readouterr()
    with pytest.raises(ImageReadError, match=r"half\.bmp: corrupt"):
        read_image(path)
    assert "imdecode" not in capfd.readouterr().err  # OpenCV's own log is silenced


@pytest.mark.parametrize("api", ["opencv5", "opencv4", "utils"])
def test_quiet_opencv_silences_and_restores_the_log_level_in_both_apis(monkeypatch, api):
    # OpenCV 5 has cv2.utils.logging; 4.x (which the package allows) only cv2.getLogLevel /
    # cv2.setLogLevel: the app's camera probe failed with AttributeError there.
    from edgedet.image_io import quiet_opencv

    levels = [4]
    fake = types.SimpleNamespace(getLogLevel=lambda: levels[-1],
                                 setLogLevel=lambda level: levels.append(level))
    if api == "opencv5":
        monkeypatch.setattr(cv2, "utils", types.SimpleNamespace(logging=fake), raising=False)
    elif api == "utils":  # cv2.utils.setLogLevel, as an open OpenCV pull request has it
        monkeypatch.setattr(cv2, "utils", fake, raising=False)
        monkeypatch.delattr(cv2, "getLogLevel", raising=False)
        monkeypatch.delattr(cv2, "setLogLevel", raising=False)
    else:
        monkeypatch.setattr(cv2, "utils", types.SimpleNamespace(), raising=False)
        monkeypatch.setattr(cv2, "getLogLevel", fake.getLogLevel, raising=False)
        monkeypatch.setattr(cv2, "setLogLevel", fake.setLogLevel, raising=False)
    with quiet_opencv():
        assert levels[-1] == 0  # LOG_LEVEL_SILENT
    assert levels == [4, 0, 4]
    # Overlapping blocks (two threads) that end out of order: the level comes back once the
    # last one ends, not when the first that saved it does.
    first, second = quiet_opencv(), quiet_opencv()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert levels[-1] == 0
    second.__exit__(None, None, None)
    assert levels[-1] == 4
