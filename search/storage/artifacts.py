"""The files every worker of a study needs, through Optuna's artifact store (``study.artifacts``).

The worker that prepares the study (``search/process.py``, under the study's lock) uploads what it trained or measured
for all: the teacher's weights, its logits on the training split, the extra teachers of an ensemble, the sensitivity
table. The study records them (user attribute ``shared_files``: each file's path under ``results_dir``, artifact id,
SHA-256 and size), and a worker whose ``results_dir`` lacks one downloads it to the same place before it prepares,
so it finds every cache filled: a worker on another machine needs the storage URL and the artifact store, not a
shared results folder. The trials' ONNX models go to the same store (``keep``; read back by ``onnx_of`` / ``file_of``).

``study.artifacts``: null = ``<results_dir>/<study>/artifacts`` (a file-system store); a folder (every worker's
path to one shared file system); or ``s3://<bucket>`` for an S3-compatible store through boto3 (its endpoint and
keys from the usual ``AWS_*`` environment variables, e.g. ``AWS_ENDPOINT_URL`` for MinIO).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta, upload_artifact

SHARED = "shared_files"
ONNX = "model.onnx"


def artifact_store(location: str | None, out_dir: Path) -> Any:
    """The artifact store of ``study.artifacts=location`` (null: the study folder's ``artifacts/``)."""
    if location is None or str(location) == "":
        folder = Path(out_dir) / "artifacts"
    elif str(location).startswith("s3://"):
        bucket = str(location)[len("s3://"):].strip("/")
        if not bucket or "/" in bucket:
            raise ValueError(f"study.artifacts={location}: name a bucket, s3://<bucket> (no prefix)")
        try:
            import boto3
        except ModuleNotFoundError as exc:
            raise ValueError(f"study.artifacts={location}: an S3 store needs boto3 (uv pip install boto3)") from exc
        from optuna.artifacts import Boto3ArtifactStore

        return Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    elif "://" in str(location):
        raise ValueError(f"study.artifacts={location}: allowed: null (the study folder's artifacts/), a folder, or "
                         "s3://<bucket>")
    else:
        folder = Path(str(location))
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish(study: optuna.Study, store: Any, results_dir: Path, paths: Iterable[Path]) -> list[str]:
    """Upload each file of ``paths`` under ``results_dir`` (others are left out) the study does not hold yet with
    these contents, and record it; returns the paths uploaded, relative to ``results_dir``."""
    results_dir = Path(results_dir).resolve()
    recorded: dict[str, dict[str, Any]] = dict(study.user_attrs.get(SHARED) or {})
    added = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        if not path.resolve().is_relative_to(results_dir):
            continue  # a file of the user's own (a lookup table elsewhere): every worker names it in its config
        rel = path.resolve().relative_to(results_dir).as_posix()
        sha = _sha256(path)
        if recorded.get(rel, {}).get("sha256") == sha:
            continue
        artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
        recorded[rel] = {"artifact_id": artifact_id, "sha256": sha, "bytes": path.stat().st_size}
        added.append(rel)
    if added:
        study.set_user_attr(SHARED, recorded)
    return added


def fetch(study: optuna.Study, store: Any, results_dir: Path) -> list[str]:
    """Download each file the study shares that ``results_dir`` lacks (or holds with other contents) to its place;
    returns the paths written, relative to ``results_dir``."""
    got = []
    for rel, meta in (study.user_attrs.get(SHARED) or {}).items():
        target = Path(results_dir) / rel
        if target.is_file() and _sha256(target) == meta["sha256"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            path = Path(tmp) / target.name
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=meta["artifact_id"])
            if _sha256(path) != meta["sha256"]:
                raise ValueError(f"study.artifacts: the shared file {rel} does not match the study's record "
                                 "(another artifact store than the preparing worker's?)")
            os.replace(path, target)
        got.append(rel)
    return got



def store(out_dir: Path, location: str | None = None) -> Any:
    """The study's artifact store: ``study.artifacts=location`` (null: ``<out_dir>/artifacts``)."""
    return artifact_store(location, out_dir)


def keep(trial: optuna.Trial, files: dict[str, bytes], artifacts: FileSystemArtifactStore) -> None:
    """Store a trial's files in the study's artifact store under their names: ``model.onnx``, and the runtime's
    own files where its cost model cannot time the ONNX model (ExecuTorch's ``model.pte``)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            optuna.artifacts.upload_artifact(artifact_store=artifacts, file_path=str(path), study_or_trial=trial)


def file_of(trial: optuna.trial.FrozenTrial, artifacts: FileSystemArtifactStore, tmp: Path,
            storage: optuna.storages.BaseStorage, name: str = ONNX) -> bytes | None:
    """The file ``name`` the search stored for ``trial`` (None where it stored none: a screened or failed trial,
    a study searched before the file was kept)."""
    metas = [m for m in get_all_artifact_meta(trial, storage=storage) if m.filename == name]
    if not metas:
        return None
    path = tmp / f"{trial.number}-{name}"
    download_artifact(artifact_store=artifacts, file_path=str(path), artifact_id=metas[-1].artifact_id)
    return path.read_bytes()


def onnx_of(trial: optuna.trial.FrozenTrial, artifacts: FileSystemArtifactStore, tmp: Path,
            storage: optuna.storages.BaseStorage) -> bytes | None:
    """The ONNX model the search stored for ``trial`` (None where it stored none)."""
    return file_of(trial, artifacts, tmp, storage, ONNX)
