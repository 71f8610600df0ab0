"""The FID Inception-v3 (architecture, key names, loading) and the feature-extractor interface."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncsn.errors import UserError
from ncsn.metrics import inception as inc
from ncsn.metrics.features import get_extractor, inception_extractor
from _payload import CodeRunningPayload


@pytest.fixture(autouse=True)
def one_thread():
    """The 299x299 forward passes run several times faster single-threaded on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No test reaches the network or a real cache: caches in tmp, downloads from a missing file."""
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("NCSN_INCEPTION_URL", (tmp_path / "nowhere" / inc.INCEPTION_FILE).as_uri())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return inc.FIDInceptionV3().eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """The random-init state dict written with torch.save (a stand-in for the real weights file)."""
    path = tmp_path_factory.mktemp("weights") / "random_inception.pth"
    torch.save(model.state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------
# The expected parameter list, written out from the Inception-v3 architecture (Szegedy et al. 2016,
# TF graph 2015-12-05 as ported by pytorch-fid): (name, in, out, kernel) of every conv + BN unit.

def _a(cin, pool):
    return [("branch1x1", cin, 64, (1, 1)), ("branch5x5_1", cin, 48, (1, 1)), ("branch5x5_2", 48, 64, (5, 5)),
            ("branch3x3dbl_1", cin, 64, (1, 1)), ("branch3x3dbl_2", 64, 96, (3, 3)),
            ("branch3x3dbl_3", 96, 96, (3, 3)), ("branch_pool", cin, pool, (1, 1))]


def _b(cin):
    return [("branch3x3", cin, 384, (3, 3)), ("branch3x3dbl_1", cin, 64, (1, 1)),
            ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3))]


def _c(c7):
    return [("branch1x1", 768, 192, (1, 1)), ("branch7x7_1", 768, c7, (1, 1)), ("branch7x7_2", c7, c7, (1, 7)),
            ("branch7x7_3", c7, 192, (7, 1)), ("branch7x7dbl_1", 768, c7, (1, 1)),
            ("branch7x7dbl_2", c7, c7, (7, 1)), ("branch7x7dbl_3", c7, c7, (1, 7)),
            ("branch7x7dbl_4", c7, c7, (7, 1)), ("branch7x7dbl_5", c7, 192, (1, 7)),
            ("branch_pool", 768, 192, (1, 1))]


def _d():
    return [("branch3x3_1", 768, 192, (1, 1)), ("branch3x3_2", 192, 320, (3, 3)),
            ("branch7x7x3_1", 768, 192, (1, 1)), ("branch7x7x3_2", 192, 192, (1, 7)),
            ("branch7x7x3_3", 192, 192, (7, 1)), ("branch7x7x3_4", 192, 192, (3, 3))]


def _e(cin):
    return [("branch1x1", cin, 320, (1, 1)), ("branch3x3_1", cin, 384, (1, 1)),
            ("branch3x3_2a", 384, 384, (1, 3)), ("branch3x3_2b", 384, 384, (3, 1)),
            ("branch3x3dbl_1", cin, 448, (1, 1)), ("branch3x3dbl_2", 448, 384, (3, 3)),
            ("branch3x3dbl_3a", 384, 384, (1, 3)), ("branch3x3dbl_3b", 384, 384, (3, 1)),
            ("branch_pool", cin, 192, (1, 1))]


def expected_shapes() -> dict[str, tuple]:
    units = [("Conv2d_1a_3x3", 3, 32, (3, 3)), ("Conv2d_2a_3x3", 32, 32, (3, 3)), ("Conv2d_2b_3x3", 32, 64, (3, 3)),
             ("Conv2d_3b_1x1", 64, 80, (1, 1)), ("Conv2d_4a_3x3", 80, 192, (3, 3))]
    blocks = {"Mixed_5b": _a(192, 32), "Mixed_5c": _a(256, 64), "Mixed_5d": _a(288, 64), "Mixed_6a": _b(288),
              "Mixed_6b": _c(128), "Mixed_6c": _c(160), "Mixed_6d": _c(160), "Mixed_6e": _c(192),
              "Mixed_7a": _d(), "Mixed_7b": _e(1280), "Mixed_7c": _e(2048)}
    for block, convs in blocks.items():
        units += [(f"{block}.{name}", cin, cout, k) for name, cin, cout, k in convs]
    shapes = {}
    for name, cin, cout, k in units:
        shapes[f"{name}.conv.weight"] = (cout, cin, *k)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (cout,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes["fc.weight"], shapes["fc.bias"] = (1008, 2048), (1008,)
    return shapes


def test_state_dict_keys_and_shapes_match_the_pytorch_fid_file(model):
    state = model.state_dict()
    expected = expected_shapes()
    assert sum(k.endswith(".conv.weight") for k in expected) == 94
    assert len(expected) == 566  # the entry count of pt_inception-2015-12-05-6726825d.pth
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert tuple(state["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_forward_on_32x32_images_gives_pool3_and_1008_logits(model):
    seen = {}
    hooks = [getattr(model, name).register_forward_hook(lambda mod, i, out, name=name: seen.__setitem__(name, out))
             for name in ("Mixed_5b", "Mixed_5d", "Mixed_6a", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features, logits = model(x)
    for h in hooks:
        h.remove()
    assert features.shape == (1, 2048) and logits.shape == (1, 1008)
    assert {k: tuple(v.shape[1:]) for k, v in seen.items()} == {
        "Mixed_5b": (256, 35, 35), "Mixed_5d": (288, 35, 35), "Mixed_6a": (768, 17, 17), "Mixed_6e": (768, 17, 17),
        "Mixed_7a": (1280, 8, 8), "Mixed_7b": (2048, 8, 8), "Mixed_7c": (2048, 8, 8)}
    # pool3 is the global average of the last block; logits are the affine head; IS drops the bias
    torch.testing.assert_close(features, seen["Mixed_7c"].mean(dim=(2, 3)))
    with torch.no_grad():
        torch.testing.assert_close(logits, features @ model.fc.weight.T + model.fc.bias)
        probs = model.is_probs(features)
        torch.testing.assert_close(probs, torch.softmax(logits - model.fc.bias, dim=1))
    assert probs.shape == (1, 1008) and abs(float(probs.sum()) - 1) < 1e-5


def test_preprocessing_resizes_bilinearly_and_maps_to_minus_one_one():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    out = inc.FIDInceptionV3.preprocess(x)
    assert out.shape == (2, 3, 299, 299)
    torch.testing.assert_close(out, 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    torch.testing.assert_close(inc.FIDInceptionV3.preprocess(torch.ones(1, 3, 8, 8)), torch.ones(1, 3, 299, 299))
    torch.testing.assert_close(inc.FIDInceptionV3.preprocess(torch.zeros(1, 3, 8, 8)), -torch.ones(1, 3, 299, 299))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        inc.FIDInceptionV3.preprocess(torch.zeros(1, 1, 8, 8))


def _identity_bn(module):
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_parameters()  # weight 1, bias 0, running mean 0, var 1
    return module.eval()


def test_pool_branches_follow_the_tensorflow_graph():
    # avg-pool over valid pixels only: on a constant image the pool branch is the same at corners and centre
    torch.manual_seed(3)
    block = _identity_bn(inc.MixedA(4, pool_features=3))
    block.branch_pool.conv.weight.data.abs_()  # positive responses, so the ReLU keeps the difference visible
    x = torch.full((1, 4, 5, 5), 0.7)
    with torch.no_grad():
        pool = block(x)[:, -3:]
        expected = block.branch_pool(x)  # pooling a constant over valid pixels leaves it unchanged
        torch.testing.assert_close(pool, expected)
        counted = block.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=True))  # what the graph does not do
        assert not torch.allclose(pool, counted)
    # the last block max-pools, the one before averages
    x = torch.rand(1, 2048, 8, 8, generator=torch.Generator().manual_seed(4))
    for pool_kind, reference in [("max", F.max_pool2d(x, 3, 1, 1)),
                                 ("avg", F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))]:
        block = _identity_bn(inc.MixedE(2048, pool=pool_kind))
        with torch.no_grad():
            torch.testing.assert_close(block(x)[:, -192:], block.branch_pool(reference))
    model = inc.FIDInceptionV3()
    assert (model.Mixed_7b.pool, model.Mixed_7c.pool) == ("avg", "max")


# ---------------------------------------------------------------------------------------------
# Loading


def test_round_trip_through_load_fid_inception_is_strict_and_records_sha256(model, saved):
    loaded = inc.load_fid_inception(saved, verify_checksum=False)
    assert loaded.weights_sha256 == inc.file_sha256(saved) and loaded.weights_path == str(saved)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the real file's checksum is required by default
    with pytest.raises(UserError, match=f"expected {inc.INCEPTION_SHA256}"):
        inc.load_fid_inception(saved)
    # a state dict with a missing key is refused (strict loading)
    partial = model.state_dict()
    partial.pop("fc.bias")
    torch.save(partial, saved.parent / "partial.pth")
    with pytest.raises(UserError, match="fc.bias"):
        inc.load_fid_inception(saved.parent / "partial.pth", verify_checksum=False)


def test_file_name_hash_prefix_is_the_sha256_prefix():
    assert inc.INCEPTION_FILE == "pt_inception-2015-12-05-6726825d.pth"
    assert inc.INCEPTION_SHA256.startswith("6726825d") and len(inc.INCEPTION_SHA256) == 64
    assert inc.INCEPTION_URL.endswith("/" + inc.INCEPTION_FILE)


def test_weights_found_in_the_cache_directory(saved, tmp_path):
    cache = tmp_path / "mycache"
    cache.mkdir()
    (cache / inc.INCEPTION_FILE).symlink_to(saved)
    loaded = inc.load_fid_inception(cache_dir=cache, download=False, verify_checksum=False)
    assert loaded.weights_path == str(cache / inc.INCEPTION_FILE)
    with pytest.raises(UserError, match="SHA-256"):  # found, but it is not the release file
        inc.load_fid_inception(cache_dir=cache, download=False)




def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": CodeRunningPayload(marker)}, path)
    with pytest.raises(UserError, match="refusing to load"):
        inc.load_fid_inception(path, verify_checksum=False)
    with open(tmp_path / "raw.pth", "wb") as handle:
        pickle.dump({"payload": CodeRunningPayload(marker)}, handle, protocol=2)
    with pytest.raises(UserError, match="refusing to load"):
        inc.read_state_dict(tmp_path / "raw.pth")
    with pytest.raises(UserError, match="SHA-256"):  # and by default the checksum already refuses it
        inc.load_fid_inception(path)
    assert not marker.exists()


def test_missing_weights_give_the_documented_message(tmp_path):
    message = ("FID Inception weights not found: pass --inception-weights PATH "
               r"\(pt_inception-2015-12-05-6726825d.pth\) or run once online")
    with pytest.raises(UserError, match=message):
        inc.load_fid_inception(download=False)
    with pytest.raises(UserError, match=message + ".*download from file:"):  # offline: the download fails
        get_extractor("cifar10")
    with pytest.raises(UserError, match="not found at"):
        inc.load_fid_inception(tmp_path / "missing.pth")


def test_download_with_wrong_checksum_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    fake = tmp_path / "served" / inc.INCEPTION_FILE
    fake.parent.mkdir()
    fake.write_bytes(b"not the inception weights" * 100)
    monkeypatch.setenv("NCSN_INCEPTION_URL", fake.as_uri())
    cache = tmp_path / "dl-cache"
    with pytest.raises(UserError, match="download from .* failed"):
        inc.load_fid_inception(cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The extractor interface with the Inception


def test_inception_extractor_repeats_grey_images_and_returns_float64(saved, monkeypatch):
    monkeypatch.setattr(inc, "INCEPTION_SHA256", inc.file_sha256(saved))  # accept the stand-in weights
    extractor = inception_extractor(saved)
    assert extractor.name == "inception-v3-fid" and extractor.weights_sha256 == inc.file_sha256(saved)
    grey = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    out = extractor.extract(grey)
    assert out["features"].dtype == np.float64 and out["features"].shape == (1, 2048)
    assert out["probs"].shape == (1, 1008) and abs(out["probs"].sum() - 1) < 1e-6
    with torch.no_grad():
        direct = extractor.network.pool3(grey.repeat(1, 3, 1, 1)).double().numpy()
    np.testing.assert_allclose(out["features"], direct, rtol=1e-5, atol=1e-6)
    via_extractor = get_extractor("cifar10", inception_weights=saved)
    assert via_extractor.name == "inception-v3-fid" and via_extractor.weights_path == str(saved)
