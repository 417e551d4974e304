"""Which failures the pipeline's tasks retry: faults yes, bad input and decided failures never."""

from prefect.states import Failed

from flows.tasks import NETWORK, _retry_unless, train_task
from pilot_core.errors import JobFailed, UserError


def test_server_tasks_retry_faults_only():
    retry = NETWORK["retry_condition_fn"]
    assert NETWORK["retries"] == 2
    assert retry(None, None, Failed(data=OSError("connection reset")))
    assert not retry(None, None, Failed(data=UserError("bad config")))
    assert not retry(None, None, Failed(data=JobFailed("gate failed")))


def test_training_retries_a_dead_trainer_not_bad_input():
    assert train_task.retries == 1
    assert train_task.retry_condition_fn(None, None, Failed(data=JobFailed("training failed (exit -9)")))
    assert not train_task.retry_condition_fn(None, None, Failed(data=UserError("no 'dpo' split")))
    assert _retry_unless(UserError)(None, None, Failed(data=RuntimeError("CUDA error")))
