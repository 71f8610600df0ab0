"""The digit classifier: shipped weights, `ncsn train-classifier`, safe loading, the digits extractor."""

import pickle

import numpy as np
import pytest
import torch

from _image_fixtures import make_mnist
from _payload import CodeRunningPayload
from ncsn.classifier_training import accuracy, random_shift
from ncsn.cli import main
from ncsn.data.images import get_dataset
from ncsn.errors import UserError
from ncsn.metrics.features import get_extractor
from ncsn.models.classifier import (
    DigitClassifier,
    load_classifier,
    save_classifier,
    shipped_classifier_path,
    state_dict_sha256,
)


@pytest.fixture(scope="module")
def digits_test():
    data = get_dataset("digits", train=False)
    return data.get_batch(torch.arange(len(data))), data.labels


def test_shipped_classifier_is_accurate_deterministic_and_calibrated(digits_test):
    images, labels = digits_test
    extractor = get_extractor("digits")
    assert extractor.name == "digits-cnn"
    assert extractor.weights_path == str(shipped_classifier_path())
    out = extractor.extract(images, batch_size=100)
    acc = float((out["probs"].argmax(axis=1) == labels.numpy()).mean())
    assert acc > 0.95, acc
    assert out["features"].shape == (297, 128) and out["features"].dtype == np.float64
    assert out["probs"].shape == (297, 10)
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, atol=1e-6)
    again = extractor.extract(images.numpy(), batch_size=37)  # numpy input, other batching: same numbers
    np.testing.assert_allclose(again["features"], out["features"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again["probs"], out["probs"], rtol=1e-5, atol=1e-7)
    assert shipped_classifier_path().stat().st_size < 1_000_000


def test_shipped_file_records_its_metadata_and_checksum():
    payload = torch.load(shipped_classifier_path(), weights_only=True)
    assert payload["dataset"] == "digits" and payload["image_size"] == 8 and payload["channels"] == 1
    assert payload["weights_sha256"] == state_dict_sha256(payload["state_dict"])
    assert payload["test_accuracy"] > 0.97 and payload["n_test"] == 297
    assert get_extractor("digits").weights_sha256 == payload["weights_sha256"]


def test_train_classifier_command_writes_a_weights_only_file(tmp_path, digits_test, capsys):
    out = tmp_path / "clf.pt"
    assert main(["train-classifier", "--dataset", "digits", "--out", str(out), "--epochs", "1",
                 "--seed", "3", "--device", "cpu", "--no-progress"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    payload = torch.load(out, weights_only=True)
    assert payload["epochs"] == 1 and payload["seed"] == 3 and payload["arch"]["feature_dim"] == 128
    assert payload["weights_sha256"] == state_dict_sha256(payload["state_dict"])
    model, meta = load_classifier(out)
    images, labels = digits_test
    # the recorded held-out accuracy is that of the saved weights, and one epoch already beats chance (0.1)
    assert meta["test_accuracy"] == pytest.approx(accuracy(model, lambda i: images[i], labels))
    assert meta["test_accuracy"] > 0.2


def test_train_classifier_on_mnist_files(tmp_path):
    make_mnist(tmp_path / "mnist", n_train=40, n_test=10)
    out = tmp_path / "mnist.pt"
    assert main(["train-classifier", "--dataset", "mnist", "--data-root", str(tmp_path / "mnist"),
                 "--out", str(out), "--epochs", "1", "--device", "cpu", "--no-progress"]) == 0
    extractor = get_extractor("mnist", classifier=out)
    assert extractor.name == "mnist-cnn"
    result = extractor.extract(torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    assert result["features"].shape == (3, 128) and result["probs"].shape == (3, 10)
    with pytest.raises(UserError, match="trained on mnist, not digits"):
        get_extractor("digits", classifier=out)
    with pytest.raises(UserError, match="digits and mnist only"):
        get_extractor("cifar10", classifier=out)




def test_crafted_pickle_and_tampered_weights_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ncsn-classifier", "payload": CodeRunningPayload(marker)}, evil)
    with pytest.raises(UserError, match="refusing to load"):
        load_classifier(evil)
    with pytest.raises(UserError, match="refusing to load"):
        get_extractor("digits", classifier=evil)
    with open(tmp_path / "raw.pt", "wb") as handle:
        pickle.dump({"payload": CodeRunningPayload(marker)}, handle, protocol=2)
    with pytest.raises(UserError, match="refusing to load"):
        load_classifier(tmp_path / "raw.pt")
    assert not marker.exists()

    torch.manual_seed(0)
    good = tmp_path / "good.pt"
    payload = save_classifier(DigitClassifier(width=4, feature_dim=8), good, dataset="digits", image_size=8,
                              channels=1)
    assert load_classifier(good)[1]["weights_sha256"] == payload["weights_sha256"]
    payload["state_dict"]["head.bias"] = payload["state_dict"]["head.bias"] + 1.0  # edited, old checksum kept
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(UserError, match="does not match the recorded"):
        load_classifier(tmp_path / "tampered.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a classifier weights file"):
        load_classifier(tmp_path / "other.pt")
    with pytest.raises(UserError, match="not found"):
        load_classifier(tmp_path / "missing.pt")


def test_random_shift_moves_each_image_within_the_bound():
    n = 400
    x = torch.zeros(n, 1, 8, 8)
    x[:, 0, 4, 3] = 1.0  # one interior pixel
    out = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.ones(n))  # moved, never lost (interior)
    pos = out[:, 0].flatten(1).argmax(dim=1)
    dy, dx = pos // 8 - 4, pos % 8 - 3
    offsets = set(zip(dy.tolist(), dx.tolist()))
    assert offsets == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}  # all 9 shifts occur, no other
    edge = torch.zeros(n, 1, 8, 8)
    edge[:, 0, 0, 0] = 1.0
    lost = random_shift(edge, 1, torch.Generator().manual_seed(0)).sum(dim=(1, 2, 3))
    assert 0 < float((lost == 0).float().mean()) < 1  # shifted out of the frame: zero fill, no wrap-around
    assert torch.equal(random_shift(x, 0), x)


def test_extractor_checks_its_input(digits_test):
    extractor = get_extractor("digits")
    images = digits_test[0][:4]
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        extractor.extract(images * 2)
    with pytest.raises(UserError, match="1-channel"):
        extractor.extract(images.repeat(1, 3, 1, 1))
    with pytest.raises(UserError, match=r"\(N, C, H, W\)"):
        extractor.extract(images[:, 0])
    with pytest.raises(UserError, match="unknown dataset"):
        get_extractor("imagenet")
    # other sizes are resized to the classifier's 8x8: an exact 2x nearest upsampling averages back
    big = images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    np.testing.assert_allclose(extractor.extract(big)["features"], extractor.extract(images)["features"],
                               rtol=1e-5, atol=1e-5)


def test_training_is_reproducible_from_the_seed():
    from ncsn.classifier_training import train_classifier

    def weights(seed):
        model, report = train_classifier("digits", epochs=1, seed=seed, width=8, feature_dim=16, progress=False)
        return state_dict_sha256(model.state_dict()), report["test_accuracy"]

    torch.manual_seed(123)
    before = torch.rand(1)
    first, again, other = weights(0), weights(0), weights(1)
    assert first == again and first[0] != other[0]
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the global generator is left alone by training
