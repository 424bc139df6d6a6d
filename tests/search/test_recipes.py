"""The cluster recipe of docs/recipes/ (not run on a cluster here): it parses as Kubernetes objects, and the
workers' command line is a valid ``python -m search`` command line that joins one study."""
from __future__ import annotations

from pathlib import Path

import yaml

from search.cli import compose_checked

RECIPE = Path(__file__).resolve().parents[2] / "docs" / "recipes" / "kubernetes.yaml"


def test_the_kubernetes_recipe_parses_and_its_workers_command_composes():
    docs = [d for d in yaml.safe_load_all(RECIPE.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"Service", "Deployment", "Job", "PersistentVolumeClaim"} <= set(kinds)
    assert all({"apiVersion", "kind", "metadata", "spec"} <= set(d) for d in docs)
    job = kinds["Job"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"]
    container = job["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "search"]
    service = kinds["Service"]["metadata"]["name"]
    args = [a.replace("$(JOB_COMPLETION_INDEX)", "3") for a in container["args"]]
    cfg = compose_checked(args)  # raises, with one line, on any key or value the engine would refuse
    assert cfg.study.worker == 3 and f"@{service}:" in cfg.study.storage
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert any(str(cfg.study.artifacts).startswith(m) for m in mounts)
