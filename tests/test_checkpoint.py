import pickle

import pytest
import torch

from ncsn import checkpoint as ckpt
from ncsn.errors import CheckpointError, UserError
from _payload import CodeRunningPayload


def test_rotation_keeps_last_k_and_resolves_newest(tmp_path):
    for step in [1, 2, 3, 4, 5]:
        ckpt.save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((2,), float(step))}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 5]
    state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 5 and torch.equal(state["w"], torch.full((2,), 5.0))


def test_crash_mid_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(3)})
    before = (ckpt.checkpoint_dir(tmp_path) / "checkpoint_1.pt").read_bytes()

    def crashing_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.zeros(3)})
    files = sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir())
    assert files == ["checkpoint_1.pt"]  # no partial file, no temp file
    assert (ckpt.checkpoint_dir(tmp_path) / "checkpoint_1.pt").read_bytes() == before
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path)["step"] == 1




def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoints" / "checkpoint_7.pt"
    path.parent.mkdir()
    with open(path, "wb") as handle:
        pickle.dump({"step": 7, "model": CodeRunningPayload(marker)}, handle, protocol=2)
    with pytest.raises(UserError, match="refusing to load"):
        ckpt.load_checkpoint(tmp_path)
    assert not marker.exists()
    # the same payload inside a torch.save archive (what a tampered checkpoint looks like)
    torch.save({"step": 8, "model": CodeRunningPayload(marker)}, path.parent / "checkpoint_8.pt")
    with pytest.raises(UserError, match="refusing to load"):
        ckpt.load_checkpoint(tmp_path)
    assert not marker.exists()


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path):
    good = ckpt.save_atomic({"w": torch.ones(1000)}, tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:300])  # truncated
    with pytest.raises(UserError, match="is truncated"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(UserError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope")
    with pytest.raises(UserError, match="no checkpoint found"):
        ckpt.load_checkpoint(tmp_path)


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b"step,loss\n1,0.5\n", "is not a checkpoint"),
    (b"# a README\nwith words\n", "is not a checkpoint"),
    (pickle.dumps({"step": 1}, protocol=2), "a plain pickle"),
])
def test_each_kind_of_unusable_file_says_what_it_is(tmp_path, content, problem):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem):
        ckpt.load_checkpoint(path)


def test_newest_readable_checkpoint_is_used_and_the_skipped_ones_named(tmp_path, capsys):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"step": step})
    newest = ckpt.checkpoint_dir(tmp_path) / "checkpoint_3.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    state, path = ckpt.load_newest(tmp_path, ckpt.load_weights)
    assert state["step"] == 2 and path.name == "checkpoint_2.pt"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint_3.pt is truncated" in err
    assert newest.exists()  # skipped, not deleted
    for _, other in ckpt.list_checkpoints(tmp_path):
        other.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint.*checkpoint_1.pt is empty"):
        ckpt.load_newest(tmp_path, ckpt.load_weights)


def test_rotation_never_deletes_checkpoints_of_later_steps(tmp_path):
    for step in (1, 2, 9):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    ckpt.save_checkpoint(tmp_path, 3, {"step": 3}, keep=2)  # a run resumed from 2 past an unreadable 9
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3, 9]


def test_a_crafted_newer_protocol_pickle_is_refused_in_one_line_without_torch_warnings(tmp_path, recwarn):
    """torch warns about pickle protocols above 2 before refusing; the refusal alone is the message."""
    marker = tmp_path / "pwned"
    path = tmp_path / "released.pth"
    with open(path, "wb") as handle:
        pickle.dump([CodeRunningPayload(marker)], handle, protocol=4)
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.load_plain(path)
    assert not marker.exists()
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
