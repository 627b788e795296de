"""Parallel search workers on a real PostgreSQL server that the test starts itself (initdb into a temporary
folder, pg_ctl start on a free port, trust authentication on 127.0.0.1 only): worker processes share one study,
no config is evaluated twice, and a killed worker's trial is retried by another worker.

Skipped, saying why, only where PostgreSQL cannot run: no server binaries (Debian: apt-get install postgresql),
no psycopg (the `search` extra), or running as root without a non-root user to own the server.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import optuna
import pytest
from repo_paths import REPO_ROOT

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = REPO_ROOT
# the server's owner when the tests run as root (initdb refuses root); Debian's package creates `postgres`
SERVER_USERS = ("postgres", "nobody")
# short heartbeats so that a killed worker's trial goes stale in seconds, not the default minute
HEARTBEAT_INTERVAL_S, HEARTBEAT_GRACE_S = 1, 4


def _server_binaries() -> tuple[str, str] | None:
    """(initdb, pg_ctl): from PATH, else the newest Debian install under /usr/lib/postgresql/*/bin."""
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return shutil.which("initdb"), shutil.which("pg_ctl")
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda path: int(path.split("/")[-3]) if path.split("/")[-3].isdigit() else 0)
    if versions:
        return versions[-1], os.path.join(os.path.dirname(versions[-1]), "pg_ctl")
    return None


def _server_user() -> pwd.struct_passwd | None:
    """None: run the server as the current user; else the non-root account to run it as."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip(f"running as root and none of the users {SERVER_USERS} exists to own the PostgreSQL server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip(
        "psycopg",
        reason="psycopg (the PostgreSQL driver SQLAlchemy uses, the `search` extra: pip install 'dtb_ext[search]') "
        "is not installed",
    )
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    initdb, pg_ctl = binaries
    user = _server_user()
    root = tempfile.mkdtemp(prefix="dtb-postgres-")
    data = os.path.join(root, "data")
    os.mkdir(data)
    if user is not None:
        for path in (root, data):
            os.chown(path, user.pw_uid, user.pw_gid)
    as_owner = {"user": user.pw_uid, "group": user.pw_gid} if user is not None else {}
    port = _free_port()

    def run(command: list[str]) -> None:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120, **as_owner)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    run([initdb, "-D", data, "-U", "dtb", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c fsync=off"
    run([pg_ctl, "-D", data, "-l", os.path.join(root, "server.log"), "-o", options, "-w", "-t", "60", "start"])
    try:
        yield f"postgresql://dtb@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], cwd=root, capture_output=True,
                       timeout=60, **as_owner)
        shutil.rmtree(root, ignore_errors=True)


WORKER = textwrap.dedent(
    """
    import os, sys, time, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import dtb_ext.search.study as study_module
    from dtb_ext.search.engine import run_search
    from dtb_ext.search.evaluation import Evaluation
    from dtb_ext.search.space import LengthSpace

    url, study_name, strategy, worker, workers, evaluations, hang = sys.argv[1:8]
    study_module.HEARTBEAT_INTERVAL_S, study_module.HEARTBEAT_GRACE_S = int(sys.argv[8]), int(sys.argv[9])
    marker = sys.argv[10]
    # start together, so that every worker takes part however slowly each process starts
    open(f"{marker}.ready{worker}", "w").close()
    deadline = time.time() + 120
    while not all(os.path.exists(f"{marker}.ready{i}") for i in range(int(workers))) and time.time() < deadline:
        time.sleep(0.05)

    def evaluate(config):
        if hang == "1":
            # stands for a worker that dies mid-evaluation: say which config, then wait to be killed
            with open(marker + ".hung", "w") as handle:
                handle.write(",".join(map(str, config)))
            time.sleep(600)
        time.sleep(0.1)
        f1 = 90.0 - sum((64 - length) ** 1.5 for length in config) / 100.0
        return Evaluation(f1=f1, exact_match=f1, macs=float(sum(config)))

    run_search(evaluate, LengthSpace(4, 64, 8), n_evaluations=int(evaluations), strategy=strategy, storage=url,
               study_name=study_name, worker=int(worker), progress=False, identity={"test": "postgres workers"})
    """
)


def _start_worker(tmp_path, url: str, study_name: str, strategy: str, worker: int, workers: int,
                  evaluations: int, hang: bool = False) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    arguments = [url, study_name, strategy, worker, workers, evaluations, int(hang), HEARTBEAT_INTERVAL_S,
                 HEARTBEAT_GRACE_S, tmp_path / study_name]
    return subprocess.Popen([sys.executable, str(script), *map(str, arguments)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _evaluated(trials) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["result"]["evaluated"]]


@pytest.mark.parametrize("strategy", ["evolution", "tpe"])
def test_three_workers_share_one_postgres_study_without_evaluating_a_config_twice(tmp_path, postgres_url, strategy):
    study_name = f"three-workers-{strategy}"
    workers = [_start_worker(tmp_path, postgres_url, study_name, strategy, i, 3, 18) for i in range(3)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    trials = optuna.load_study(study_name=study_name, storage=postgres_url).get_trials()
    evaluated = _evaluated(trials)
    configs = [tuple(t.user_attrs["length_config"]) for t in evaluated]
    assert len(set(configs)) >= 18
    assert len(configs) == len(set(configs)), "a config was evaluated twice"
    assert len({t.user_attrs["result"]["worker"] for t in evaluated}) == 3, "every worker should contribute"


def test_a_killed_workers_trial_is_retried_by_another_worker(tmp_path, postgres_url, monkeypatch):
    import dtb_ext.search.study as study_module

    study_name = "killed-worker"
    doomed = _start_worker(tmp_path, postgres_url, study_name, "evolution", 0, 1, 8, hang=True)
    hung_marker = tmp_path / f"{study_name}.hung"
    deadline = time.time() + 120
    while not hung_marker.exists() and doomed.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert hung_marker.exists(), doomed.communicate()[1] if doomed.poll() is not None else "the worker never started"
    hung_config = tuple(int(v) for v in hung_marker.read_text().split(","))
    doomed.send_signal(signal.SIGKILL)  # no clean-up: its trial stays RUNNING and its heartbeat stops
    doomed.wait(timeout=30)

    # what any process touching the study does: once the heartbeat is stale, fail the trial and requeue it
    monkeypatch.setattr(study_module, "HEARTBEAT_INTERVAL_S", HEARTBEAT_INTERVAL_S)
    monkeypatch.setattr(study_module, "HEARTBEAT_GRACE_S", HEARTBEAT_GRACE_S)
    study = optuna.load_study(study_name=study_name, storage=study_module.open_storage(postgres_url))
    deadline = time.time() + 60
    while study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) and time.time() < deadline:
        optuna.storages.fail_stale_trials(study)
        time.sleep(0.5)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert [tuple(t.user_attrs["length_config"]) for t in failed] == [hung_config]

    survivor = _start_worker(tmp_path, postgres_url, study_name, "evolution", 1, 1, 8)
    # the survivor waits at the start barrier for worker 0's ready file, which the doomed worker left
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    trials = optuna.load_study(study_name=study_name, storage=postgres_url).get_trials()
    evaluated = _evaluated(trials)
    retried = [t for t in evaluated if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retried) == 1 and tuple(retried[0].user_attrs["length_config"]) == hung_config
    configs = [tuple(t.user_attrs["length_config"]) for t in evaluated]
    assert len(configs) == len(set(configs)) >= 8, "a config was evaluated twice"
