"""The one image reader: every kind of file PIL opens reads as a viewer shows it, or is refused
naming the file; label masks keep their palette indices."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deeplab.data.dataset import SegmentationDataset, read_mask, write_mask
from deeplab.data.images import read_rgb, to_rgb
from deeplab.runtime.errors import MissingFileError, UserError

# A 4 x 6 picture: left half red, right half a grey ramp, as a viewer shows it.
H, W = 4, 6
RGB = np.zeros((H, W, 3), np.uint8)
RGB[:, :3] = (200, 30, 10)
RGB[:, 3:] = np.array([0, 128, 255], np.uint8)[:, None]
GREY = RGB[..., 0]  # a grey picture: its red channel


def write(tmp_path, name, img: Image.Image, **save) -> str:
    path = tmp_path / name
    img.save(path, **save)
    return path


def test_rgb_and_grey_modes_read_as_rgb(tmp_path):
    cases = {
        "rgb.png": Image.fromarray(RGB),
        "grey.png": Image.fromarray(GREY, "L"),
        "palette.png": Image.fromarray(RGB).quantize(8),
        "cmyk.jpg": Image.fromarray(RGB).convert("CMYK"),
        "ycbcr.tif": Image.fromarray(RGB).convert("YCbCr"),
        "rgb.bmp": Image.fromarray(RGB),
    }
    for name, img in cases.items():
        out = read_rgb(write(tmp_path, name, img))
        assert out.dtype == np.uint8 and out.shape == (H, W, 3), name
        expected = np.repeat(GREY[..., None], 3, 2) if name == "grey.png" else RGB
        tolerance = 12 if name.endswith((".jpg", ".tif")) else 0  # lossy / YCbCr rounding
        assert np.abs(out.astype(int) - expected).max() <= tolerance, name


def test_one_bit_image_is_black_and_white(tmp_path):
    bits = Image.fromarray(GREY > 100).convert("1")
    out = read_rgb(write(tmp_path, "bits.png", bits))
    assert set(np.unique(out)) == {0, 255}
    assert (out[..., 0] == np.where(GREY > 100, 255, 0)).all()


def png_16bit_rgb(path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one): signature, IHDR, IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # depth 16, colour type 2 (RGB)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_16_bit_images_are_scaled_by_their_depth_not_clipped(tmp_path):
    grey16 = GREY.astype(np.uint16) * 257  # 255 -> 65535, 128 -> 32896: the same shades
    out = read_rgb(write(tmp_path, "deep.png", Image.fromarray(grey16)))  # mode I;16
    assert (out[..., 0] == GREY).all() and (out[..., 2] == GREY).all()
    png_16bit_rgb(tmp_path / "deep_rgb.png", RGB.astype(np.uint16) * 257)
    assert (read_rgb(tmp_path / "deep_rgb.png") == RGB).all()
    turned = Image.fromarray(grey16)
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down: the reader turns a copy, which has no format tags
    turned.save(tmp_path / "turned.png", exif=exif.tobytes())
    assert (read_rgb(tmp_path / "turned.png")[..., 0] == GREY[::-1, ::-1]).all()
    signed32 = np.round(GREY.astype(np.float64) / 255 * (2**31 - 1)).astype(np.int32)
    out = read_rgb(write(tmp_path, "deep32.tif", Image.fromarray(signed32)))  # mode I
    assert (out[..., 1] == GREY).all()


def test_float_image_in_unit_range_and_outside(tmp_path):
    unit = Image.fromarray(GREY.astype(np.float32) / 255, "F")
    assert (read_rgb(write(tmp_path, "f.tif", unit))[..., 2] == GREY).all()
    wild = Image.fromarray(GREY.astype(np.float32) * 10, "F")
    with pytest.raises(UserError, match=r"wild\.tif holds values 0 \.\. 2550 outside 0 \.\. 1,"):
        read_rgb(write(tmp_path, "wild.tif", wild))


def test_transparency_is_composited_on_white(tmp_path):
    alpha = np.full((H, W), 255, np.uint8)
    alpha[0] = 0  # top row fully transparent: shows the page
    alpha[1] = 128
    rgba = Image.fromarray(np.dstack([RGB, alpha]), "RGBA")
    out = read_rgb(write(tmp_path, "rgba.png", rgba))
    assert (out[0] == 255).all()
    assert (out[2:] == RGB[2:]).all()
    half = np.round(RGB[1].astype(float) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(out[1].astype(int) - half).max() <= 1

    la = Image.fromarray(np.dstack([GREY, alpha]), "LA")
    assert (read_rgb(write(tmp_path, "la.png", la))[0] == 255).all()

    palette = Image.fromarray(RGB).quantize(8)
    index = palette.getpixel((0, 0))
    out = read_rgb(write(tmp_path, "ptrans.png", palette, transparency=index))
    assert (out[:, :3] == 255).all() and (out[:, 3:] == RGB[:, 3:]).all()

    grey_trns = read_rgb(write(tmp_path, "ltrns.png", Image.fromarray(GREY, "L"), transparency=0))
    assert (grey_trns[:, 3] == 255).all()  # the black column is the transparent value


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: "rotate 90 CW to view"
    expected = np.rot90(RGB, k=-1)  # as the viewer shows it: turned a quarter clockwise
    exact = read_rgb(write(tmp_path, "phone.png", img, exif=exif.tobytes()))
    assert (exact == expected).all()
    photo = write(tmp_path, "phone.jpg", img, exif=exif.tobytes(), quality=100, subsampling=0)
    assert np.abs(read_rgb(photo).astype(int) - expected).max() <= 12


def test_a_mask_drawn_on_the_unrotated_pixels_is_explained(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(RGB).save(tmp_path / "JPEGImages/a.jpg", exif=exif.tobytes())
    write_mask(np.zeros((H, W), np.uint8), tmp_path / "masks/a.png")  # the stored orientation
    data = SegmentationDataset(
        ["a"],
        f"{tmp_path}/JPEGImages/{{id}}.jpg",
        f"{tmp_path}/masks/{{id}}.png",
        2,
        (0,) * 3,
        (1,) * 3,
    )
    with pytest.raises(UserError, match=r"a\.jpg is 4x6 but mask .* is 6x4.*EXIF rotation"):
        data.load(0)


def test_first_frame_of_a_multi_frame_file(tmp_path):
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = read_rgb(path)
    assert np.abs(out.astype(int) - RGB).max() <= 8  # GIF palette quantisation


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(MissingFileError, match=r"image .*absent\.jpg does not exist"):
        read_rgb(tmp_path / "absent.jpg")
    Image.fromarray(RGB).save(tmp_path / "whole.png")
    cases = {
        "text.jpg": b"not an image at all",
        "truncated.png": (tmp_path / "whole.png").read_bytes()[:60],
        "empty.jpg": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=rf"image .*{name.replace('.', '[.]')} cannot be read"):
            read_rgb(tmp_path / name)
    with pytest.raises(UserError, match=r"hsv\.png has PIL mode HSV"):
        to_rgb(Image.new("HSV", (2, 2)), "hsv.png")


def test_masks_keep_palette_indices_and_refuse_other_modes(tmp_path):
    mask = (np.arange(H * W).reshape(H, W) % 21).astype(np.uint8)
    write_mask(mask, tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert (read_mask(tmp_path / "m.png") == mask).all()  # indices, not palette colours
    for mode in ("RGB", "RGBA", "I;16", "LA"):
        img = Image.open(tmp_path / "m.png").convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            img = Image.fromarray(mask.astype(np.uint16))
        path = write(tmp_path, f"m_{mode.replace(';', '')}.png", img)
        with pytest.raises(UserError, match=rf"mask .*m_{mode.replace(';', '')}\.png has PIL mode"):
            read_mask(path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UserError, match=r"mask .*bad\.png cannot be read"):
        read_mask(tmp_path / "bad.png")
