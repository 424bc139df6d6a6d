"""Many workers on one study (search/workers/): the study-wide budget, a worker killed with SIGKILL, a PostgreSQL
restart mid-search, a worker with another config, and a worker elsewhere that has only the storage and the artifact
store. PostgreSQL is a real server started here (initdb + pg_ctl in a temporary folder) and stopped at the end."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from objectives import objective_class
from search._checks import flat, CONF
from search.process import CONFIG, joined_config
from search.loop.study import open_study
from search.storage.faults import LOST, WORKER
from search.storage.postgres import LocalPostgres, _bin
from search.storage.artifacts import SHARED, artifact_store, fetch, publish
from search.storage.backends import backend, url_for
from tests.search.workers.workers_helper import toy_worker

try:
    _bin("initdb")
    HAVE_POSTGRES = True
except ValueError:
    HAVE_POSTGRES = False

needs_postgres = pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL (Debian's postgresql) is not installed; "
                                                               "make test installs it")
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster of the tests' own, started once for this module and stopped after it."""
    folder = Path(tempfile.mkdtemp(prefix="pg-tests-"))
    folder.chmod(0o755)  # run as root, the server's own user must reach it
    server = LocalPostgres(folder / "postgres")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _new_study(url: str, name: str) -> optuna.Study:
    return open_study(name=name, storage=backend(url), sampler=optuna.samplers.RandomSampler(),
                      objectives=[objective_class("size_bytes")])


def _searched(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if "baseline" not in t.user_attrs]


def _urls(tmp_path: Path, postgres_server) -> dict[str, str]:
    return {"journal": f"journal:{tmp_path / 'journal.log'}",
            **({"postgresql": postgres_server.url()} if postgres_server is not None else {})}


@pytest.fixture(params=["journal", pytest.param("postgresql", marks=needs_postgres)])
def storage_url(request, tmp_path):
    if request.param == "journal":
        return f"journal:{tmp_path / 'journal.log'}"
    server = request.getfixturevalue("postgres")
    return server.url()


def test_two_workers_claim_exactly_the_study_budget(storage_url, request):
    name = f"budget-{request.node.callspec.id}-{os.getpid()}"
    _new_study(storage_url, name)
    workers = [SPAWN.Process(target=toy_worker, args=(storage_url, name, 8, 0.3)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    trials = _searched(optuna.load_study(study_name=name, storage=backend(storage_url)))
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)  # never overrun
    pids = {t.user_attrs[WORKER]["pid"] for t in trials}
    assert pids == {w.pid for w in workers}  # both searched


def test_a_killed_worker_s_trial_fails_as_worker_lost_and_runs_again(storage_url, request):
    name = f"kill-{request.node.callspec.id}-{os.getpid()}"
    study = _new_study(storage_url, name)
    lost = SPAWN.Process(target=toy_worker, args=(storage_url, name, 6, 0.3, True))
    lost.start()
    deadline = time.time() + 60
    while not any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        assert time.time() < deadline, "the first worker never started a trial"
        time.sleep(0.2)
    other = SPAWN.Process(target=toy_worker, args=(storage_url, name, 6, 0.3))
    other.start()
    time.sleep(1.5)
    os.kill(lost.pid, signal.SIGKILL)
    killed = time.time()
    lost.join(10)
    other.join(120)
    assert other.exitcode == 0
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    failed = [t for t in trials.values() if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["error"].startswith(LOST)
    assert failed[0].user_attrs[WORKER]["pid"] == lost.pid
    # failed within the grace period (3 s) and the watcher's interval (1 s), with slack for a loaded machine
    assert failed[0].datetime_complete.timestamp() - killed < 3 + 1 + 5
    again = [t for t in trials.values() if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE and again[0].params == failed[0].params
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and len(trials) == 7  # the budget, plus the lost trial: nothing repeated, none lost


@needs_postgres
def test_a_postgresql_restart_mid_search_loses_nothing(postgres):
    url, name = postgres.url(), f"restart-{os.getpid()}"
    study = _new_study(url, name)
    worker = SPAWN.Process(target=toy_worker, args=(url, name, 12, 0.4))
    worker.start()
    deadline = time.time() + 60
    while sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) < 3:
        assert time.time() < deadline and worker.is_alive()
        time.sleep(0.2)
    before = {t.number: t.values for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE}
    postgres.restart()
    worker.join(180)
    assert worker.exitcode == 0
    after = {t.number: t for t in optuna.load_study(study_name=name, storage=backend(url)).get_trials()}
    assert all(after[n].values == v for n, v in before.items())
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == 12 and len(after) == 12


def _cfg(results: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", f"results_dir={results}", *overrides])


def test_a_worker_with_other_settings_is_refused_in_one_line_naming_the_keys(tmp_path):
    url = f"journal:{tmp_path / 'journal.log'}"
    study = _new_study(url, "smoke")
    from omegaconf import OmegaConf

    study.set_user_attr(CONFIG, flat(OmegaConf.to_container(_cfg(tmp_path), resolve=True)))
    # what a worker may set its own way: threads, where it writes, how long it runs
    assert joined_config("smoke", backend(url), _cfg(tmp_path, "threads=1", "study.n_trials=9")) == {}
    with pytest.raises(ValueError) as err:
        joined_config("smoke", backend(url), _cfg(tmp_path, "recovery.steps=11", "sampler=random"))
    message = str(err.value)
    assert "\n" not in message and "recovery.steps: 10 -> 11" in message and "sampler._target_" in message
    assert joined_config("smoke", backend(url), _cfg(tmp_path, "recovery.steps=11", "study.resume=force"))


def test_storage_urls_and_bad_ones(tmp_path):
    assert url_for(None, results_dir=tmp_path, name="s") == f"sqlite:///{tmp_path}/s/study.db"
    assert url_for(None, results_dir=tmp_path, name="s", workers=2) == f"journal:{tmp_path}/s/journal.log"
    assert url_for("journal", results_dir=tmp_path, name="s") == f"journal:{tmp_path}/s/journal.log"
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "journal.log").touch()  # a study searched by workers: found again with no storage named
    assert url_for(None, results_dir=tmp_path, name="j") == f"journal:{tmp_path}/j/journal.log"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "study.db").touch()  # searched by one process: not silently restarted in another storage
    with pytest.raises(ValueError, match="study.workers=2: study 'one' lives in"):
        url_for(None, results_dir=tmp_path, name="one", workers=2)
    for bad in ("postgres", "journal:"):
        with pytest.raises(ValueError, match=f"study.storage={bad}"):
            url_for(bad, results_dir=tmp_path, name="s")
    with pytest.raises(ValueError, match="study.artifacts=ftp://x"):
        artifact_store("ftp://x", tmp_path)


def test_shared_files_go_through_the_artifact_store(tmp_path):
    here, elsewhere, store_dir = tmp_path / "here", tmp_path / "elsewhere", tmp_path / "store"
    (here / "cache" / "logits").mkdir(parents=True)
    made = here / "cache" / "logits" / "abc.pt"
    made.write_bytes(os.urandom(1000))
    study = _new_study(f"journal:{tmp_path / 'j.log'}", "s")
    store = artifact_store(str(store_dir), here / "s")
    assert publish(study, store, here, [made, here / "absent.csv"]) == ["cache/logits/abc.pt"]
    assert publish(study, store, here, [made]) == []  # the same contents: recorded once
    assert fetch(study, store, here) == []  # a worker that has it fetches nothing
    assert fetch(study, store, elsewhere) == ["cache/logits/abc.pt"]
    assert (elsewhere / "cache" / "logits" / "abc.pt").read_bytes() == made.read_bytes()
    record = study.user_attrs[SHARED]["cache/logits/abc.pt"]
    study.set_user_attr(SHARED, {"cache/logits/abc.pt": {**record, "sha256": "0" * 64}})
    with pytest.raises(ValueError, match="does not match"):
        fetch(study, store, tmp_path / "third")


@pytest.mark.slow
def test_the_workers_command_and_a_worker_elsewhere_with_only_the_storage_and_artifacts(tmp_path, quick_teacher,
                                                                                       primed):
    """``study.workers=2`` on the journal: the baselines once, exactly ``n_trials`` searched trials, the outputs
    written once. Then a worker with an empty results folder of its own, sharing only the journal and the artifact
    store, fetches the teacher's logits and gives an enqueued configuration the very values the first host gave it
    (a predicted latency, so that the values can be equal)."""
    from search.run import run
    from search.storage.backends import load_study

    shared, here, elsewhere = tmp_path / "shared", primed(tmp_path / "here"), tmp_path / "elsewhere"
    url = f"journal:{shared / 'journal.log'}"
    common = [f"model.checkpoint={quick_teacher}", f"study.storage={url}", f"study.artifacts={shared / 'artifacts'}",
              "hardware=analytic", "study.n_trials=2", "report.importances=false"]
    out = run(_cfg(here, "study.workers=2", *common))
    study = load_study("smoke", url)
    trials = study.get_trials(deepcopy=False)
    searched = [t for t in trials if "baseline" not in t.user_attrs]
    assert len(searched) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["baseline"] for t in trials if "baseline" in t.user_attrs) == sorted(
        {t.user_attrs["baseline"] for t in trials if "baseline" in t.user_attrs})  # each baseline once
    assert len({t.user_attrs[WORKER]["pid"] for t in trials}) == 2
    import json

    assert json.loads((out / "summary.json").read_text())["workers"] == 2 and (out / "trials.csv").is_file()
    assert not (elsewhere / "cache").exists()
    done = searched[0]
    study.enqueue_trial(done.params, user_attrs={"check": "elsewhere"})
    run(_cfg(elsewhere, *common, "threads=1"), finish=False)  # threads as each of the two workers had
    assert list((elsewhere / "cache" / "logits").glob("*.pt"))  # fetched, not computed again
    again = [t for t in load_study("smoke", url).get_trials() if t.user_attrs.get("check") == "elsewhere"]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].values == done.values and again[0].user_attrs[WORKER]["pid"] == os.getpid()
