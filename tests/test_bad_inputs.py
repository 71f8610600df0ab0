"""Bad input and faults, systematically: every command, every file it reads, every way a run can die.

One table, :data:`CASES`: a command (train, sample, eval, inpaint, toy, compare, train-classifier) and
a bad input or fault (missing, empty, truncated or foreign file, wrong shape or dtype, NaN/inf, crafted
pickle, unknown key, out-of-range value, unwritable output, full disk, interrupted run, concurrent
writer). Each case runs the command in this process (``ncsn.cli.main``) on a copy of one tiny trained
run and checks

* the exit code;
* that stderr is exactly one line, naming the problem, and holds no traceback;
* that no earlier output was lost or changed (every file there before is there after, byte for byte,
  unless the case says the command was meant to rewrite it), and that a failed command left nothing
  behind but the run directory's lock file.

Two faults need real processes (a concurrent writer and a writer killed without releasing its lock):
they run ``python -m ncsn`` in a subprocess after the table.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from _payload import CodeRunningPayload
from ncsn.cli import main
from ncsn.runlock import run_lock

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "digits.yaml")
TINY = ["training.batch_size=16", "training.n_iters=4", "training.snapshot_freq=2", "training.log_freq=1",
        "model.ngf=8", "model.num_classes=4", "model.sigma_begin=2.0", "model.sigma_end=0.05",
        "sampling.n_steps_each=2", "sampling.batch_size=16"]
QUIET = ["--no-progress", "--device", "cpu"]


def sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


SETS = sets(*TINY)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny trained run (checkpoints at steps 2 and 4, log.csv, loss.png) and its samples.npz."""
    root = tmp_path_factory.mktemp("base")
    assert main(["train", CONFIG, "--workdir", str(root / "run"), *SETS, *QUIET]) == 0
    assert main(["sample", str(root / "run"), "--n", "4", "--out", str(root / "run" / "grid.png"),
                 "--npz", str(root / "run" / "samples.npz"), *QUIET]) == 0
    return root / "run"


@dataclass
class Space:
    """What a case works on: ``run`` (a copy of the base run) and ``tmp`` (a scratch folder)."""

    run: Path
    tmp: Path

    @property
    def ckpts(self) -> Path:
        return self.run / "checkpoints"

    def newest(self) -> Path:
        return self.ckpts / "checkpoint_4.pt"

    def truncate(self, path: Path, keep: int = 200) -> Path:
        path.write_bytes(path.read_bytes()[:keep])
        return path

    def file(self, name: str, data: bytes | str = b"") -> Path:
        path = self.tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def npz(self, name: str, **arrays) -> Path:
        path = self.tmp / name
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
        return path

    def under_a_file(self, name: str) -> Path:
        """A path that cannot be written whoever runs the tests (root too): its parent is a regular file."""
        blocker = self.file("blocker", "a regular file")
        return blocker / name

    def state(self, path: Path | None = None) -> dict:
        return torch.load(path or self.newest(), weights_only=True)

    def save(self, state: dict, path: Path | None = None) -> Path:
        torch.save(state, path or self.newest())
        return path or self.newest()


@dataclass
class Case:
    """``setup(space) -> argv``; the expected exit code and what stderr's one line says: fragments
    separated by ``…`` that must appear in that order (no line at all when ``says`` is empty)."""

    id: str
    setup: Callable[[Space], list[str]]
    code: int
    says: str
    rewrites: tuple[str, ...] = ()  # files (globs, relative to the run) the command is meant to replace
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # a fault injected while the command runs
    locked: bool = False  # another writer holds the run directory's lock meanwhile
    after: Callable[[Space], None] | None = None  # further checks


def train(*extra: str) -> list[str]:
    return ["train", CONFIG, *SETS, *QUIET, *extra]


def fresh(*overrides: str, args: tuple[str, ...] = ()) -> Callable[[Space], list[str]]:
    """A case's setup: train a new run in scratch space with these ``--set`` overrides and arguments."""
    return lambda space: train("--workdir", str(space.tmp / "w"), *sets(*overrides), *args)


def config_file(text: str | None, *overrides: str) -> Callable[[Space], list[str]]:
    """A case's setup: train from a config file holding ``text`` (None: a file that does not exist)."""
    def setup(space: Space) -> list[str]:
        path = space.tmp / "config.yaml" if text is None else space.file("config.yaml", text)
        return ["train", str(path), "--workdir", str(space.tmp / "w"), *sets(*overrides)]

    return setup


def resume(space: Space, *extra: str, to: int = 3) -> list[str]:
    """Resume the run up to step ``to``: by default from checkpoint_2 when checkpoint_4 cannot be read,
    making checkpoint_3 and leaving checkpoint_4 as it is."""
    return train("--workdir", str(space.run), "--resume", *sets(f"training.n_iters={to}"), *extra)


RESUMED = ("config.yaml", "log.csv", "loss.png", "checkpoints/checkpoint_3.pt")
CONTINUED = ("config.yaml", "log.csv", "loss.png", "checkpoints/checkpoint_5.pt")  # from checkpoint_4 to step 5


def crafted(space: Space) -> Path:
    """The newest checkpoint replaced by a torch archive whose pickle would run a shell command."""
    torch.save({"step": 4, "model": CodeRunningPayload(space.tmp / "pwned")}, space.newest())
    return space.newest()


def no_code_ran(space: Space) -> None:
    assert not (space.tmp / "pwned").exists()


def newer_format(space: Space) -> Path:
    state = space.state()
    state["version"] = 99
    return space.save(state)


def other_shapes(space: Space) -> Path:
    """A checkpoint whose weights do not fit the network its own config describes."""
    state = space.state()
    state["config"]["model"]["ngf"] = 16
    return space.save(state)


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def partial_then_enospc(_obj, handle, *_args, **_kwargs):
    handle.write(b"the first bytes of a checkpoint")
    enospc()


def interrupted(space: Space) -> list[str]:
    """What a run killed mid-write leaves: a temporary checkpoint file and a log row cut short."""
    (space.ckpts / ".checkpoint_6.pt.abc123.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    with open(space.run / "log.csv", "a") as handle:
        handle.write("5,12.3")
    return resume(space, to=5)


def log_repaired(space: Space) -> None:
    rows = (space.run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]


def stale_lock(space: Space) -> list[str]:
    """A lock file left by a process that is gone (its flock went with it)."""
    (space.run / ".lock").write_text("pid=999999 host=elsewhere\n")
    return resume(space, to=5)


def sample(space: Space, target: Path | str | None = None, *extra: str) -> list[str]:
    return ["sample", str(target or space.run), "--n", "2", "--out", str(space.run / "grid.png"), *QUIET, *extra]


def evaluate(*extra: str) -> list[str]:
    return ["eval", "--metrics", "fid", "--no-progress", *extra]


def inpaint(space: Space, target: Path | str | None = None, *extra: str) -> list[str]:
    return ["inpaint", str(target or space.run), "--n-images", "1", "--completions", "1",
            "--out", str(space.run / "paint.png"), *QUIET, *extra]


def good_samples(space: Space) -> Path:
    return space.npz("fake.npz", samples=np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32))


def object_array(space: Space) -> Path:
    payload = np.empty(1, dtype=object)
    payload[0] = CodeRunningPayload(space.tmp / "pwned")
    path = space.tmp / "crafted.npz"
    with open(path, "wb") as handle:
        np.savez(handle, samples=payload)
    return path


def bare_npy(space: Space) -> Path:
    path = space.tmp / "samples.npy"
    np.save(path, np.zeros((2, 1, 8, 8), dtype=np.float32))
    return path


def toy(space: Space, *extra: str) -> list[str]:
    return ["toy", "--out", str(space.tmp / "toy"), "--steps", "2", "--n-samples", "8", *QUIET, *extra]


CASES = [
    # ---- train: the config file and its values
    Case("train/missing config", config_file(None), 2, "config file not found"),
    Case("train/empty config", config_file("", "training.n_iters=-1"), 2, "training.n_iters = -1 is out of range"),
    Case("train/truncated config", config_file("training:\n  batch_size: [1, 2"), 2, "is not valid YAML"),
    Case("train/config of the wrong shape", config_file("- 1\n- 2\n"), 2, "expected a mapping"),
    Case("train/unknown key", fresh("model.ngff=8"), 2, "unknown config key 'model.ngff' (did you mean 'model.ngf'?)"),
    Case("train/wrong type", fresh("training.batch_size=abc"), 2, "training.batch_size must be int"),
    Case("train/negative size", fresh("model.ngf=-3"), 2, "model.ngf = -3 is out of range (allowed: >= 1)"),
    Case("train/zero levels", fresh("model.num_classes=0"), 2, "model.num_classes = 0 is out of range"),
    Case("train/sigma_end above sigma_begin", fresh("model.sigma_end=3.0"),
         2, "model.sigma_begin must exceed model.sigma_end"),
    Case("train/probability above 1", fresh("model.ema_rate=1.5"),
         2, "model.ema_rate = 1.5 is out of range (allowed: [0, 1))"),
    Case("train/NaN value", fresh("optim.lr=.nan"), 2, "optim.lr = nan is out of range"),
    Case("train/infinite value", fresh("sampling.step_lr=.inf"), 2, "sampling.step_lr = inf is out of range"),
    Case("train/zero log interval", fresh("training.log_freq=0"), 2, "training.log_freq = 0 is out of range"),
    Case("train/bad --procs", fresh(args=("--procs", "0")),
         2, "argument --procs: must be a positive integer or auto, got '0'"),
    # ---- train: the run directory
    Case("train/existing run without --resume", lambda s: train("--workdir", str(s.run)),
         2, "already holds checkpoints: pass --resume"),
    Case("train/truncated newest checkpoint", lambda s: (s.truncate(s.newest()), resume(s))[1],
         0, "skipped (not deleted): checkpoint …checkpoint_4.pt is truncated", rewrites=RESUMED),
    Case("train/empty newest checkpoint", lambda s: (s.truncate(s.newest(), 0), resume(s))[1],
         0, "checkpoint_4.pt is empty", rewrites=RESUMED),
    Case("train/crafted pickle as newest checkpoint", lambda s: (crafted(s), resume(s))[1],
         0, "refusing to load …checkpoint_4.pt", rewrites=RESUMED, after=no_code_ran),
    Case("train/newer checkpoint format", lambda s: (newer_format(s), resume(s))[1],
         0, "checkpoint format version 99 is newer", rewrites=RESUMED),
    Case("train/no readable checkpoint", lambda s: ([s.truncate(p, 0) for p in s.ckpts.iterdir()], resume(s))[1],
         2, "no readable checkpoint in …checkpoint_4.pt is empty (0 bytes); …checkpoint_2.pt is empty"),
    Case("train/another architecture", lambda s: resume(s, *sets("model.ngf=16")),
         2, "holds another architecture than the config: model.ngf=8 (config: 16)"),
    Case("train/interrupted run", interrupted, 0, "", rewrites=CONTINUED, after=log_repaired),
    Case("train/stale lock", stale_lock, 0, "taking over the lock left by pid 999999 on elsewhere",
         rewrites=CONTINUED + (".lock",)),
    Case("train/concurrent writer", lambda s: resume(s, to=5), 2,
         f"is being written by another ncsn process (pid {os.getpid()} on ", locked=True),
    Case("train/disk full while checkpointing", lambda s: resume(s, to=5), 2,
         "cannot write …checkpoint_5.pt: No space left on device (any earlier checkpoint_5.pt is unchanged)",
         rewrites=("config.yaml", "log.csv"),
         patch=lambda mp: mp.setattr(torch, "save", partial_then_enospc)),
    Case("train/unwritable run directory", lambda s: train("--workdir", str(s.under_a_file("run"))),
         2, "cannot create the run directory's lock …Not a directory"),
    # ---- sample
    Case("sample/missing run", lambda s: sample(s, s.tmp / "nope"), 2, "checkpoint or run directory not found"),
    Case("sample/run without checkpoints", lambda s: sample(s, s.tmp), 2, "no checkpoint found in"),
    Case("sample/empty checkpoint", lambda s: sample(s, s.truncate(s.newest(), 0)), 2, "checkpoint_4.pt is empty"),
    Case("sample/truncated checkpoint", lambda s: sample(s, s.truncate(s.newest())), 2, "checkpoint_4.pt is truncated"),
    Case("sample/not a checkpoint", lambda s: sample(s, s.file("notes.pt", "step,loss\n")), 2,
         "notes.pt is not a checkpoint"),
    Case("sample/plain pickle", lambda s: sample(s, s.file("plain.pt", pickle.dumps({"step": 1}, protocol=2))), 2,
         "plain.pt is not a checkpoint (a plain pickle"),
    Case("sample/crafted pickle", lambda s: sample(s, crafted(s)), 2, "refusing to load", after=no_code_ran),
    Case("sample/newer checkpoint format", lambda s: sample(s, newer_format(s)), 2,
         "checkpoint format version 99 is newer than this ncsn reads"),
    Case("sample/weights of the wrong shape", lambda s: sample(s, other_shapes(s)), 2,
         "does not fit the network its config describes"),
    Case("sample/checkpoint without weights", lambda s: sample(s, s.save({"step": 4, "config": {}})), 2,
         "is not an ncsn checkpoint (it lacks model)"),
    Case("sample/truncated newest in the run", lambda s: (s.truncate(s.newest()), sample(s))[1], 0,
         "using checkpoint_2.pt, the newest readable checkpoint; skipped (not deleted): …truncated",
         rewrites=("grid.png",)),
    Case("sample/--n 0", lambda s: sample(s, None, "--n", "0"), 2,
         "argument --n/--num-samples: must be an integer >= 1"),
    Case("sample/--batch-size -1", lambda s: sample(s, None, "--batch-size", "-1"), 2,
         "argument --batch-size: must be an integer >= 1, got '-1'"),
    Case("sample/unknown key", lambda s: sample(s, None, *sets("sampling.n_step=3")), 2,
         "unknown config key 'sampling.n_step'"),
    Case("sample/out-of-range value", lambda s: sample(s, None, *sets("sampling.n_steps_each=0")), 2,
         "sampling.n_steps_each = 0 is out of range"),
    Case("sample/unwritable output", lambda s: sample(s, None, "--npz", str(s.under_a_file("s.npz"))), 2,
         "cannot create the folder …blocker", rewrites=("grid.png",)),
    Case("sample/disk full writing samples", lambda s: sample(s, None, "--npz", str(s.run / "samples.npz")), 2,
         "cannot write …samples.npz: No space left on device", rewrites=("grid.png",),
         patch=lambda mp: mp.setattr(np, "savez_compressed", enospc)),
    # ---- eval
    Case("eval/missing samples", lambda s: evaluate("--fake", str(s.tmp / "nope.npz")), 2,
         "cannot read samples from …nope.npz"),
    Case("eval/empty samples file", lambda s: evaluate("--fake", str(s.file("e.npz"))), 2, "the file is empty"),
    Case("eval/truncated samples", lambda s: evaluate("--fake", str(s.truncate(good_samples(s), 100))), 2,
         "cannot read samples from …fake.npz"),
    Case("eval/not an npz", lambda s: evaluate("--fake", str(s.file("x.npz", "hello"))), 2, "cannot read samples"),
    Case("eval/bare array", lambda s: evaluate("--fake", str(bare_npy(s))), 2, "is a bare array, not an .npz"),
    Case("eval/no samples array", lambda s: evaluate("--fake", str(s.npz("k.npz", images=np.zeros(3)))), 2,
         "has no array named 'samples' (found: images)"),
    Case("eval/wrong shape", lambda s: evaluate("--fake", str(s.npz("w.npz", samples=np.zeros((4, 8, 8))))), 2,
         "samples must have shape (N, C, H, W)"),
    Case("eval/wrong dtype", lambda s: evaluate("--fake", str(s.npz("d.npz", samples=np.full((2, 1, 8, 8), "a")))),
         2, "dtype <U1"),
    Case("eval/NaN samples", lambda s: evaluate("--fake", str(s.npz("n.npz", samples=np.full((2, 1, 8, 8), np.nan)))),
         2, "128 of 128 values are NaN or infinite"),
    Case("eval/infinite samples", lambda s: evaluate("--fake", str(s.npz("i.npz", samples=np.full((2, 1, 8, 8),
                                                                                                  np.inf)))),
         2, "NaN or infinite"),
    Case("eval/samples out of [0, 1]", lambda s: evaluate("--fake", str(s.npz("r.npz", samples=np.full((2, 1, 8, 8),
                                                                                                      3.0)))),
         2, "found range [3, 3]"),
    Case("eval/crafted pickle", lambda s: evaluate("--fake", str(object_array(s))), 2,
         "Object arrays cannot be loaded when allow_pickle=False", after=no_code_ran),
    Case("eval/unknown metric", lambda s: evaluate("--fake", str(good_samples(s)), "--metrics", "fid,fud"), 2,
         "unknown metric(s) fud"),
    Case("eval/--n 0", lambda s: evaluate(str(s.run), "--n", "0"), 2, "argument --n/--num-samples: must be"),
    Case("eval/no readable checkpoint", lambda s: ([s.truncate(p) for p in s.ckpts.iterdir()],
                                                   evaluate(str(s.run), "--n", "2"))[1],
         2, "no readable checkpoint in"),
    Case("eval/unwritable output", lambda s: evaluate("--fake", str(good_samples(s)),
                                                      "--out", str(s.under_a_file("eval.json"))),
         2, "cannot create the folder …blocker"),
    # ---- inpaint
    Case("inpaint/missing run", lambda s: inpaint(s, s.tmp / "nope"), 2, "checkpoint or run directory not found"),
    Case("inpaint/truncated checkpoint", lambda s: inpaint(s, s.truncate(s.newest())), 2, "is truncated"),
    Case("inpaint/missing image", lambda s: inpaint(s, None, "--image", str(s.tmp / "nope.png")), 2,
         "cannot read image …nope.png"),
    Case("inpaint/not an image", lambda s: inpaint(s, None, "--image", str(s.file("x.png", "text"))), 2,
         "cannot read image …x.png"),
    Case("inpaint/bad mask", lambda s: inpaint(s, None, "--mask", "diagonal"), 2, "cannot read image diagonal"),
    Case("inpaint/--completions 0", lambda s: inpaint(s, None, "--completions", "0"), 2,
         "argument --completions: must be an integer >= 1"),
    Case("inpaint/unwritable output", lambda s: inpaint(s, None, "--out", str(s.under_a_file("p.png"))), 2,
         "cannot create the folder …blocker"),
    # ---- toy, compare, train-classifier
    Case("toy/--steps 0", lambda s: toy(s, "--steps", "0"), 2, "argument --steps: must be an integer >= 1"),
    Case("toy/--n-samples -1", lambda s: toy(s, "--n-samples", "-1"), 2, "argument --n-samples: must be"),
    Case("toy/unknown distribution", lambda s: toy(s, "--dist", "gaussian9"), 2, "gaussian9"),
    Case("toy/unwritable output", lambda s: ["toy", "--out", str(s.under_a_file("toy")), "--steps", "2", *QUIET],
         2, "cannot create the folder …blocker"),
    Case("compare/missing config", lambda s: ["compare", "--config", str(s.tmp / "nope.yaml"), "--out",
                                              str(s.tmp / "c")], 2, "config file not found"),
    Case("compare/out-of-range value", lambda s: ["compare", "--out", str(s.tmp / "c"), *sets("optim.lr=0")], 2,
         "optim.lr = 0.0 is out of range (allowed: > 0)"),
    Case("compare/unknown preset", lambda s: ["compare", "--preset", "huge", "--out", str(s.tmp / "c")], 2,
         "unknown preset 'huge'"),
    Case("train-classifier/--epochs 0", lambda s: ["train-classifier", "--out", str(s.tmp / "c.pt"), "--epochs", "0"],
         2, "argument --epochs: must be an integer >= 1"),
    Case("train-classifier/missing dataset", lambda s: ["train-classifier", "--dataset", "mnist", "--data-root",
                                                        str(s.tmp / "none"), "--out", str(s.tmp / "c.pt")],
         2, "MNIST not found"),
    Case("ncsn/unknown command", lambda s: ["trian", "x"], 2, "invalid choice: 'trian'"),
]


def says_in_order(line: str, says: str) -> bool:
    """Whether the fragments of ``says`` (separated by ``…``) appear in ``line`` in that order."""
    at = 0
    for part in says.split("…"):
        found = line.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


def fingerprint(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, base, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    space = Space(run=tmp_path / "run", tmp=tmp_path / "scratch")
    shutil.copytree(base, space.run)
    space.tmp.mkdir()
    argv = case.setup(space)
    before = fingerprint(space.run)
    with run_lock(space.run) if case.locked else contextlib.nullcontext():
        if case.patch:
            case.patch(monkeypatch)
        code = main(argv)
        monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == case.code, err
    lines = err.strip().splitlines()
    if case.says:
        assert len(lines) == 1, err
        assert says_in_order(lines[0], case.says), lines[0]
    else:
        assert lines == [], err
    assert "Traceback" not in err and "Warning" not in err
    after = fingerprint(space.run)
    kept = {name: digest for name, digest in before.items()
            if not any(fnmatch(name, pattern) for pattern in case.rewrites)}
    assert {name: after.get(name) for name in kept} == kept, "an earlier output was lost or changed"
    if code != 0:
        new = set(after) - set(before) - {".lock"}
        assert not new, f"a failed command left {sorted(new)}"
        assert not list(space.run.rglob("*.tmp"))
    if case.after:
        case.after(space)


def test_the_matrix_covers_every_command_and_kind_of_fault():
    commands = {c.id.split("/")[0] for c in CASES}
    assert commands >= {"train", "sample", "eval", "inpaint", "toy", "compare", "train-classifier"}
    kinds = ["missing", "empty", "truncated", "wrong shape", "wrong dtype", "NaN", "crafted pickle", "unknown key",
             "out-of-range", "unwritable", "interrupted", "concurrent", "disk full"]
    for kind in kinds:
        assert any(kind in c.id for c in CASES), kind


def _ncsn(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "ncsn", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_second_process_cannot_write_a_run_that_another_is_writing(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    before = fingerprint(run)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from ncsn.runlock import run_lock
        with run_lock({str(run)!r}):
            print("locked", flush=True)
            sys.stdin.read()  # hold until the test closes stdin
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = _ncsn("train", CONFIG, "--workdir", str(run), "--resume", *SETS, *QUIET, cwd=tmp_path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"ncsn train: error: {run} is being written by another ncsn process "
                                   f"(pid {holder.pid} on {os.uname().nodename}, lock {run / '.lock'}); wait for "
                                   f"it to finish or stop it")
    assert fingerprint(run) == before


def test_a_lock_left_by_a_killed_writer_is_taken_over(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    before = fingerprint(run / "checkpoints")
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from ncsn.runlock import run_lock
        held = run_lock({str(run)!r})
        held.__enter__()
        os.kill(os.getpid(), signal.SIGKILL)
        """)], env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert killed.wait(timeout=60) == -9 and (run / ".lock").read_text().startswith(f"pid={killed.pid} ")
    done = _ncsn("train", CONFIG, "--workdir", str(run), "--resume", *SETS, *sets("training.n_iters=5"), *QUIET,
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (f"ncsn: note: {run}: taking over the lock left by pid {killed.pid} on "
                                   f"{os.uname().nodename}, which is no longer running")
    assert (run / ".lock").read_text() == ""  # released in order this time
    after = fingerprint(run / "checkpoints")
    assert {k: after.get(k) for k in before} == before and "checkpoint_5.pt" in after
