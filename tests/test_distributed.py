"""torchrun on CPU (gloo): 2 processes, or 2 one-process "machines" joined by the c10d rendezvous, train
the same weights as 1 process on the same global batch; sampling and evaluation shard over ranks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ncsn import checkpoint as ckpt
from ncsn.cli import main
from ncsn.config import load_config
from ncsn.distributed import shard_sizes

TINY = [
    "training.batch_size=16", "training.n_iters=4", "training.snapshot_freq=2", "training.log_freq=1",
    "model.ngf=8", "model.num_classes=4", "model.sigma_begin=2.0", "model.sigma_end=0.05",
    "sampling.n_steps_each=2", "sampling.batch_size=4",
]


def sets(*extra):
    return [a for s in TINY + list(extra) for a in ("--set", s)]


def networks(config, *states):
    """The score model of ``config`` with each checkpoint's weights, in eval mode."""
    from ncsn.build import build_score_model

    nets = []
    for state in states:
        net = build_score_model(config)
        net.load_state_dict(state["model"])
        nets.append(net.eval())
    return nets


def assert_same_network(a, b):
    """Same function (outputs on a fixed batch at every level) and nearly the same weights.

    Adam moves every weight by at most about ``lr`` per step, whatever the gradient's size. Some
    parameters (e.g. the shift of a normalisation followed by another instance normalisation) have
    a mathematically zero gradient, and Adam turns the rounding noise of a different reduction
    order into steps of up to that size for them. So: at least 90 % of the tensors agree to 1 % of
    the largest possible displacement ``lr * steps``, and all of them to half of it. A rank that
    trained on the wrong data or skipped the gradient averaging moves most weights by about
    ``lr`` per step in another direction and fails both.
    """
    config = load_config("configs/digits.yaml", TINY)
    nets = networks(config, a, b)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for sigma in nets[0].sigmas.tolist():
            out_a, out_b = nets[0](x, sigma), nets[1](x, sigma)
            assert torch.allclose(out_a, out_b, rtol=1e-3, atol=1e-4 / sigma), sigma
    reach = config["optim"]["lr"] * a["step"]
    gaps = {k: (a["model"][k].double() - b["model"][k].double()).abs().max().item()
            for k in a["model"] if a["model"][k].is_floating_point()}
    close = sum(gap <= 0.01 * reach for gap in gaps.values())
    assert close >= 0.9 * len(gaps), f"{len(gaps) - close} of {len(gaps)} tensors differ by > 1% of lr*steps"
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= 0.5 * reach, f"{worst} differs by {gaps[worst]:.3g} (lr*steps = {reach:.3g})"


ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "ncsn", *args]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def torchrun_two_nodes(*args):
    """Two torchrun launchers of one process each, joined by the c10d rendezvous (the multi-machine command).

    The rendezvous store is served by this test process rather than by one of the launchers. When a
    launcher served it, once in about a dozen runs a launcher hung for the full 300 s timeout of
    torchrun's exit barrier after training had finished; with the store here, neither launcher's
    exit depends on the other one staying up.
    """
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{store.port}", "--rdzv_conf=is_host=false",
           "--rdzv_id=ncsn-test", "-m", "ncsn", *args]
    nodes = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    del store


def test_two_processes_match_one_and_resume_in_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "configs/digits.yaml", "--workdir", str(one), "--device", "cpu", "--no-progress", *sets()]) == 0
    torchrun("train", "configs/digits.yaml", "--workdir", str(two), "--device", "cpu", "--no-progress", *sets())
    a, b = ckpt.load_checkpoint(one), ckpt.load_checkpoint(two)
    assert b["world_size"] == 2 and a["step"] == b["step"] == 4
    assert_same_network(a, b)
    # the weights moved: equality is not trivial
    assert any(not torch.equal(a["model"][k], a["ema"][k]) for k in a["model"] if a["model"][k].is_floating_point())

    # two "machines" of one process each, joined by torchrun's c10d rendezvous, train the same network
    nodes = tmp_path / "nodes"
    torchrun_two_nodes("train", "configs/digits.yaml", "--workdir", str(nodes), "--device", "cpu", "--no-progress", *sets())
    c = ckpt.load_checkpoint(nodes)
    assert c["world_size"] == 2 and c["step"] == 4
    assert_same_network(a, c)

    # a 2-process checkpoint resumes in 1 process and matches the 1-process run continued the same way
    more = sets("training.n_iters=6")
    assert main(["train", "configs/digits.yaml", "--workdir", str(two), "--resume", "--device", "cpu",
                 "--no-progress", *more]) == 0
    assert main(["train", "configs/digits.yaml", "--workdir", str(one), "--resume", "--device", "cpu",
                 "--no-progress", *more]) == 0
    a, b = ckpt.load_checkpoint(one), ckpt.load_checkpoint(two)
    assert a["step"] == b["step"] == 6
    assert_same_network(a, b)

    # sampling sharded over 2 ranks gives the same samples as 1 process
    npz1, npz2 = tmp_path / "s1.npz", tmp_path / "s2.npz"
    assert main(["sample", str(one), "--n", "10", "--batch-size", "3", "--out", str(tmp_path / "g1.png"),
                 "--npz", str(npz1), "--device", "cpu", "--no-progress"]) == 0
    torchrun("sample", str(one), "--num-samples", "10", "--batch-size", "3", "--out", str(tmp_path / "g2.png"),
             "--npz", str(npz2), "--device", "cpu", "--no-progress")
    s1, s2 = np.load(npz1)["samples"], np.load(npz2)["samples"]
    assert s1.shape == s2.shape == (10, 1, 8, 8)
    np.testing.assert_allclose(s1, s2, atol=1e-5)

    # evaluation shards its sampling over 2 ranks too: same samples, so the same scores
    eval_args = ["--n", "10", "--batch-size", "3", "--metrics", "fid,is", "--real-n", "50", "--device", "cpu",
                 "--no-progress"]
    e1, e2 = tmp_path / "e1.json", tmp_path / "e2.json"
    assert main(["eval", str(one), "--out", str(e1), *eval_args]) == 0
    torchrun("eval", str(one), "--out", str(e2), *["--num-samples" if a == "--n" else a for a in eval_args])
    r1, r2 = (json.loads(e.read_text())["results"][0] for e in (e1, e2))
    assert r1["protocol"]["n_fake"] == r2["protocol"]["n_fake"] == 10
    for name in ("fid", "is"):
        assert r1["metrics"][name] == pytest.approx(r2["metrics"][name], rel=1e-4), name


def test_shard_sizes_cover_everything():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert sum(shard_sizes(7, 4)) == 7


def test_a_unet_on_the_vp_process_trains_the_same_network_on_two_processes(tmp_path):
    """The DDPM side of the ladder through DistributedDataParallel (L_simple calls the model by timestep)."""

    unet = ["model.arch=unet", "model.process=vp", "model.num_timesteps=50", "model.ch_mult=[1,2]",
            "model.attn_resolutions=[4]", "model.dropout=0.0"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "configs/digits.yaml", "--workdir", str(one), "--device", "cpu", "--no-progress",
                 *sets(*unet)]) == 0
    torchrun("train", "configs/digits.yaml", "--workdir", str(two), "--device", "cpu", "--no-progress", *sets(*unet))
    a, b = ckpt.load_checkpoint(one), ckpt.load_checkpoint(two)
    assert b["world_size"] == 2 and a["step"] == b["step"] == 4
    nets = networks(load_config("configs/digits.yaml", TINY + unet), a, b)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 10, 20, 30, 40, 49])
    with torch.no_grad():
        eps_a, eps_b = (net(x, None, index=t, eps=True) for net in nets)
    assert eps_a.abs().max() > 1e-3  # it moved away from the zero-initialised output
    assert torch.allclose(eps_a, eps_b, atol=2e-3 * eps_a.abs().max().item())


def test_procs_reruns_a_command_under_torchrun(tmp_path, capfd):
    run = tmp_path / "procs"
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu", "--no-progress",
                 "--procs", "2", *sets()]) == 0
    state = ckpt.load_checkpoint(run)
    assert state["world_size"] == 2 and state["step"] == 4
    out, err = capfd.readouterr()
    assert "running as 2 processes" in err
    assert out.count("trained to step 4") == 1  # rank 0 reports, the other rank stays quiet
    # torchrun's own parser must not take `--n` for an abbreviation of its options (the demo's command)
    npz = tmp_path / "s.npz"
    assert main(["sample", str(run), "--n", "6", "--out", str(tmp_path / "s.png"), "--npz", str(npz),
                 "--device", "cpu", "--no-progress", "--procs", "2"]) == 0
    assert np.load(npz)["samples"].shape[0] == 6


def test_procs_auto_uses_the_cores_and_divides_the_batch(monkeypatch):
    from ncsn import launch
    from ncsn.errors import UserError

    monkeypatch.setattr(launch, "available_cpus", lambda: 4)
    assert launch.resolve_procs("auto", "cpu", batch_size=128) == 4
    assert launch.resolve_procs("auto", "cpu", batch_size=6) == 3  # the largest divisor of the batch
    monkeypatch.setattr(launch, "available_cpus", lambda: 1)
    assert launch.resolve_procs("auto", "cpu", batch_size=128) == 1
    assert launch.resolve_procs("3") == 3
    for bad in ("0", "two"):
        with pytest.raises(UserError, match="--procs"):
            launch.resolve_procs(bad)
    assert launch.without_procs(["train", "c.yaml", "--procs", "2", "--set", "a.b=1", "--procs=auto"]) == [
        "train", "c.yaml", "--set", "a.b=1"]
    assert launch.relaunch(1, ["train"]) is None
