"""Data larger than memory (``data.stream``): streamed splits read on demand give exactly the in-memory tensors,
and so the same training, logits, accuracies and trial values; ``auto`` switches past ``data.memory_limit_mb``;
bad settings are one line naming the key. Every folder and file is made here (generated or Fashion-MNIST images)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from objectives import Accuracy
from search.data import ArraysData, ImageFolderData, Streamed, feed
from search.data._base import channel_stats
from search.data._stream import channel_stats_streamed
from search.training.loops import distill, logits_of, recover, train_teacher

from tests.search.data.test_data import fmnist_test, grey_set, write_folder  # noqa: F401 - fmnist_test is a fixture

SPLITS = ("train", "val", "test")


def same(a, b) -> None:
    """Two Splits hold the same data: every split's images and labels, the normalisation and the fingerprint."""
    assert (a.fingerprint, a.mean, a.std, a.classes, a.source) == (b.fingerprint, b.mean, b.std, b.classes, b.source)
    for split in SPLITS:
        x, z = getattr(a, f"{split}_x"), getattr(b, f"{split}_x")
        assert tuple(x.shape) == tuple(z.shape) and len(x) == len(z)
        assert torch.equal(x[:], z[:]), split
        assert torch.equal(getattr(a, f"{split}_y"), getattr(b, f"{split}_y")), split


@pytest.fixture()
def grey_folder(tmp_path, fmnist_test) -> Path:  # noqa: F811
    x, y = grey_set(fmnist_test, n=60)
    write_folder(tmp_path / "grey", x, y)
    return tmp_path / "grey"


def _npy_folder(root: Path, **arrays) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for key, value in arrays.items():
        np.save(root / f"{key}.npy", value)
    return root


# --------------------------------------------------------------------------- the same data, read either way


def test_a_streamed_image_folder_is_the_in_memory_one(grey_folder):
    memory = ImageFolderData(root=str(grey_folder), stream=False, val_size=10, test_size=0.2).splits()
    streamed = ImageFolderData(root=str(grey_folder), stream=True, val_size=10, test_size=0.2).splits()
    assert isinstance(memory.train_x, torch.Tensor) and isinstance(streamed.train_x, Streamed)
    assert "carved" in streamed.source and streamed.input_shape == (1, 1, 28, 28)
    same(memory, streamed)


def test_indexing_a_streamed_split_as_a_tensor(grey_folder):
    memory = ImageFolderData(root=str(grey_folder), stream=False).splits().train_x
    streamed = ImageFolderData(root=str(grey_folder), stream=True).splits().train_x
    idx = torch.tensor([7, 0, 7, 3])
    for key in (5, -1, slice(2, 9), slice(None, None, 3), slice(10, 10), idx, idx.numpy(), [1, 2]):
        got = streamed[key]
        assert got.dtype == torch.float32 and torch.equal(got, memory[key]), key
    assert streamed.shape == memory.shape and streamed[3].shape == (1, 28, 28)


def test_own_val_and_test_folders_colour_and_resizing_stream_alike(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        for i in range(n):
            path = tmp_path / "c" / split / f"k{i % 2}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(path)
    kw = {"root": str(tmp_path / "c"), "image_size": [6, 8]}
    streamed = ImageFolderData(stream=True, **kw).splits()
    assert streamed.input_shape == (1, 3, 6, 8) and len(streamed.mean) == 3 and "carved" not in streamed.source
    same(ImageFolderData(stream=False, **kw).splits(), streamed)


def test_a_mixed_folder_with_a_corrupt_file_streams_as_it_loads(grey_folder, caplog):
    Image.fromarray(np.full((28, 28, 3), 200, np.uint8)).save(grey_folder / "train" / "a" / "colour.png")
    (grey_folder / "train" / "b" / "broken.png").write_bytes(b"not a png")
    memory = ImageFolderData(root=str(grey_folder), stream=False).splits()
    with caplog.at_level("WARNING", logger="search"):
        streamed = ImageFolderData(root=str(grey_folder), stream=True).splits()
    assert "skipped 1 unreadable" in caplog.text
    same(memory, streamed)


def test_the_normalisation_streamed_is_the_in_memory_one_to_four_places():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random((2500, 2, 5, 5), dtype=np.float32) * 3 + 7,
                        np.zeros((2500, 1, 5, 5), np.float32)], axis=1)  # 3 chunks of 1000; channel 2 constant
    streamed = Streamed(lambda positions: x[positions], np.arange(len(x)), x.shape[1:])
    mean, std = channel_stats_streamed(streamed)
    assert (mean, std) == channel_stats(x) and std[2] == 1.0


def test_given_mean_and_std_are_used_as_given(grey_folder):
    s = ImageFolderData(root=str(grey_folder), stream=True, mean=[0.5], std=[0.25]).splits()
    raw = ImageFolderData(root=str(grey_folder), stream=True, mean=[0.0], std=[1.0]).splits()
    assert s.mean == (0.5,) and torch.equal(s.train_x[:4], (raw.train_x[:4] - 0.5) / 0.25)


# --------------------------------------------------------------------------- auto, and bad settings


def test_auto_streams_past_the_memory_limit_only(grey_folder, caplog):
    # estimated from the 60 files before carving: 60 x 1 x 28 x 28 float32 = 0.18 MB
    below = ImageFolderData(root=str(grey_folder), memory_limit_mb=1).splits()
    with caplog.at_level("INFO", logger="search"):
        above = ImageFolderData(root=str(grey_folder), memory_limit_mb=0.1).splits()
    never = ImageFolderData(root=str(grey_folder), stream=False, memory_limit_mb=0.001).splits()
    assert isinstance(below.train_x, torch.Tensor) and isinstance(never.train_x, torch.Tensor)
    assert isinstance(above.train_x, Streamed) and "read on demand" in caplog.text
    same(below, above)


@pytest.mark.parametrize(("kw", "key"), [
    ({"stream": "yes"}, "data.stream"), ({"stream": 1}, "data.stream"), ({"stream": None}, "data.stream"),
    ({"workers": -1}, "data.workers"), ({"workers": 1.5}, "data.workers"), ({"workers": True}, "data.workers"),
    ({"memory_limit_mb": 0}, "data.memory_limit_mb"), ({"memory_limit_mb": "2G"}, "data.memory_limit_mb"),
])
@pytest.mark.parametrize("module", [ImageFolderData, ArraysData])
def test_bad_stream_settings_are_one_line_naming_the_key(module, kw, key):
    where = {"root": "/x"} if module is ImageFolderData else {"path": "/x"}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as exc:
        module(**where, **kw)
    assert "\n" not in str(exc.value) and f"got {kw[key.split('.')[1]]!r}" in str(exc.value)


def test_the_configs_carry_the_keys_and_the_cli_passes_them(grey_folder):
    from search.cli import compose_checked
    from search.data import build

    for option in ("image_folder", "arrays"):
        data = compose_checked([f"data={option}"]).data
        assert (data.stream, data.workers, data.memory_limit_mb) == ("auto", 0, 2048), option
    cfg = compose_checked(["data=image_folder", f"data.root={grey_folder}", "data.stream=true", "data.workers=1"])
    module = build(cfg.data)
    assert (module.streaming.stream, module.streaming.workers) == (True, 1)


def test_a_study_resumes_when_only_how_its_data_is_read_changes(tmp_path, grey_folder):
    from search.cli import compose_checked
    from search.loop.study import check_resume, keep_config

    base = ["experiment=smoke", "data=image_folder", f"data.root={grey_folder}"]
    keep_config(compose_checked([*base, "data.stream=false"]), tmp_path, {})
    assert check_resume(compose_checked([*base, "data.stream=true", "data.workers=2",
                                         "data.memory_limit_mb=10"]), tmp_path) == {}


# --------------------------------------------------------------------------- arrays: .npy folders, memory-mapped


def test_a_npy_folder_streams_memory_mapped(tmp_path, fmnist_test):  # noqa: F811
    x, y = grey_set(fmnist_test, n=300)
    folder = _npy_folder(tmp_path / "npy", train_x=x, train_y=y)
    np.savez(tmp_path / "same.npz", train_x=x, train_y=y)
    memory = ArraysData(path=str(folder), stream=False).splits()
    streamed = ArraysData(path=str(folder), stream=True).splits()
    same(memory, streamed)
    npz = ArraysData(path=str(tmp_path / "same.npz")).splits()
    assert torch.equal(npz.train_x, memory.train_x) and npz.mean == memory.mean  # a folder reads as the .npz does
    assert len(pickle.dumps(streamed.train_x)) < 8 * len(streamed.train_x) + 1_000  # its positions and a path


def test_a_npy_folder_with_its_own_splits_classes_and_channels_last(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {f"{s}_x": rng.random((n, 6, 5, 3), dtype=np.float32) for s, n in (("train", 20), ("val", 6),
                                                                                  ("test", 5))}
    arrays.update({f"{s}_y": rng.integers(0, 3, len(arrays[f"{s}_x"])) for s in SPLITS})
    folder = _npy_folder(tmp_path / "npy", **arrays, classes=np.array(["cat", "dog", "owl"]))
    streamed = ArraysData(path=str(folder), stream=True).splits()
    assert streamed.classes == ("cat", "dog", "owl") and streamed.input_shape == (1, 3, 6, 5)
    same(ArraysData(path=str(folder), stream=False).splits(), streamed)


def test_a_npz_cannot_stream_and_auto_keeps_it_in_memory(tmp_path, fmnist_test):  # noqa: F811
    x, y = grey_set(fmnist_test, n=30)
    np.savez(tmp_path / "a.npz", train_x=x, train_y=y)
    with pytest.raises(ValueError, match=r"data\.stream=true: .*cannot be memory-mapped.*\.npy") as exc:
        ArraysData(path=str(tmp_path / "a.npz"), stream=True).splits()
    assert "\n" not in str(exc.value)
    assert isinstance(ArraysData(path=str(tmp_path / "a.npz"), memory_limit_mb=0.001).splits().train_x, torch.Tensor)


def test_an_unreadable_npy_file_is_one_line_naming_data_path(tmp_path):
    folder = _npy_folder(tmp_path / "npy", train_y=np.zeros(3, np.int64))
    (folder / "train_x.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"data\.path=.*train_x\.npy is not a readable \.npy file") as exc:
        ArraysData(path=str(folder)).splits()
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- what reads the splits


@pytest.fixture()
def both(grey_folder):
    """The grey folder in memory and streamed with 0 and 1 DataLoader workers."""
    return (ImageFolderData(root=str(grey_folder), stream=False).splits(),
            ImageFolderData(root=str(grey_folder), stream=True).splits(),
            ImageFolderData(root=str(grey_folder), stream=True, workers=1).splits())


def test_feed_reads_the_same_batches_without_touching_the_global_generator(both):
    memory, _, workers = both
    keys = [torch.tensor([5, 1, 3]), slice(0, 7), torch.tensor([2])]
    state = torch.get_rng_state()
    got = list(feed(workers.train_x, keys))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(got, feed(memory.train_x, keys))) and len(got) == 3


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))


@pytest.mark.parametrize("which", [1, 2], ids=["workers0", "workers1"])
def test_training_recovery_distillation_and_logits_are_the_same_streamed(both, which):
    memory, streamed = both[0], both[which]
    out = []
    for s in (memory, streamed):
        teacher = train_teacher(_net(), s.train_x, s.train_y, epochs=2, lr=0.05, batch_size=16, seed=3,
                                log=lambda _: None)
        logits = logits_of(teacher, s.train_x, batch_size=20)
        recovered = recover(_net(), s.train_x, s.train_y, logits, steps=4, lr=0.05, batch_size=8,
                            temperature=4.0, alpha=0.5, seed=1)
        student = distill(_net(), s.train_x, s.train_y, logits, steps=4, lr=0.05, batch_size=8,
                          temperature=4.0, alpha=0.5, seed=1)
        acc = Accuracy(images=s.val_x, labels=s.val_y, batch_size=4)
        out.append((logits, [acc.of(m) for m in (teacher, recovered, student)],
                    [p.detach() for m in (teacher, recovered, student) for p in m.parameters()]))
    (la, aa, pa), (lb, ab, pb) = out
    assert torch.equal(la, lb) and aa == ab and all(torch.equal(p, q) for p, q in zip(pa, pb))


def test_accuracy_of_an_onnx_session_reads_a_streamed_split(both):
    import onnxruntime as ort

    from spaces.materialize import export_onnx

    memory, streamed, _ = both
    onnx = export_onnx(_net(), memory.input_shape)
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    assert Accuracy(images=streamed.val_x, labels=streamed.val_y, batch_size=3).onnx(session) == \
        Accuracy(images=memory.val_x, labels=memory.val_y).onnx(session)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_streamed_search_records_the_in_memory_searchs_values(tmp_path, fmnist_test):  # noqa: F811
    """python -m search (the CLI entry, in process) on a small folder, in memory and streamed with a worker: the
    teacher and the trials: params, accuracy, size and (an analytic model, not timed) latency."""
    from search.cli import entry
    from search.run import run

    x, y = grey_set(fmnist_test, n=64)
    write_folder(tmp_path / "data", x, y)
    tables = {}
    for stream in ("false", "true"):
        results = tmp_path / f"results-{stream}"
        entry(run, argv=["experiment=smoke", "data=image_folder", f"data.root={tmp_path / 'data'}", "data.val_size=8",
                         "data.test_size=8", f"data.stream={stream}", "data.workers=1", "study.baselines=false",
                         "study.n_trials=2", "hardware=analytic", f"results_dir={results}"])
        tables[stream] = pd.read_csv(results / "smoke" / "trials.csv")
    a, b = tables["false"], tables["true"]
    assert len(a) == 2 and (a["state"] == "COMPLETE").all()
    params = [c for c in a.columns if "." in c]
    columns = ["accuracy", "size_bytes", "latency_ms", *params]
    assert a[columns].equals(b[columns])
