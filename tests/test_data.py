"""pipeline/data: demo crops, folder conversion, determinism, atomic writes, loading."""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.config import DataParams
from pipeline.configbase import build
from pipeline.data import DataError, load_manifest, load_rows, load_split, prepare_dataset
from pipeline.data import shards
from pipeline.digest import stamp_file

S = 16


def params(**overrides) -> DataParams:
    base = {"image_size": S, "demo_train_crops": 40, "demo_val_crops": 8}
    return build(DataParams, {**base, **overrides})


def file_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def siblings(d: Path) -> list[str]:
    """What lies beside ``d``, except its verification stamps (pipeline/digest.py)."""
    return sorted(p.name for p in d.parent.iterdir() if p != stamp_file(d))


# --------------------------------------------------------------------------- demo

@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "prepared"
    prepare_dataset(params(), out)
    return out


def test_importable_without_heavy_packages():
    code = ("import sys, pipeline.data; "
            "print(sorted({'torch', 'skimage', 'sklearn', 'matplotlib'} & sys.modules.keys()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


def test_demo_photos_found():
    paths = data.demo_photo_paths()
    assert len(paths) == len(data.DEMO_PHOTOS) == 11
    assert all(p.is_file() for p in paths)


def test_demo_shapes_and_manifest(demo):
    manifest = load_manifest(demo)
    assert manifest["source"] == "demo"
    assert manifest["image_size"] == S
    assert manifest["counts"] == {"train": 40, "val": 8}
    for split in ("train", "val"):
        assert sum(n[split] for n in manifest["photos"].values()) == manifest["counts"][split]
        array = load_split(demo, split)
        assert array.dtype == np.uint8 and array.shape == (manifest["counts"][split], S, S, 3)
        assert isinstance(array, data.ShardedImages)
        assert np.asarray(array).std() > 10, "crops of real photographs are not flat"
    assert set(manifest["photos"]) == {Path(p).stem for _, p in data.DEMO_PHOTOS}


def test_demo_is_deterministic(demo, tmp_path):
    again = tmp_path / "again"
    prepare_dataset(params(), again)
    assert file_bytes(again) == file_bytes(demo)
    other = tmp_path / "seed1"
    prepare_dataset(params(seed=1), other)
    assert not np.array_equal(load_split(other, "train"), load_split(demo, "train"))
    assert not np.array_equal(load_split(other, "val"), load_split(demo, "val"))


@pytest.mark.parametrize("width,height", [(640, 427), (512, 600), (1411, 1411), (100, 40)])
def test_demo_crop_boxes_stay_in_their_split_region(width, height):
    p = params(demo_min_scale=0.1, demo_max_scale=0.9)
    train_region = data.split_region(width, height, "train")
    val_region = data.split_region(width, height, "val")
    assert train_region[2] == val_region[0], "regions tile the photo without overlap"
    assert val_region[2] - val_region[0] == pytest.approx(width * data.VAL_STRIP, abs=1)
    for split, (x0, y0, x1, y1) in (("train", train_region), ("val", val_region)):
        boxes = data.demo_crop_boxes(width, height, split, 200, p, photo_index=3)
        assert len(boxes) == 200
        for left, top, right, bottom in boxes:
            assert x0 <= left < right <= x1 and y0 <= top < bottom <= y1
            side = right - left
            assert side == bottom - top
            assert side <= round(0.9 * min(width, height))
            assert side >= min(round(0.1 * min(width, height)), x1 - x0, y1 - y0)
    assert data.demo_crop_boxes(width, height, "val", 5, p, 3) == \
        data.demo_crop_boxes(width, height, "val", 5, p, 3)


def test_demo_splits_share_no_pixels(tmp_path, monkeypatch):
    # Photos black left of the val strip and white inside it: any train pixel resampled
    # from the strip (or val pixel from outside it) would show up as grey.
    photos = []
    for i, (width, height) in enumerate([(100, 60), (61, 90)]):
        photo = Image.new("L", (width, height), 0)
        photo.paste(255, data.split_region(width, height, "val"))
        photos.append(tmp_path / f"photo{i}.png")
        photo.save(photos[-1])
    monkeypatch.setattr(data.demo, "demo_photo_paths", lambda: photos)
    prepare_dataset(params(demo_train_crops=30, demo_val_crops=30), tmp_path / "out")
    assert np.asarray(load_split(tmp_path / "out", "train")).max() == 0
    assert np.asarray(load_split(tmp_path / "out", "val")).min() == 255


# --------------------------------------------------------------------------- folder

def halves(left, right, mode="RGB", size=24) -> Image.Image:
    im = Image.new(mode, (size, size), left)
    im.paste(right, (size // 2, 0, size, size))
    return im


def write_png_rgb16(path: Path, left: tuple, right: tuple, size: int = 24) -> None:
    """A 16-bit RGB PNG, which Pillow cannot write."""
    rgb = np.empty((size, size, 3), ">u2")
    rgb[:, : size // 2], rgb[:, size // 2:] = left, right
    raw = b"".join(b"\0" + row.tobytes() for row in rgb)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)  # 16 bit, colour type 2: RGB
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

# relative path -> (expected left half, expected right half, tolerance)
EXPECTED = {
    "rgb.jpg": ((200, 30, 30), (30, 30, 200), 12),
    "UPPER.JPG": ((30, 200, 30), (200, 200, 30), 12),
    "nested/deeper/gray.png": ((40,) * 3, (200,) * 3, 0),
    "nested/palette.png": (GREEN, WHITE, 0),
    "nested/rgba.png": (RED, WHITE, 0),
    "gray16.png": ((255,) * 3, (117,) * 3, 1),     # 65535 and 30000 / 257 = 116.7
    "rgb16.png": ((255, 117, 0), BLUE, 1),
    "pic.bmp": ((10, 120, 240), (240, 120, 10), 0),
    "pic.webp": ((10, 120, 240), (240, 120, 10), 0),
    "cmyk.jpg": (RED, (0, 255, 255), 15),
    "multi.tif": (GREEN, BLUE, 0),                 # the second frame (red) is ignored
    "float.tif": ((64,) * 3, (191,) * 3, 0),       # F in [0, 1]: x 255
    "int.tif": ((0,) * 3, (255,) * 3, 0),          # I outside [0, 65535]: min..max stretch
}
UNREADABLE = ("corrupt.png", "empty.jpg", "nested/truncated.png")


def build_tree(root: Path) -> None:
    (root / "nested" / "deeper").mkdir(parents=True)
    halves((200, 30, 30), (30, 30, 200)).save(root / "rgb.jpg", quality=95)
    halves((30, 200, 30), (200, 200, 30)).save(root / "UPPER.JPG", quality=95)
    halves(40, 200, "L").save(root / "nested/deeper/gray.png")
    palette = halves(1, 0, "P")
    palette.putpalette([0, 0, 0, *GREEN])
    palette.save(root / "nested/palette.png", transparency=0)
    halves((*RED, 255), (0, 0, 255, 0), "RGBA").save(root / "nested/rgba.png")
    gray16 = np.full((24, 24), 65535, np.uint16)
    gray16[:, 12:] = 30000
    Image.fromarray(gray16).save(root / "gray16.png")
    write_png_rgb16(root / "rgb16.png", (65535, 30000, 0), (0, 0, 65535))
    halves((10, 120, 240), (240, 120, 10)).save(root / "pic.bmp")
    halves((10, 120, 240), (240, 120, 10)).save(root / "pic.webp", lossless=True)
    halves((0, 255, 255, 0), (255, 0, 0, 0), "CMYK").save(root / "cmyk.jpg", quality=95)
    halves(GREEN, BLUE).save(root / "multi.tif", save_all=True,
                             append_images=[Image.new("RGB", (24, 24), RED)])
    halves(0.25, 0.75, "F").save(root / "float.tif")
    halves(-1000, 1000, "I").save(root / "int.tif")
    rotated = halves(RED, BLUE, size=32).crop((0, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(root / "nested/rotated.jpg", quality=95, exif=exif)
    (root / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "empty.jpg").write_bytes(b"")
    good_png = root / "nested/deeper/gray.png"
    (root / "nested/truncated.png").write_bytes(good_png.read_bytes()[:60])
    (root / "notes.txt").write_text("not an image\n")


def rows_by_file(prepared: Path) -> dict[str, np.ndarray]:
    return {rel: np.asarray(load_split(prepared, split)[i])
            for split in ("train", "val") for i, (rel, _) in enumerate(load_rows(prepared, split))}


def files_of(prepared: Path) -> dict[str, list[str]]:
    return {split: [rel for rel, _ in load_rows(prepared, split)] for split in ("train", "val")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(working dir, prepared dir, stderr of the prepare); source given relative to cwd."""
    work = tmp_path_factory.mktemp("folder")
    build_tree(work / "photos")
    capture = work / "stderr.txt"
    with capture.open("w") as f, pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(sys, "stderr", f)
        prepare_dataset(params(source="photos", val_fraction=0.3), work / "prepared")
    return work, work / "prepared", capture.read_text()


def test_folder_manifest_counts_files(folder):
    work, prepared, _ = folder
    manifest = load_manifest(prepared)
    used = len(EXPECTED) + 1  # + nested/rotated.jpg
    assert manifest["source"] == "photos"
    assert manifest["files_found"] == used + len(UNREADABLE) + 1
    assert manifest["image_files"] == used + len(UNREADABLE)
    assert manifest["ignored_files"] == 1
    assert manifest["used_files"] == used
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == used
    assert manifest["counts"]["train"] >= 1 and manifest["counts"]["val"] >= 1
    assert sorted(files_of(prepared)["train"] + files_of(prepared)["val"]) == \
        sorted([*EXPECTED, "nested/rotated.jpg"])
    assert manifest["unreadable_count"] == len(UNREADABLE)
    assert sorted(u["path"] for u in manifest["unreadable"]) == sorted(UNREADABLE)
    assert all(u["reason"] for u in manifest["unreadable"])
    assert str(work) not in (prepared / "manifest.json").read_text()


def test_folder_warns_about_unreadable_files(folder):
    _, _, stderr = folder
    assert f"skipped {len(UNREADABLE)} unreadable" in stderr
    for name in UNREADABLE:
        assert name in stderr
    assert "notes.txt" not in stderr


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_folder_converts_colours(folder, rel):
    _, prepared, _ = folder
    image = rows_by_file(prepared)[rel]
    assert image.shape == (S, S, 3) and image.dtype == np.uint8
    left, right, tol = EXPECTED[rel]
    # Columns 2 and 13 lie 5.5 px from the edge between the halves: out of Lanczos reach.
    np.testing.assert_allclose(image[:, 2].astype(int), np.broadcast_to(left, (S, 3)), atol=tol)
    np.testing.assert_allclose(image[:, 13].astype(int), np.broadcast_to(right, (S, 3)), atol=tol)


def test_folder_applies_exif_orientation(folder):
    _, prepared, _ = folder
    image = rows_by_file(prepared)["nested/rotated.jpg"].astype(int)
    # Stored wide (red left, blue right); displayed tall with red on top after the turn.
    assert np.abs(image[2, 2] - RED).max() < 40 and np.abs(image[2, 13] - RED).max() < 40
    assert np.abs(image[13, 2] - BLUE).max() < 40 and np.abs(image[13, 13] - BLUE).max() < 40


def test_folder_is_deterministic(folder, tmp_path, capsys, monkeypatch):
    work, prepared, _ = folder
    monkeypatch.chdir(work)
    prepare_dataset(params(source="photos", val_fraction=0.3), tmp_path / "again")
    assert file_bytes(tmp_path / "again") == file_bytes(prepared)
    assert f"skipped {len(UNREADABLE)} unreadable" in capsys.readouterr().err


def test_folder_split_is_stable_when_files_are_added(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(src / f"{i:02d}.png")
    prepare_dataset(params(source=str(src), val_fraction=0.3), tmp_path / "a")
    for i in range(30, 40):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(src / f"{i:02d}.png")
    prepare_dataset(params(source=str(src), val_fraction=0.3), tmp_path / "b")
    before, after = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    for split in ("train", "val"):
        assert set(before[split]) <= set(after[split])


def test_two_images_give_one_per_split(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(src / name)
    for fraction in (0.01, 0.99):
        manifest = prepare_dataset(params(source=str(src), val_fraction=fraction), tmp_path / "out")
        assert manifest["counts"] == {"train": 1, "val": 1}


def test_16bit_rgb_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile", reason="Pillow cannot write 16-bit RGB TIFF")
    rgb = np.zeros((24, 24, 3), np.uint16)
    rgb[..., 0], rgb[..., 1] = 65535, 30000
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    image = data.load_rgb(tmp_path / "rgb16.tif", S)
    np.testing.assert_allclose(image.reshape(-1, 3).astype(int),
                               np.broadcast_to((255, 117, 0), (S * S, 3)), atol=1)


# --------------------------------------------------------------------------- errors

def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "no_pictures_here").mkdir()
    with pytest.raises(DataError, match="no_pictures_here"):
        prepare_dataset(params(source=str(tmp_path / "no_pictures_here")), tmp_path / "out")
    assert siblings(tmp_path / "out") == ["no_pictures_here"]


def test_folder_without_readable_images_is_an_error(tmp_path, capsys):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "bad.png").write_bytes(b"nope")
    (src / "worse.jpg").write_bytes(b"")
    (src / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="junk.*no readable image"):
        prepare_dataset(params(source=str(src)), tmp_path / "out")
    assert "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"data\.source: '.*nowhere'"):
        prepare_dataset(params(source=str(tmp_path / "nowhere")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_single_image_is_an_error(tmp_path):
    src = tmp_path / "lonely"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "only.png")
    with pytest.raises(DataError, match="lonely.*at least 2"):
        prepare_dataset(params(source=str(src)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_prepare_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    prepare_dataset(params(), out)
    good = file_bytes(out)
    with pytest.raises(DataError):
        prepare_dataset(params(source=str(tmp_path / "nowhere")), out)
    assert file_bytes(out) == good
    assert siblings(out) == ["out"]


def test_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_dataset(params(), out)
    good = file_bytes(out)

    def disk_full(self):
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(shards.ShardWriter, "flush", disk_full)
        with pytest.raises(OSError, match="No space"):
            prepare_dataset(params(seed=1), out)
    assert file_bytes(out) == good
    # What the interrupted run completed waits beside the output, to be resumed.
    assert siblings(out) == [".out.partial", "out"]
    prepare_dataset(params(seed=1), out)
    assert siblings(out) == ["out"]
    prepare_dataset(params(seed=1), tmp_path / "fresh")
    assert file_bytes(out) == file_bytes(tmp_path / "fresh")


def test_prepare_replaces_an_existing_output(tmp_path):
    out = tmp_path / "out"
    prepare_dataset(params(), out)
    (out / "stale.txt").write_text("from an older run")
    prepare_dataset(params(seed=1), out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train-00000.npy", "val-00000.npy"]
    assert load_manifest(out)["params"]["seed"] == 1
    assert siblings(out) == ["out"]


# --------------------------------------------------------------------------- loading

@pytest.fixture
def copy_of(demo, tmp_path) -> Path:
    out = tmp_path / "copy"
    out.mkdir()
    for name, content in file_bytes(demo).items():
        (out / name).write_bytes(content)
    return out


def test_load_split_rejects_a_truncated_npy(copy_of):
    path = copy_of / "train-00000.npy"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train-00000\.npy"):
        load_split(copy_of, "train")


def test_load_split_rejects_garbage(copy_of):
    (copy_of / "val-00000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"val-00000\.npy"):
        load_split(copy_of, "val")


def test_load_split_rejects_a_shape_mismatch(copy_of):
    np.save(copy_of / "val-00000.npy", np.zeros((8, S + 1, S + 1, 3), np.uint8))
    with pytest.raises(DataError, match=r"val-00000\.npy.*manifest"):
        load_split(copy_of, "val")


def test_load_split_rejects_missing_files_and_bad_splits(copy_of):
    with pytest.raises(DataError, match="split"):
        load_split(copy_of, "test")
    (copy_of / "train-00000.npy").unlink()
    with pytest.raises(DataError, match=r"train-00000\.npy"):
        load_split(copy_of, "train")
    (copy_of / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json"):
        load_split(copy_of, "val")
    (copy_of / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json"):
        load_manifest(copy_of)


def test_manifest_is_sorted_json_with_hashes(demo):
    text = (demo / "manifest.json").read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((demo / name).read_bytes()).hexdigest() == digest


def test_the_source_must_be_outside_the_repository_and_its_outputs(tmp_path):
    import subprocess

    repo = tmp_path / "repo"
    (repo / "code").mkdir(parents=True)
    (repo / "code" / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    outside = tmp_path / "images"
    outside.mkdir()
    data.check_source("demo", repo, ["data/prepared"])
    data.check_source(str(outside), repo, ["data/prepared"])
    for source, why in [("", "is not a folder"), (str(repo), "contains the repository"),
                        (str(tmp_path), "contains the repository"), (str(repo / "code"), "files git tracks"),
                        (str(repo / "data"), "overlaps the pipeline output data/prepared"),
                        (str(tmp_path / "nowhere"), "neither 'demo' nor an existing folder")]:
        if source.endswith("data"):
            (repo / "data").mkdir(exist_ok=True)
        with pytest.raises(DataError, match=why):
            data.check_source(source, repo, ["data/prepared"])


def test_the_fingerprint_sees_a_file_added_removed_or_rewritten(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"1")
    first = data.source_fingerprint(str(src))
    assert first["files"] == 1 and data.source_fingerprint(str(src)) == first
    (src / "b.png").write_bytes(b"2")
    second = data.source_fingerprint(str(src))
    (src / "a.png").write_bytes(b"11")
    third = data.source_fingerprint(str(src))
    (src / "b.png").unlink()
    fourth = data.source_fingerprint(str(src))
    assert len({first["listing_sha256"], second["listing_sha256"], third["listing_sha256"],
                fourth["listing_sha256"]}) == 4


def test_gif_is_read_and_other_files_are_named(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("P", (12, 12), 5).save(src / "a.gif")
    Image.new("RGB", (12, 12), (9, 9, 9)).save(src / "b.png")
    (src / "readme.md").write_text("hi")
    manifest = prepare_dataset(params(source=str(src)), tmp_path / "out")
    assert manifest["used_files"] == 2 and manifest["ignored"] == ["readme.md"]
