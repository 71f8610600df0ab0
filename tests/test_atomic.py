"""Files written whole or not at all, logs repaired on resume, and feature caches keyed by what they depend on."""

import errno

import numpy as np
import pytest
import torch

from ncsn import runlog
from ncsn.atomic import atomic_write, write_text
from ncsn.errors import OutputError, UserError


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.json", "old")
    with pytest.raises(OutputError, match=r"cannot write .*a.json: No space left on device"):
        with atomic_write(path, "w") as handle:
            handle.write("new, half written")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with pytest.raises(ZeroDivisionError):  # other errors pass through, the file still untouched
        with atomic_write(path, "w") as handle:
            handle.write("x")
            1 / 0
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_output_errors_are_user_errors_and_os_errors(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError) as caught:
        write_text(tmp_path / "file" / "x.txt", "y")
    assert isinstance(caught.value, UserError) and isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOTDIR and "\n" not in str(caught.value)


def test_log_repair_drops_rows_after_the_step_and_a_line_cut_short(tmp_path):
    path = tmp_path / "log.csv"
    assert runlog.repair(path, 0, runlog.FIELDS) == 0
    with runlog.Appender(path) as log:
        for step in range(1, 5):
            log.write([step, 1.0, 0.001, 2.0, 0.1])
    with open(path, "a") as handle:
        handle.write("5,0.9,0.0")  # a crash mid-row
    assert [r["step"] for r in runlog.read_rows(path, runlog.FIELDS)] == ["1", "2", "3", "4"]
    assert runlog.repair(path, 3, runlog.FIELDS) == 2
    assert path.read_text().splitlines()[1:] == ["1,1.0,0.001,2.0,0.1", "2,1.0,0.001,2.0,0.1", "3,1.0,0.001,2.0,0.1"]
    assert runlog.repair(path, 3, runlog.FIELDS) == 0


class _Extractor:
    name, weights_sha256 = "fake", "0" * 64

    def __init__(self):
        self.calls = 0

    def extract(self, images, progress=False):
        self.calls += 1
        flat = images.reshape(len(images), -1).double().numpy()
        return {"features": flat[:, :4], "probs": np.full((len(images), 2), 0.5)}


def test_feature_cache_is_keyed_by_content_and_extractor(tmp_path, monkeypatch):
    from ncsn import evaluation as ev
    from ncsn.data.images import InMemoryImageDataset

    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    images = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    monkeypatch.setattr(ev, "open_split", lambda *a, **k: InMemoryImageDataset("digits", images, 17, "train", "mem"))
    extractor = _Extractor()
    first = ev.real_features(extractor, "digits", None, "train", 8, 1, progress=False)
    again = ev.real_features(extractor, "digits", None, "train", 8, 1, progress=False)
    assert extractor.calls == 1 and again["cache"] == first["cache"]
    images[0, 0, 0, 0] = 3  # one pixel of the dataset changes: new key, recomputed
    changed = ev.real_features(extractor, "digits", None, "train", 8, 1, progress=False)
    assert extractor.calls == 2 and changed["cache"] != first["cache"] and changed["features"][0, 0] > 0
    extractor.weights_sha256 = "1" * 64  # another extractor's weights: recomputed
    ev.real_features(extractor, "digits", None, "train", 8, 1, progress=False)
    assert extractor.calls == 3
    # a cache file whose recorded key differs (or that cannot be read) is never used
    from pathlib import Path

    Path(changed["cache"]).write_bytes(b"garbage")
    extractor.weights_sha256 = "0" * 64
    ev.real_features(extractor, "digits", None, "train", 8, 1, progress=False)
    assert extractor.calls == 4
