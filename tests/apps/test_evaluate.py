"""``resnet50 eval``: top-1/top-5 against val_map.txt and the precision-fidelity figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fakes import FakeModel
from resnet50.apps.evaluate import centred_logits, evaluate, row_cosine
from resnet50.apps.imagenet import ImagenetDataset, write_val_map
from resnet50.cli import main
from resnet50.core.errors import InvalidInputError

COUNT = 8


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, model_fp32) -> tuple[Path, list]:
    """ImageNet layout labelled with the fp32 model's own top-1; also returns its top-5 per image."""
    from resnet50.core.samples import write_jpegs

    root = tmp_path_factory.mktemp("imagenet")
    paths = write_jpegs(root, COUNT, seed=300)
    results = model_fp32.classify([str(p) for p in paths], top_k=5)
    write_val_map(root / "val_map.txt", [(p.name, r.class_id - 1) for p, r in zip(paths, results)])
    return root, results


def _dataset(root: Path, tmp_path: Path, **kw) -> ImagenetDataset:
    return ImagenetDataset.from_val_map(root, cache_dir=tmp_path / "cache", **kw)


def test_own_labels_score_100(labelled, model_fp32, tmp_path):
    root, _ = labelled
    result = evaluate(model_fp32, _dataset(root, tmp_path), batch_size=3)
    assert (result["top1_percent"], result["top5_percent"], result["count"]) == (100.0, 100.0, COUNT)
    assert result["weights"] == "synthetic" and "not ImageNet accuracy" in result["warning"]


def test_top1_and_top5_count_exactly(labelled, model_fp32, tmp_path):
    root, results = labelled
    labels = [r.class_id - 1 for r in results]
    labels[0] = results[0].predictions[1].imagenet_index  # second choice: top-5 hit, top-1 miss
    top5 = {p.class_id for p in results[1].predictions}
    labels[1] = next(c - 1 for c in range(1, 1001) if c not in top5)  # outside the top-5
    names = sorted(p.name for p in root.glob("*.jpg"))
    write_val_map(tmp_path / "val_map.txt", list(zip(names, labels)))
    ds = ImagenetDataset.from_val_map(root, val_map=tmp_path / "val_map.txt", cache_dir=tmp_path / "cache")
    result = evaluate(model_fp32, ds)
    assert result["top1_percent"] == 100.0 * (COUNT - 2) / COUNT
    assert result["top5_percent"] == 100.0 * (COUNT - 1) / COUNT


def test_native_model_scores_the_same(labelled, model_native, tmp_path):
    root, _ = labelled
    result = evaluate(model_native, _dataset(root, tmp_path))
    assert (result["top1_percent"], result["top5_percent"]) == (100.0, 100.0)


def test_centred_logits_are_logits_minus_their_mean():
    logits = np.random.default_rng(0).normal(0, 3, (4, 1001))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(centred_logits(softmax), logits - logits.mean(axis=1, keepdims=True), atol=1e-6)
    a, b = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 2.0], [3.0, 3.0]])
    np.testing.assert_allclose(row_cosine(a, b), [0.0, 1.0])


class _Fixed(FakeModel):
    """A model that returns given softmax rows in order, whatever the input."""

    def __init__(self, precision: str, rows: np.ndarray):
        self.precision, self.rows, self.at = precision, rows, 0

    def run(self, tensor, top_k=5):
        rows = self.rows[self.at : self.at + len(tensor)]
        self.at += len(tensor)
        return {"softmax_tensor:0": rows, "ArgMax:0": rows.argmax(axis=1)}


def _softmax(order: list[int]) -> np.ndarray:
    """A softmax row whose classes ``order`` rank first to last, the rest below them."""
    row = np.full(1001, 1e-4, np.float32)
    for rank, class_id in enumerate(order):
        row[class_id] = 0.5 / (rank + 1)
    return row / row.sum()


def test_compare_figures_are_exact(labelled, tmp_path):
    root, _ = labelled
    ds = _dataset(root, tmp_path, count=3)
    ref_rows = np.stack([_softmax([10, 11, 12, 13, 14])] * 3)
    rows = np.stack([_softmax([10, 20]), _softmax([12, 10]), _softmax([99, 10])])
    result = evaluate(_Fixed("int8", rows), ds, reference=_Fixed("fp32", ref_rows), batch_size=2)
    compare = result["compare"]
    assert compare["reference_precision"] == "fp32"
    assert compare["top1_agreement_percent"] == 100.0 / 3
    assert compare["top1_in_reference_top5_percent"] == 200.0 / 3
    # cosine of centred vectors is Pearson's correlation of the log-probabilities
    expected = np.mean(
        [np.corrcoef(np.log(r.astype(np.float64)), np.log(ref_rows[0].astype(np.float64)))[0, 1] for r in rows]
    )
    assert compare["mean_logit_cosine"] == pytest.approx(expected, rel=1e-9)


def test_compare_same_precision_is_identity(labelled, model_fp32, tmp_path):
    root, _ = labelled
    result = evaluate(model_fp32, _dataset(root, tmp_path, count=4), reference=model_fp32)
    compare = result["compare"]
    assert compare["top1_agreement_percent"] == compare["top1_in_reference_top5_percent"] == 100.0
    assert compare["mean_logit_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert compare["reference_top1_percent"] == result["top1_percent"] == 100.0


def test_unlabelled_images_need_compare(labelled, model_fp32, tmp_path):
    root, _ = labelled
    ds = ImagenetDataset.from_images(sorted(root.glob("*.jpg")), cache_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="can only be compared: give --compare PRECISION"):
        evaluate(model_fp32, ds)


def test_cli_int8_against_fp32(labelled, tmp_path, capsys):
    """The CPU issue's fidelity check: int8 against fp32 on the same preprocessed samples."""
    root, _ = labelled
    argv = ["eval", "--dataset", str(root), "--precision", "int8", "--compare", "fp32", "--json"]
    assert main([*argv, "--cache", str(tmp_path / "cache")]) == 0
    result = json.loads(capsys.readouterr().out)
    compare = result["compare"]
    assert result["precision"] == "int8" and result["count"] == COUNT and result["weights"] == "synthetic"
    assert compare["reference_top1_percent"] == 100.0  # the labels are fp32's own
    assert result["top1_percent"] == compare["top1_agreement_percent"]  # so int8 top-1 = agreement with fp32
    assert compare["top1_in_reference_top5_percent"] >= compare["top1_agreement_percent"]
    assert 0.9 < compare["mean_logit_cosine"] < 1.0


def test_cli_images_compare_human(labelled, tmp_path, capsys):
    root, _ = labelled
    assert main(["eval", "--images", str(root), "--compare", "fp32", "--count", "3", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fp32 vs fp32: top-1 agreement 100.00%, top-1 in fp32 top-5 100.00%" in out
    assert "WARNING: synthetic weights" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "."], "--images has no labels to score against: add --compare PRECISION"),
        (
            ["--dataset", ".", "--compare", "fp32", "--native"],
            "--compare needs the softmax of both models; drop --native",
        ),
        (["--dataset", "/nonexistent"], "/nonexistent: no such data set folder"),
    ],
)
def test_cli_errors_are_one_line_exit_2(extra, message, capsys):
    assert main(["eval", *extra]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"resnet50 eval: error: {message}"
