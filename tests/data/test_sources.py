"""What `anzoo predict` reads: files, folders, globs, @lists and video frames, with keys that
keep the inputs' folders apart."""
from __future__ import annotations

from pathlib import Path

import pytest

from anzoo.data.images import IMAGE_EXTENSIONS
from anzoo.data.sources import Source, SourceWindows, build_source_loader, expand_inputs
from anzoo.testing import SMALL_SCALE
from helpers.videos import LEVELS, write_video

def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_files_sorted_hidden_skipped_and_recursion(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    for name in ["b.JPG", "a.png", "c.webp", "notes.txt", ".hidden.jpg", "d.tif", "sub/e.jpg", ".git/f.jpg"]:
        _touch(folder / name)
    extra = _touch(tmp_path / "explicit.dat")  # named explicitly: kept whatever its extension
    sources, failures = expand_inputs([str(folder), str(extra), str(folder / "a.png")])
    assert failures == []
    assert [s.key for s in sources] == ["imgs/a.png", "imgs/b.JPG", "imgs/c.webp", "imgs/d.tif", "explicit.dat"]
    sources, _ = expand_inputs([str(folder)], recursive=True)
    assert [s.key for s in sources] == ["a.png", "b.JPG", "c.webp", "d.tif", "sub/e.jpg"]
    assert all(Path(s.path).is_absolute() and s.frame is None for s in sources)
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} <= IMAGE_EXTENSIONS


def test_same_names_in_two_folders_get_two_keys(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "x.jpg")
    _touch(tmp_path / "b" / "x.jpg")
    sources, _ = expand_inputs([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b")])
    assert [s.key for s in sources] == ["a/x.jpg", "b/x.jpg"]
    sources, _ = expand_inputs([str(tmp_path)], recursive=True)
    assert [s.key for s in sources] == ["a/x.jpg", "b/x.jpg"]


def test_globs_lists_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["p/1.jpg", "p/q/2.png", "p/q/r/3.jpg", "p/notes.txt"]:
        _touch(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    sources, _ = expand_inputs(["p/**/*.jpg"])
    assert [s.key for s in sources] == ["1.jpg", "q/r/3.jpg"]  # relative to the glob's folder
    (tmp_path / "list.txt").write_text("# my images\np/q/2.png\n\n  p/1.jpg  \np/gone.jpg\n")
    sources, failures = expand_inputs(["@list.txt", "p/*.gif", "@nolist.txt", "p/1.jpg"])
    assert [s.key for s in sources] == ["q/2.png", "1.jpg"]  # p/1.jpg once
    assert [arg for arg, _ in failures] == ["p/gone.jpg", "p/*.gif", "@nolist.txt"]
    assert "no such file or directory: p/gone.jpg" in failures[0][1]
    assert "no image or video files match" in failures[1][1]
    assert "cannot read the list" in failures[2][1]


def test_video_frames_every_n_and_read_in_any_order(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    video = write_video(tmp_path / "clips" / "v.avi")
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"not a video")
    sources, failures = expand_inputs([str(tmp_path / "clips")], every=3)
    assert sources == [Source("v.avi", str(video), 0), Source("v.avi", str(video), 3),
                       Source("v.avi", str(video), 6)]
    assert [arg for arg, _ in failures] == ["broken.mp4"] and "cannot be read as a video" in failures[0][1]
    # windows out of order (a worker reopens the video to go back), decoded to RGB and preprocessed
    windows = [[2], [0, 1], [1]]
    data = SourceWindows(sources, windows, scale=SMALL_SCALE, keep_images=True)
    loaded = [item for w in build_source_loader(data, num_workers=0) for item in w]
    data.close()
    assert [item.index for item in loaded] == [2, 0, 1, 1]
    for item in loaded:
        assert item.error is None and item.image.shape == (48, 64, 3) and item.meta.orig_size == (48, 64)
        level = LEVELS[sources[item.index].frame]
        assert abs(float(item.image.mean()) - level) < 3  # MJPEG: near the level written
    too_big = SourceWindows(sources, [[0]], max_pixels=48 * 64 - 1)
    assert "larger than the limit" in too_big[0][0].error


def test_unreadable_images_come_back_as_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    sources, _ = expand_inputs([str(tmp_path / "empty.jpg")])
    [item] = SourceWindows(sources, [[0]])[0]
    assert item.tensor is None and "empty.jpg" in item.error


def test_a_header_claiming_more_frames_than_bytes_is_not_believed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst small video: a header announcing 10**12 frames; the frames are counted instead."""
    import anzoo.data.sources as sources_module

    video = write_video(tmp_path / "v.avi", frames=4)

    class Claiming:
        def __init__(self) -> None:
            self.grabs = 0

        def get(self, prop: int) -> float:
            return 1e12

        def grab(self) -> bool:
            self.grabs += 1
            return self.grabs <= 4

        def release(self) -> None:
            pass

    monkeypatch.setattr(sources_module, "_open_video", lambda path: Claiming())
    assert len(expand_inputs([str(video)])[0]) == 4


def test_any_error_reading_a_file_is_that_file_s_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anzoo.data.sources as sources_module

    (tmp_path / "a.png").write_bytes(b"x")

    def explode(*args, **kwargs):
        raise MemoryError("decoder ran out")

    monkeypatch.setattr(sources_module, "load_image", explode)
    [item] = SourceWindows(expand_inputs([str(tmp_path / "a.png")])[0], [[0]])[0]
    assert item.error.endswith("a.png: cannot be read (MemoryError: decoder ran out)")


def test_the_output_folder_is_left_out_of_folders_and_globs(tmp_path: Path) -> None:
    for name in ["a.jpg", "out/a.png", "out/sub/b.png", "outside.png"]:
        _touch(tmp_path / name)
    out = tmp_path / "out"
    keys = [s.key for s in expand_inputs([str(tmp_path)], recursive=True, exclude=out)[0]]
    assert keys == ["a.jpg", "outside.png"]
    keys = [s.key for s in expand_inputs([str(tmp_path / "**" / "*.png"), str(out / "a.png")], exclude=out)[0]]
    assert keys == ["outside.png", "out/a.png"]  # a file named on its own is kept
