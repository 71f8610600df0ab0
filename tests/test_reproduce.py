"""`ncsn reproduce`: every entry on its quick budget, the two pitfalls' findings, and the CIFAR-10 plan."""

from __future__ import annotations

import json
import math
import shlex
import statistics

import pytest
import torch

from ncsn.cli import build_parser, main
from ncsn.experiments import pitfalls, reproduce

COMMON_FIELDS = {"name", "finding", "budget", "settings", "seconds", "reproduced", "verdict"}
ENTRY_FIELDS = {
    "manifold": {"raw", "perturbed", "spread_ratio", "perturbed_bound"},
    "low-density": {"error_high_density", "error_low_density", "ratio", "grid", "losses"},
    "mixture": {"small_mode_weight", "mmd"},
    "annealing-strip": {"nearest_distance", "nearest_distance_real", "snapshots"},
    "ddpm": {"fid", "floor_fid", "report"},
    "cifar10-table": {"commands", "cost", "paper", "has_gpu", "has_cifar10"},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    assert main(["reproduce", "all", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def _load(out, name):
    return json.loads((out / f"{name}.json").read_text())


def test_the_list_names_every_entry_and_its_finding(capsys):
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(reproduce.ENTRIES)
    assert all("Figure" in line or "Table" in line or "DDPM" in line for line in lines)


@pytest.mark.parametrize("name", list(ENTRY_FIELDS))
def test_every_entry_writes_its_json_and_figure(quick_run, name):
    result = _load(quick_run, name)
    assert COMMON_FIELDS | ENTRY_FIELDS[name] <= set(result)
    assert result["name"] == name and result["budget"] == "quick"
    assert "\n" not in result["verdict"]
    if name == "cifar10-table":
        assert result["reproduced"] is None and result["verdict"].startswith("not run")
        assert not (quick_run / f"{name}.png").exists()
    else:
        assert isinstance(result["reproduced"], bool)
        assert result["verdict"].startswith(("reproduced", "not reproduced"))
        assert result["verdict"].endswith(reproduce.QUICK_NOTE)
        assert (quick_run / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_raw_data_sliced_score_matching_is_less_stable_than_perturbed(quick_run):
    """NCSN Figure 1 on the quick budget: the same network, seed, batches and projections. On raw digits
    the loss runs away past the floor of any perturbed data; on digits + N(0, 0.01^2) it settles above it."""
    result = _load(quick_run, "manifold")
    raw, perturbed = result["raw"], result["perturbed"]
    assert result["perturbed_bound"] == -64 / (2 * 0.01**2)
    assert len(perturbed["losses"]) == result["settings"]["steps"] and not perturbed["diverged"]
    assert perturbed["final_loss"] > result["perturbed_bound"] and not perturbed["below_perturbed_bound"]
    assert raw["diverged"] or raw["below_perturbed_bound"]
    assert raw["spread"] > 2 * perturbed["spread"]
    assert result["reproduced"]


def test_the_low_density_score_error_is_several_times_the_high_density_one(quick_run):
    """NCSN Figure 2: accurate near the modes, inaccurate where p_data is low."""
    result = _load(quick_run, "low-density")
    assert result["error_low_density"] > 3 * result["error_high_density"]
    assert math.isclose(result["ratio"], result["error_low_density"] / result["error_high_density"])
    grid = result["settings"]["grid"]
    assert torch.tensor(result["grid"]["error"]).shape == (grid, grid)


def test_annealed_langevin_beats_langevin_on_the_mixture_weights(quick_run):
    weights = _load(quick_run, "mixture")["small_mode_weight"]
    assert abs(weights["annealed_langevin"] - 0.2) < abs(weights["langevin"] - 0.2)


def test_the_cifar10_plan_is_commands_ncsn_accepts(quick_run, capsys):
    result = _load(quick_run, "cifar10-table")
    assert result["paper"]["ncsn"]["inception_score"] == 8.87 and result["paper"]["ncsn"]["fid"] == 25.32
    assert result["cost"]["samples"] == 50000 and result["cost"]["network_evaluations_per_sample"] == 1000
    parser = build_parser()
    for command in result["commands"] + result["from_released_checkpoint"]:
        words = shlex.split(command)
        assert words[0] == "ncsn"
        parser.parse_args(words[1:])  # exits (fails the test) on an unknown option
    assert [c.split()[1] for c in result["commands"]] == ["train", "sample", "eval"]
    assert [c.split()[1] for c in result["from_released_checkpoint"]] == ["import", "eval"]


def test_the_cifar10_plan_prices_its_work_from_a_timed_forward_pass():
    plan = reproduce.cifar10_plan(torch.device("cpu"), measure=False)
    assert "forward_seconds_per_image" not in plan["cost"]
    config = {"training": {"n_iters": 10, "batch_size": 4}, "data": {"channels": 1, "image_size": 8},
              "model": {"sigma_begin": 1.0, "sigma_end": 0.01, "num_classes": 10}}
    from ncsn.config import DEFAULTS, merge

    priced = reproduce._price(merge(DEFAULTS, config), torch.device("cpu"), nfe=100)
    per_image = priced["forward_seconds_per_image"]
    assert per_image > 0
    assert math.isclose(priced["train_hours_estimate"], 3 * per_image * 10 * 4 / 3600)
    assert math.isclose(priced["sample_hours_estimate"], per_image * 100 * 50000 / 3600)


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "nonsense", "--out", "x"], "unknown entry 'nonsense'"),
    (["reproduce", "manifold"], "--out DIR is required"),
    (["reproduce", "--out", "x"], "name an entry"),
])
def test_bad_requests_get_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_spread_is_small_for_a_settled_curve_and_large_for_a_falling_one():
    settled = [-100.0 - 50.0 * math.exp(-t / 10) for t in range(200)]
    assert pitfalls.spread(settled) < 1e-3
    falling = [-float(t) ** 2 for t in range(200)]  # second half: -9900 .. -39601, median about -22350
    assert math.isclose(pitfalls.spread(falling), (39601 - 10000) / abs(statistics.median(falling[100:])))
    assert pitfalls.spread([1.0, 2.0, float("nan")]) == math.inf
    assert pitfalls.spread([]) == math.inf


def test_the_perturbed_bound_is_minus_half_the_noise_fisher_information():
    """For Gaussian data N(0, tau^2) perturbed by N(0, sigma^2), the best score matching value is
    -1/2 E||grad log q||^2 = -D / (2 (tau^2 + sigma^2)): above the bound, and equal to it as tau -> 0."""
    dim, sigma = 5, 0.1
    bound = pitfalls.perturbed_bound(dim, sigma)
    assert math.isclose(bound, -250.0)
    for tau in (1.0, 0.1, 1e-4):
        best = -dim / (2 * (tau**2 + sigma**2))
        assert bound <= best
    assert math.isclose(-dim / (2 * (1e-8 + sigma**2)), bound, rel_tol=1e-5)


def test_the_conv_score_net_maps_images_to_images():
    net = pitfalls.conv_score_net(channels=3, width=8)
    x = torch.zeros(2, 3, 8, 8)
    assert net(x).shape == x.shape


def test_region_errors_average_over_the_density_quantiles():
    log_p = torch.arange(10, dtype=torch.float64)  # quantile 0.9 -> 8.1, quantile 0.5 -> 4.5
    errors = torch.arange(10, dtype=torch.float64) * 10
    regions = pitfalls.region_errors(errors, log_p, 0.9, 0.5)
    assert regions["error_high_density"] == 90.0  # only log_p = 9 is >= 8.1
    assert regions["error_low_density"] == 20.0  # log_p 0..4, errors 0..40
    assert math.isclose(regions["ratio"], 20.0 / 90.0)


def test_nearest_distances_are_to_the_closest_reference_image():
    reference = torch.zeros(3, 1, 2, 2)
    reference[1] += 1.0
    reference[2] += 3.0
    samples = torch.full((2, 1, 2, 2), 0.9)
    samples[1] = 2.5
    assert torch.allclose(reproduce.nearest_distances(samples, reference), torch.tensor([0.2, 1.0], dtype=torch.float64))
