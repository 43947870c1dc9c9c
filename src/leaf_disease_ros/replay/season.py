"""
A season on Ray: every bag one task running the single-bag replay; reruns skip done bags.

The only module that imports Ray (lazily, in :func:`connect`; ``pip install
'leaf_disease_ros[season]'``). The single-bag replay and the node never need it.

- :func:`connect` starts a local Ray cluster (``ray.init()``, ``num_cpus`` = workers x
  threads, the dashboard off, worker logs kept off the terminal) or joins an existing
  one (``address``: ``auto`` or ``ray://host:10001``). A cluster already started in this
  process (a test module's) is used as it is.
- :func:`plan` decides, bag by bag, whether its result ``season/bags/<id>/pass.json``
  is current (same run key: :func:`~.season_store.run_key`) or must be replayed.
- :func:`run_jobs` submits one task per bag (:func:`~.season_task.replay_bag`), at most
  ``workers`` in flight (the driver's memory and the cluster's stay bounded whatever the
  number of bags), with ``num_cpus`` = the task's inference threads, ``num_gpus`` when
  asked, ``max_retries=1`` (a worker that dies, killed or out of memory, is retried once
  by Ray) and ``retry_exceptions`` = [:class:`~.season_task.TransientStorageError`]. A
  bag whose task returns a failure (a corrupt bag, wrong topics) is submitted once more,
  then reported. Ctrl-C cancels the tasks in flight; every bag finished before stays in
  place (each task renames its own result folder into place when complete).
"""

import collections
from dataclasses import dataclass, field
import json
import os
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from leaf_disease_ros.perception.errors import LeafDiseaseError, MissingDependencyError
from leaf_disease_ros.replay.season_store import bag_content_key, run_key, SeasonBag
from leaf_disease_ros.replay.season_task import (BagJob, PASS_FILE, replay_bag, STATUS_DONE,
                                                 STATUS_FAILED, TransientStorageError)

#: attempts of a bag whose task returned a failure (a Ray-level crash is retried by Ray)
ATTEMPTS = 2
RAY_MAX_RETRIES = 1


class SeasonError(LeafDiseaseError):
    """The season cannot run (Ray missing or unreachable)."""


@dataclass
class Outcome:
    """The end of one bag: its pass summary or failure, attempts and the driver's wall time."""

    job: BagJob
    result: Dict[str, Any]
    attempts: int = 1
    wall_s: float = 0.0
    skipped: bool = False


@dataclass
class SeasonRun:
    """What :func:`run_jobs` did: outcomes by bag id, Ray start-up and total time."""

    outcomes: Dict[str, Outcome] = field(default_factory=dict)
    ray_init_s: float = 0.0
    wall_s: float = 0.0
    cluster: Dict[str, Any] = field(default_factory=dict)


def connect(address: str = '', workers: int = 1, threads: int = 1) -> Tuple[Any, bool, float]:
    """
    Return ``(ray module, whether this call started it, seconds it took)``.

    :raises MissingDependencyError: Ray is not installed.
    :raises SeasonError: the cluster at ``address`` cannot be reached.
    """
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            'the season command runs on Ray, which is not installed: pip install '
            "'leaf_disease_ros[season]' (or pip install ray)") from exc
    if ray.is_initialized():
        return ray, False, 0.0
    start = time.perf_counter()
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers * threads), include_dashboard=False,
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SeasonError(f'cannot start or reach the Ray cluster '
                          f'{address or "(local)"}: {exc}; without --address a local '
                          'cluster is started, with --address auto the one `ray start '
                          '--head` runs on this machine') from exc
    return ray, True, time.perf_counter() - start


def read_pass(bags_dir: str, bag_id: str) -> Optional[Dict[str, Any]]:
    """Return the ``pass.json`` of a finished bag, or None when absent or unreadable."""
    try:
        with open(os.path.join(bags_dir, bag_id, PASS_FILE), encoding='utf-8') as stream:
            document = json.load(stream)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def plan(bags: Sequence[SeasonBag], bags_dir: str, identity: Dict[str, str],
         parameters: Dict[str, Any], version: str, make_job: Callable[[SeasonBag, str], BagJob]
         ) -> Tuple[List[BagJob], Dict[str, Outcome]]:
    """Return ``(jobs to run, outcomes of the bags whose result is current)``."""
    jobs: List[BagJob] = []
    current: Dict[str, Outcome] = {}
    for bag in bags:
        key = run_key(bag_content_key(bag.path), identity, parameters, version, bag.robot)
        job = make_job(bag, key)
        done = read_pass(bags_dir, bag.bag_id)
        if done is not None and done.get('key') == key and done.get('status') == STATUS_DONE:
            current[bag.bag_id] = Outcome(job, done, attempts=0, skipped=True)
        else:
            jobs.append(job)
    return jobs, current


def _ray_failure(job: BagJob, exc: BaseException) -> Dict[str, Any]:
    cause = getattr(exc, 'cause', None)
    text = str(cause or exc).strip().splitlines()
    return {'status': STATUS_FAILED, 'bag_id': job.bag.bag_id, 'bag': job.bag.path,
            'key': job.key, 'error': (text[-1] if text else type(exc).__name__)[:500],
            'error_type': type(cause or exc).__name__, 'worker': {}}


def run_jobs(jobs: Sequence[BagJob], workers: int = 1, threads: int = 1, gpus: float = 0.0,
             address: str = '', on_done: Optional[Callable[[Outcome], None]] = None,
             task: Callable[[BagJob], Dict[str, Any]] = replay_bag) -> SeasonRun:
    """
    Replay the jobs on Ray, at most ``workers`` at a time; return their outcomes.

    :raises KeyboardInterrupt: after cancelling the tasks in flight (finished bags stay).
    """
    ray, started, init_s = connect(address, workers, threads)
    run = SeasonRun(ray_init_s=init_s)
    begin = time.perf_counter()
    try:
        run.cluster = {'address': address or 'local', 'started_here': started,
                       'resources': {k: v for k, v in ray.cluster_resources().items()
                                     if k in ('CPU', 'GPU', 'memory')}}
        remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=RAY_MAX_RETRIES,
                            retry_exceptions=[TransientStorageError])(task)
        queue: Deque[Tuple[BagJob, int]] = collections.deque((job, 1) for job in jobs)
        pending: Dict[Any, Tuple[BagJob, int, float]] = {}
        try:
            while queue or pending:
                while queue and len(pending) < max(1, workers):
                    job, attempt = queue.popleft()
                    pending[remote.remote(job)] = (job, attempt, time.perf_counter())
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job, attempt, submitted = pending.pop(ref)
                    crashed = False
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        result, crashed = _ray_failure(job, exc), True
                    if result.get('status') == STATUS_FAILED and not crashed \
                            and attempt < ATTEMPTS:
                        queue.append((job, attempt + 1))
                        continue
                    outcome = Outcome(job, result, attempt, time.perf_counter() - submitted)
                    run.outcomes[job.bag.bag_id] = outcome
                    if on_done is not None:
                        on_done(outcome)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        run.wall_s = time.perf_counter() - begin
        if started:
            ray.shutdown()
    return run
