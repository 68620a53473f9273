"""Image sets: IDX/npz readers and their bad-input errors, shapes' exact likelihood, the disk
format round trip and its damage checks, the deterministic batch schedule."""
from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gfnem_cli.engine.errors import GfnemError
from vae.data import ImageSchedule, load_image_set, prepare_mnist, prepare_shapes
from vae.data import mnist as mnist_mod
from vae.data.shapes import ShapesModel

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


# ============================================================================ fake IDX files
def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train=12, n_test=5, rng_seed=0) -> dict:
    rng = np.random.default_rng(rng_seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, (n, (img, lab)) in zip(("train", "test"), zip((n_train, n_test),
                                                             mnist_mod.IDX_FILES.values())):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / img).write_bytes(gzip.compress(idx_bytes(x, 0x803)))
        (folder / lab).write_bytes(gzip.compress(idx_bytes(y, 0x801)))
        arrays[split] = (x, y)
    return arrays


def test_threshold_protocol_and_holdout(tmp_path):
    arrays = write_mnist(tmp_path / "raw")
    manifest = prepare_mnist(tmp_path / "raw", tmp_path / "out", "threshold", valid_size=3,
                             valid_seed=7)
    data = load_image_set(tmp_path / "out")
    assert data.sizes == {"train": 9, "valid": 3, "test": 5}
    assert manifest["options"]["valid_seed"] == 7
    x, y = arrays["train"]
    both = torch.cat([data.images("train"), data.images("valid")]).numpy()
    labels = torch.cat([data.labels("train"), data.labels("valid")]).numpy()
    expected = (x / 255.0 > 0.5).astype(np.uint8)
    # every training image lands in exactly one of train/valid, binarized at grey/255 > 0.5
    order = np.lexsort(both.reshape(len(both), -1).T)
    ref = np.lexsort(expected.reshape(len(x), -1).T)
    assert np.array_equal(both[order], expected[ref]) and np.array_equal(labels[order], y[ref])
    assert np.array_equal(data.images("test").numpy(), (arrays["test"][0] > 127).astype(np.uint8))
    again = prepare_mnist(tmp_path / "raw", tmp_path / "out2", valid_size=3, valid_seed=7)
    assert again["fingerprint"] == manifest["fingerprint"]
    other = prepare_mnist(tmp_path / "raw", tmp_path / "out3", valid_size=3, valid_seed=8)
    assert other["fingerprint"] != manifest["fingerprint"]
    none = prepare_mnist(tmp_path / "raw", tmp_path / "out4", valid_size=0)
    assert none["splits"]["train"]["images"] == 12 and none["splits"]["valid"]["images"] == 0
    with pytest.raises(GfnemError, match="empty"):
        load_image_set(tmp_path / "out4").split("valid")


def _corrupt(folder: Path, case: str) -> Path:
    """Damage one file of a good MNIST folder; return the file that must be named."""
    img = folder / "train-images-idx3-ubyte.gz"
    lab = folder / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(img.read_bytes())
    if case == "missing":
        img.unlink()
    elif case == "truncated_gzip":
        img.write_bytes(img.read_bytes()[:-30])
    elif case == "not_gzip":
        img.write_bytes(b"this is not gzip at all")
    elif case == "bad_crc":
        data = bytearray(img.read_bytes())
        data[-8] ^= 0xFF
        img.write_bytes(bytes(data))
    elif case == "wrong_magic":
        img.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
    elif case == "sizes":
        img.write_bytes(gzip.compress(raw[:-100]))
    elif case == "count":
        y = gzip.decompress(lab.read_bytes())
        lab.write_bytes(gzip.compress(idx_bytes(np.frombuffer(y[8:-1], np.uint8), 0x801)))
        return lab
    elif case == "labels_swapped":
        lab.write_bytes(img.read_bytes())
        return lab
    return img


@pytest.mark.parametrize("case", ["missing", "truncated_gzip", "not_gzip", "bad_crc",
                                  "wrong_magic", "sizes", "count", "labels_swapped"])
def test_bad_idx_input_is_one_line_and_writes_nothing(tmp_path, case):
    write_mnist(tmp_path / "raw")
    named = _corrupt(tmp_path / "raw", case)
    with pytest.raises(GfnemError) as info:
        prepare_mnist(tmp_path / "raw", tmp_path / "out")
    text = str(info.value)
    assert "\n" not in text and info.value.path == str(named), text
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]   # no temporary sibling left


def test_refuses_to_overwrite_a_non_dataset_folder(tmp_path):
    write_mnist(tmp_path / "raw")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(GfnemError, match="refusing to overwrite"):
        prepare_mnist(tmp_path / "raw", tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_static_npz_errors(tmp_path, monkeypatch):
    npz = tmp_path / "binarized_mnist_uint8.npz"
    rng = np.random.default_rng(0)
    arrays = {n: rng.integers(0, 2, (s, 784), dtype=np.uint8)
              for n, s in {"train": 4, "valid": 2, "test": 3}.items()}
    np.savez_compressed(npz, **arrays)
    monkeypatch.setattr(mnist_mod, "STATIC_SIZES", {"train": 4, "valid": 2, "test": 3})
    with pytest.raises(GfnemError, match="checksum mismatch for array 'train'"):
        prepare_mnist(npz, tmp_path / "out", "static")
    import hashlib
    monkeypatch.setattr(mnist_mod, "STATIC_SHA256", {
        n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in arrays.items()})
    manifest = prepare_mnist(tmp_path, tmp_path / "out", "static")   # a folder works too
    assert load_image_set(tmp_path / "out").images("test").shape == (3, 28, 28)
    assert manifest["protocol"] == "static"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(GfnemError, match="corrupt or truncated npz") as info:
        prepare_mnist(npz, tmp_path / "out5", "static")
    assert info.value.path == str(npz) and not (tmp_path / "out5").exists()
    np.savez(npz, train=arrays["train"], test=arrays["test"])
    with pytest.raises(GfnemError, match="no array 'valid'"):
        prepare_mnist(npz, tmp_path / "out5", "static")


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST not found")
def test_real_mnist_threshold(tmp_path):
    manifest = prepare_mnist(SHARED / "mnist", tmp_path / "m", "threshold", valid_size=0)
    assert manifest["splits"] == {"train": {"images": 60000}, "valid": {"images": 0},
                                  "test": {"images": 10000}}
    assert manifest["notes"] == []
    x = load_image_set(tmp_path / "m").images("test")
    assert x.dtype == torch.uint8 and 0.1 < x.float().mean() < 0.2


@pytest.mark.skipif(not (SHARED / "binarized-mnist").is_dir(), reason="static MNIST not found")
def test_real_static_mnist(tmp_path):
    manifest = prepare_mnist(SHARED / "binarized-mnist", tmp_path / "s", "static")
    assert {k: v["images"] for k, v in manifest["splits"].items()} == mnist_mod.STATIC_SIZES


# ============================================================================ shapes
def test_forward_algorithm_matches_enumeration():
    model = ShapesModel(grid=(2, 2), num_codes=3, patch=3, flip=0.3, stay=0.6, step=0.3)
    images, _ = model.sample(6, torch.Generator().manual_seed(1))
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)
    joint = torch.stack([model.log_joint(images, g.expand(6, 2, 2)) for g in grids], 1)
    brute = torch.logsumexp(joint, 1)
    assert torch.allclose(model.log_marginal(images), brute, atol=1e-10)
    # the prior sums to one and the per-image marginal is not trivially the joint
    prior = torch.stack([model.log_joint(images[:1] * 0, g.view(1, 2, 2))
                         - model.cell_log_likelihoods(images[:1] * 0).gather(
                             2, g.view(1, 4, 1)).sum() for g in grids])
    assert abs(float(prior.exp().sum()) - 1.0) < 1e-10
    assert (joint.max(1).values < brute - 1e-3).all()


def test_shapes_set_round_trip_and_floor(tmp_path):
    manifest = prepare_shapes(tmp_path / "s", {"train": 50, "valid": 0, "test": 20}, seed=3)
    data = load_image_set(tmp_path / "s")
    assert data.images("train").shape == (50, 28, 28)
    assert data.codes("test").shape == (20, 4, 4)
    model = ShapesModel.from_options(manifest["model"])
    nll = -model.log_marginal(data.images("test")).mean()
    assert abs(float(nll) - data.true_nll("test")[0]) < 1e-9
    # the floor lies below the NLL of the true codes' joint (marginal >= joint)
    joint = -model.log_joint(data.images("test"), data.codes("test")).mean()
    assert data.true_nll("test")[0] <= float(joint) + 1e-9
    # a partial evaluation's floor is the first images' own, not the split's
    first = -model.log_marginal(data.images("test")[:7])
    part, err = data.true_nll("test", 7)
    assert abs(part - float(first.mean())) < 1e-9 and part != data.true_nll("test")[0]
    assert abs(err - float(first.std() / 7 ** 0.5)) < 1e-9
    assert data.true_nll("test", 20) == data.true_nll("test")
    # changing the training size leaves the test split alone
    other = prepare_shapes(tmp_path / "t", {"train": 10, "valid": 0, "test": 20}, seed=3)
    assert other["true_nll"]["test"] == manifest["true_nll"]["test"]


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete", "manifest"])
def test_damaged_set_is_one_line(tmp_path, damage):
    prepare_shapes(tmp_path / "s", {"train": 8, "test": 4})
    arrow = sorted((tmp_path / "s" / "train").glob("*.arrow"))[0]
    if damage == "truncate":
        arrow.write_bytes(arrow.read_bytes()[:-10])
    elif damage == "edit":
        data = bytearray(arrow.read_bytes())
        data[len(data) // 2] ^= 1
        arrow.write_bytes(bytes(data))
    elif damage == "delete":
        arrow.unlink()
    else:
        (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(GfnemError) as info:
        load_image_set(tmp_path / "s")
    assert "\n" not in str(info.value) and "prepare" in str(info.value)


def test_schedule_is_a_function_of_seed_and_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 2, 2)
    a, b = ImageSchedule(images, 4, seed=5), ImageSchedule(images, 4, seed=5)
    assert [x.index.tolist() for x in a.epoch_batches(2)] == [
        x.index.tolist() for x in b.epoch_batches(2)]
    rows = torch.cat([x.index for x in a.epoch_batches(0)])
    assert sorted(rows.tolist()) == list(range(10))
    assert rows.tolist() != torch.cat([x.index for x in a.epoch_batches(1)]).tolist()
    batch = a.epoch_batches(0)[0]
    assert torch.equal(batch.images[:, 0, 0], batch.index.to(torch.uint8))
    assert [len(x) for x in ImageSchedule(images, 4, 0, drop_last=True).epoch_batches(0)] == [4, 4]
