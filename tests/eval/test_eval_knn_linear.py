"""Global-feature evaluations: weighted k-NN and the linear probe (oracles: loops, sklearn, hand maths)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from discorep.cli import main as cli_main
from discorep.data.datasets import ImageFolder
from discorep.data.images import DatasetError
from discorep.eval import knn, linear
from discorep.eval.backbone import load_model
from discorep.eval.features import extract_global_features, topk_accuracy
from discorep.eval.knn import knn_scores
from discorep.eval.linear import train_linear_probe
from tests.float_criteria import assert_equal_except_near_ties
from tests.oracles import knn_classify


def _loop_knn(train_f, train_y, test_f, k, T, C):
    """Reference written out per query: normalise, sort similarities, add exp(sim/T) per class."""
    preds = []
    tr = train_f / np.linalg.norm(train_f, axis=1, keepdims=True)
    for q in test_f:
        q = q / np.linalg.norm(q)
        sims = [float(q @ t) for t in tr]
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        scores = [0.0] * C
        for j in order:
            scores[int(train_y[j])] += math.exp(sims[j] / T)
        preds.append(int(np.argmax(scores)))
    return np.array(preds)


def _knn_margins(train_f, train_y, test_f, k, T, C) -> np.ndarray:
    """Each query's decision margin in float64: the smaller of the gap between the k-th and (k+1)-th
    cosine similarity (which neighbours vote) and the relative gap between the two best class scores
    (who wins). Below float32 rounding, another kernel may decide otherwise and be as right."""
    tr = train_f / np.linalg.norm(train_f, axis=1, keepdims=True)
    te = test_f / np.linalg.norm(test_f, axis=1, keepdims=True)
    sims = te.astype(np.float64) @ tr.astype(np.float64).T
    order = np.sort(sims, axis=1)[:, ::-1]
    cut = order[:, k - 1] - order[:, k] if k < sims.shape[1] else np.full(len(sims), np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    scores = np.zeros((len(sims), C))
    np.add.at(scores, (np.arange(len(sims))[:, None], train_y[top]), np.exp(np.take_along_axis(sims, top, 1) / T))
    best = np.sort(scores, axis=1)[:, ::-1]
    return np.minimum(cut, (best[:, 0] - best[:, 1]) / best[:, 0])


def _random_problem(rng, n_train=120, n_test=50, d=16, c=5):
    centres = rng.normal(size=(c, d))
    train_y = np.concatenate([np.arange(c), rng.integers(0, c, n_train - c)])  # every class present
    test_y = rng.integers(0, c, n_test)
    train_f = centres[train_y] + 1.5 * rng.normal(size=(n_train, d))
    test_f = centres[test_y] + 1.5 * rng.normal(size=(n_test, d))
    return train_f.astype(np.float32), train_y, test_f.astype(np.float32), test_y


@pytest.mark.parametrize("k,T", [(1, 0.07), (5, 0.07), (20, 0.5), (20, 0.07)])
def test_knn_matches_loop_and_sklearn(rng, k, T):
    train_f, train_y, test_f, _ = _random_problem(rng)
    ours = knn_classify(torch.from_numpy(train_f), torch.from_numpy(train_y), torch.from_numpy(test_f),
                        k=k, temperature=T, num_classes=5).numpy()
    # Three float paths (ours, float64 loop, scikit-learn): the same class except at near-tie queries.
    margin = _knn_margins(train_f, train_y, test_f, k, T, 5)
    assert_equal_except_near_ties(ours, _loop_knn(train_f, train_y, test_f, k, T, 5), margin, 1e-5, "vs loop")
    sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                              weights=lambda d: np.exp((1 - d) / T)).fit(train_f, train_y)
    assert_equal_except_near_ties(ours, sk.predict(test_f), margin, 1e-5, "vs scikit-learn")


def test_knn_chunked_equals_unchunked(rng):
    train_f, train_y, test_f, _ = _random_problem(rng, n_test=37)
    args = (torch.from_numpy(train_f), torch.from_numpy(train_y), torch.from_numpy(test_f))
    whole = knn_scores(*args, k=10, temperature=0.1, num_classes=5, chunk_rows=10_000)
    chunked = knn_scores(*args, k=10, temperature=0.1, num_classes=5, chunk_rows=4)
    torch.testing.assert_close(chunked, whole)
    # Chunks of 3 rows reach other matmul kernels: the same class except at near-tie queries.
    assert_equal_except_near_ties(knn_classify(*args, k=10, temperature=0.1, chunk_rows=3), whole.argmax(dim=1),
                                  _knn_margins(train_f, train_y, test_f, 10, 0.1, 5), 1e-5, "chunked")


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_temperature_changes_the_vote():
    # One class-0 neighbour at cos 0.9, two class-1 neighbours at cos 0.5 (±60°).
    a = math.degrees(math.acos(0.9))
    train_f = torch.tensor([_unit(a), _unit(60), _unit(-60)])
    train_y = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    sharp = knn_scores(train_f, train_y, query, k=3, temperature=0.07)
    # Hand computation: class 0 gets e^(0.9/0.07), class 1 gets 2·e^(0.5/0.07).
    torch.testing.assert_close(sharp[0], torch.tensor([math.exp(0.9 / 0.07), 2 * math.exp(0.5 / 0.07)]),
                               rtol=1e-4, atol=0)
    assert knn_classify(train_f, train_y, query, k=3, temperature=0.07).item() == 0
    assert knn_classify(train_f, train_y, query, k=3, temperature=10.0).item() == 1  # ~ majority vote


def test_k_larger_than_train_set_is_clamped():
    train_f = torch.eye(3)
    preds = knn_classify(train_f, torch.tensor([0, 1, 2]), torch.eye(3), k=50, temperature=0.07)
    assert preds.tolist() == [0, 1, 2]


def test_topk_accuracy_by_hand():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)


def test_linear_probe_fits_separable_features(rng):
    centres = 4 * rng.normal(size=(4, 32))
    y = np.repeat(np.arange(4), 40)
    x = centres[y] + 0.5 * rng.normal(size=(160, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # like the real (L2-normalised) features
    probe = train_linear_probe(torch.tensor(x, dtype=torch.float32), torch.from_numpy(y), 4, epochs=100, lr=0.1)
    with torch.no_grad():
        acc = (probe(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy() == y).mean()
    assert acc == 1.0


def test_linear_probe_close_to_logistic_regression_and_seeded(rng):
    centres = 0.6 * rng.normal(size=(4, 16))  # Bayes accuracy ~85%
    y_tr, y_va = rng.integers(0, 4, 600), rng.integers(0, 4, 600)
    x_tr = (centres[y_tr] + rng.normal(size=(600, 16))).astype(np.float32)
    x_va = (centres[y_va] + rng.normal(size=(600, 16))).astype(np.float32)
    probe = train_linear_probe(torch.from_numpy(x_tr), torch.from_numpy(y_tr), 4, epochs=50, lr=0.1, seed=3)
    with torch.no_grad():
        ours = (probe(torch.from_numpy(x_va)).argmax(1).numpy() == y_va).mean()
    sk = LogisticRegression(max_iter=2000).fit(x_tr, y_tr).score(x_va, y_va)
    assert 0.6 < sk < 0.99  # the problem is easy but not trivial, so the comparison means something
    assert abs(ours - sk) <= 0.03, (ours, sk)
    again = train_linear_probe(torch.from_numpy(x_tr), torch.from_numpy(y_tr), 4, epochs=50, lr=0.1, seed=3)
    torch.testing.assert_close(again.fc.weight, probe.fc.weight, rtol=0, atol=0)


# ---------------------------------------------------------------- end to end on generated folders

def _colour_folder(root, colours: dict[str, tuple[int, int, int]], n: int, seed: int, size: int = 32):
    """Near-flat colour images: each a random shade around its class colour plus mild pixel noise."""
    rng = np.random.default_rng(seed)
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            base = np.clip(np.array(rgb) + rng.integers(-30, 31, 3), 0, 255)
            pixels = np.clip(base + rng.integers(-10, 11, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


RED_BLUE = {"red": (220, 30, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="module")
def colour_sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("colours")
    train = _colour_folder(base / "train", RED_BLUE, 8, seed=0)
    val = _colour_folder(base / "val", RED_BLUE, 8, seed=1)
    (train / "red" / "broken.png").write_bytes(b"not a png")  # must be skipped and reported
    return train, val


def test_extract_global_features_shapes_norms_and_skips(colour_sets):
    train, _ = colour_sets
    model = load_model("random:resnet18")
    model.encoder.train()  # a live network mid-pretraining: mode must come back unchanged
    feats, labels, skipped = extract_global_features(model, ImageFolder(train), 32, "c5", batch_size=5,
                                                     progress=False)
    assert model.encoder.training
    assert feats.dtype == torch.float32 and feats.shape == (16, 512)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(16))
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == [0] * 8 + [1] * 8  # blue=0, red=1
    assert len(skipped) == 1 and skipped[0][0].endswith("broken.png")
    # Batching must not change the features (eval-mode BN, per-image resize).
    again, _, _ = extract_global_features(model, ImageFolder(train), 32, "c5", batch_size=16, progress=False,
                                          num_workers=0)
    torch.testing.assert_close(again, feats, rtol=1e-4, atol=1e-5)


def test_cli_knn_end_to_end(colour_sets, tmp_path, capsys):
    train, val = colour_sets
    out = tmp_path / "knn.json"
    rc = cli_main(["eval", "knn", "--checkpoint", "random:resnet18", "--train", str(train), "--val", str(val),
                   "--size", "64", "--device", "cpu", "--k", "5", "--temperature", "0.1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["top1"] == 1.0 and "top5" not in data  # only two classes
    assert (data["n_train"], data["n_val"]) == (16, 16)
    assert [s["path"].endswith("broken.png") for s in data["skipped_train"]] == [True]
    s = data["settings"]
    assert (s["k"], s["temperature"], s["size"], s["features"], s["checkpoint"]) == (5, 0.1, 64, "c5",
                                                                                       "random:resnet18")
    printed = capsys.readouterr().out
    assert "top-1" in printed and "1.0000" in printed


def test_cli_linear_end_to_end(colour_sets, tmp_path):
    train, val = colour_sets
    out = tmp_path / "linear.json"
    rc = cli_main(["eval", "linear", "--checkpoint", "random:resnet18", "--train", str(train), "--val", str(val),
                   "--size", "32", "--device", "cpu", "--epochs", "30", "--lr", "0.1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["top1"] == 1.0 and data["train_top1"] == 1.0
    assert (data["settings"]["epochs"], data["settings"]["lr"], data["settings"]["size"]) == (30, 0.1, 32)


def test_class_mismatch_names_the_classes(tmp_path, colour_sets):
    train, _ = colour_sets
    val = _colour_folder(tmp_path / "val", {"red": (220, 30, 30), "green": (30, 220, 30)}, 2, seed=2)
    with pytest.raises(DatasetError, match="missing in --val: blue.*missing in --train: green"):
        knn.run(checkpoint="random:resnet18", train=train, val=val, size=32, device="cpu")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "x.png")
    with pytest.raises(DatasetError, match="class sub-folder"):
        linear.run(checkpoint="random:resnet18", train=train, val=flat, size=32, device="cpu")
