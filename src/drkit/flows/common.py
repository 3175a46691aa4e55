"""What every drkit flow and task shares: the failure they raise, the retry rule, how a task
loads the config and acts as its flow run, timeouts and retries from the config."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import flow_run

from drkit.config.models import Config


class RunFailed(Exception):
    """A job ran and failed; ``transient`` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Prefect may persist results)
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type[RunFailed], message: str, state: dict[str, Any]) -> RunFailed:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def retry_only_transient(_task: Any, _task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: retry a :class:`RunFailed` marked transient, nothing else."""
    data = state.data
    if not isinstance(data, BaseException):
        try:
            state.result()
        except BaseException as exc:  # only inspected, never swallowed silently
            data = exc
    return isinstance(data, RunFailed) and data.transient


def _config(path: str | None) -> Config:
    from drkit.config.loader import find_config_path, load_config

    return load_config(find_config_path(path))


@contextmanager
def _as_flow_run(config: Config) -> Iterator[None]:
    """While a task works: the records it appends name the flow run, its deployment and the
    machine as their actor; every repository lock also holds the repository across hosts;
    drkit's log lines reach the run's logs; afterwards, the signed checkpoint of what it
    appended."""
    import socket

    from prefect.runtime import deployment

    from drkit.catalog.store import CURRENT_OWNER
    from drkit.flows.console import run_logs
    from drkit.flows.slots import prefect_gate
    from drkit.identity import os_actor, pop_actor, push_actor
    from drkit.jobs.common import config_secrets
    from drkit.jobs.locks import install_gate

    config_secrets(config)  # known from the start: masked in every line and artifact
    name = deployment.name or "no deployment"
    push_actor(f"prefect flow run {flow_run.name} ({flow_run.id}), deployment {name}, "
               f"as {os_actor()} on {socket.gethostname()}")
    owner = object()  # this task's catalogs: checkpointed and closed at its end
    token = CURRENT_OWNER.set(owner)
    previous = install_gate(prefect_gate(config))
    try:
        with run_logs():
            yield
    finally:
        install_gate(previous)
        pop_actor()
        CURRENT_OWNER.reset(token)
        from drkit.jobs.evidence import finish

        finish(owner, close=True)


def _timed(task_fn: Any, seconds: float) -> Any:
    """``task_fn`` with a Prefect timeout: the job's own limits (``timeouts:``) stop its
    processes first; this is the backstop, with the wait for the repository on top."""
    return task_fn.with_options(timeout_seconds=seconds + 300.0)


def _recorder(config: Config) -> Any:
    from drkit.jobs.common import Recorder

    return Recorder.for_config(config)


def _catalog_and_journal(config: Config) -> tuple[Any, Any]:
    from drkit.catalog.inflight import RunJournal
    from drkit.jobs.common import open_config_catalog

    journal = RunJournal(config.state_dir)
    return open_config_catalog(config, recover=journal), journal


def _retrying(task_fn: Any, config: Config) -> Any:
    retries = config.retries
    return task_fn.with_options(retries=retries.attempts,
                                retry_delay_seconds=[float(d) for d in retries.delays],
                                retry_condition_fn=retry_only_transient)


def _one_after_another(task_fn: Any, config: str | None, names: list[str]) -> list[Any]:
    """Run ``task_fn(config, name)`` for each name in turn (each takes its repository
    exclusively); raise :class:`RunFailed` naming every failure after all have run."""
    states = [task_fn(config, name, return_state=True) for name in names]
    failed = [s for s in states if not s.is_completed()]
    if failed:
        raise RunFailed("; ".join(str(s.message) for s in failed), transient=False)
    return [s.result() for s in states]


def _log() -> Any:
    from prefect.logging import get_run_logger

    return get_run_logger()
