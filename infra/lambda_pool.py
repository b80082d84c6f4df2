"""Lambda execution environments on one machine: a bounded pool of worker processes, taken in FIFO order.

    pool = EnvironmentPool(setup, size=4)        # setup(index) -> handler(event, context), run in the worker
    await pool.start()                           # every environment set up (its runtime built), or an error
    result = await pool.invoke(event)            # waits (FIFO) for a free environment, runs the event there
    await pool.stop()

Lambda answers concurrent invocations of a function in separate execution environments; each runs ONE
invocation at a time and keeps its module state (the handler's runtime, its clients, the loaded model)
from one invocation to the next. Here each environment is a process of its own, started from a fork
server, and `setup` (picklable: it travels to the worker) builds its handler there.

Processes, not threads, because the handler's state is per process, not per call. In aws-lambda-powertools
3.x `APIGatewayRestResolver.resolve` stores the event and the Lambda context on the `BaseRouter` class
(`BaseRouter.current_event = ...`), its matched route in the app's `context` dict (cleared when any call
ends), `Metrics` keeps its metric set in class attributes that `log_metrics` flushes at the end of every
invocation, and `Logger.append_keys` writes to the one formatter of the service's logger. Two invocations
on two threads of one process would read each other's event and mix their logs and metrics; two processes
cannot. Storage stays serialised where it matters: every environment talks to the same one-request-at-a-
time moto server, so conditional budget writes still behave as in DynamoDB.

Requests beyond the pool wait in arrival order: a freed environment is handed straight to the longest
waiter (no barging by a newer request). An environment that dies mid-invocation answers 502 as a crashed
function does behind API Gateway, one that runs past the function timeout is killed and answers 504 as
the gateway's integration timeout does; either way a fresh environment (a cold start) takes its place.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

FUNCTION_TIMEOUT_S = 30.0  # template.yaml Globals.Function.Timeout
# What API Gateway answers when the function crashed, or did not answer in time.
CRASHED: dict[str, Any] = {"statusCode": 502, "headers": {"Content-Type": "application/json"},
                           "body": '{"message": "Internal server error"}'}
TIMED_OUT: dict[str, Any] = {"statusCode": 504, "headers": {"Content-Type": "application/json"},
                             "body": '{"message": "Endpoint request timed out"}'}

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
Setup = Callable[[int], Handler]  # called once in each new environment with its index

logger = logging.getLogger(__name__)


class EnvironmentFailed(Exception):
    """An environment could not be set up (its setup raised, it died, or it took too long)."""


class LocalContext:
    """The LambdaContext of one local invocation: the template's timeout counts down from its start."""

    function_name = "local-inference"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:local-inference"
    log_group_name = "/aws/lambda/local-inference"
    log_stream_name = "local"

    def __init__(self, timeout_s: float = FUNCTION_TIMEOUT_S) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# --------------------------------------------------------------------------- inside an environment


def _serve(conn: Connection, index: int, setup: Setup, timeout_s: float) -> None:
    """An environment's process: set up once, then one event at a time until the pool closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops the pool
    try:
        handler = setup(index)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the start-up with it
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            event = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_run(handler, event, timeout_s))


def _run(handler: Handler, event: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    try:
        return handler(event, LocalContext(timeout_s))
    except Exception:  # the function crashed: what API Gateway answers then
        logger.exception("the handler raised")
        return CRASHED


# --------------------------------------------------------------------------- one environment, seen from the pool


class _Environment:
    """One worker process and its pipe. `invoke` blocks (the pool calls it on a thread of its own)."""

    def __init__(self, context: Any, index: int, setup: Setup, timeout_s: float) -> None:
        self.index = index
        self.alive = True
        self._timeout_s = timeout_s
        self._conn, self._child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(self._child_end, index, setup, timeout_s),
                                        name=f"lambda-environment-{index}", daemon=True)
        self._ready = False

    def start(self) -> None:
        """The process started (a fork of the fork server); `wait_ready` waits for its set-up."""
        self._process.start()
        self._child_end.close()  # the process has its own copy: EOF on ours now means it is gone

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def wait_ready(self, timeout_s: float) -> None:
        if self._ready:
            return
        try:
            if not self._conn.poll(timeout_s):
                raise EnvironmentFailed(f"environment {self.index} was not set up within {timeout_s:.0f} s")
            status, detail = self._conn.recv()
        except (EOFError, OSError):
            raise EnvironmentFailed(f"environment {self.index} exited while it was set up") from None
        if status != "ready":
            raise EnvironmentFailed(f"environment {self.index} failed to set up:\n{detail}")
        self._ready = True

    def invoke(self, event: dict[str, Any], start_timeout_s: float) -> dict[str, Any]:
        try:
            self.wait_ready(start_timeout_s)  # a replacement's cold start is paid by its first event
            self._conn.send(event)
            if not self._conn.poll(self._timeout_s + 1.0):
                logger.error("environment %s ran past the function timeout: replaced", self.index)
                self.terminate()
                return TIMED_OUT
            result: dict[str, Any] = self._conn.recv()
            return result
        except (EnvironmentFailed, EOFError, OSError) as exc:
            logger.error("environment %s failed: %s; replaced", self.index, exc)
            self.terminate()
            return CRASHED

    def terminate(self, grace_s: float = 2.0) -> None:
        """SIGTERM, SIGKILL after `grace_s`. The pipe stays open: a thread may still be reading it."""
        self.alive = False
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(grace_s)
            if self._process.is_alive():
                self._process.kill()
        self._process.join(grace_s)

    def close(self) -> None:
        """The pipe closed; only once no thread uses it (after `terminate` and its invocation ended)."""
        self._conn.close()


# --------------------------------------------------------------------------- the pool


class EnvironmentPool:
    """`size` environments; at most `size` invocations run at once, the rest wait in arrival order.

    `setup` must be picklable (a module-level function or an instance of a module-level class): it is sent
    to each new environment. `preload` names modules the fork server imports once, so that environments
    start as cheap forks that already hold them."""

    def __init__(self, setup: Setup, *, size: int, start_timeout_s: float = 120.0,
                 timeout_s: float = FUNCTION_TIMEOUT_S, preload: Sequence[str] = ()) -> None:
        if size < 1:
            raise ValueError("an environment pool needs at least one environment")
        self.size = size
        self._setup = setup
        self._start_timeout_s = start_timeout_s
        self._timeout_s = timeout_s
        self._context = multiprocessing.get_context("forkserver")
        # Listing at least this module also makes the fork server take our sys.path (without a preload it
        # does not), so `setup` unpickles from the same modules as here.
        self._context.set_forkserver_preload([__name__, *preload])
        self._environments: list[_Environment] = []
        self._idle: collections.deque[_Environment] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Environment]] = collections.deque()
        self._threads: ThreadPoolExecutor | None = None

    @property
    def pids(self) -> list[int]:
        return [e.pid for e in self._environments if e.pid is not None]

    @property
    def waiting(self) -> int:
        return sum(not w.done() for w in self._waiters)

    async def start(self) -> None:
        """Every environment started and set up; `EnvironmentFailed` (after stopping them) if one is not."""
        self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="lambda-environment")
        self._environments = [self._new(i) for i in range(self.size)]
        try:
            for environment in self._environments:
                await asyncio.to_thread(environment.wait_ready, self._start_timeout_s)
        except BaseException:
            await self.stop()
            raise
        self._idle.extend(self._environments)

    async def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """The handler's result for `event`, from the first environment free for it (FIFO)."""
        try:
            environment = await self._acquire()
        except EnvironmentFailed:  # the pool stopped while the event waited: the gateway's answer
            return CRASHED
        assert self._threads is not None
        running = asyncio.get_running_loop().run_in_executor(
            self._threads, environment.invoke, event, self._start_timeout_s)
        # Given back when the event is done, even if the caller stopped waiting (a disconnect, a shutdown):
        # the environment is busy until then, as a Lambda environment is until its invocation returns.
        running.add_done_callback(lambda _: self._give_back(environment))
        return await asyncio.shield(running)

    async def stop(self) -> None:
        """Every environment ended (an invocation still running answers 502), then their pipes closed."""
        environments, self._environments = self._environments, []
        self._idle.clear()
        threads, self._threads = self._threads, None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(EnvironmentFailed("the pool stopped"))

        def end() -> None:
            for environment in environments:
                environment.terminate()
            if threads is not None:
                threads.shutdown(wait=True)  # their reads end at the closed processes' end of file
            for environment in environments:
                environment.close()

        await asyncio.to_thread(end)

    # ------------------------------------------------------------------ FIFO hand-over

    async def _acquire(self) -> _Environment:
        if self._threads is None:
            raise EnvironmentFailed("the pool is not running")
        if self._idle and not self.waiting:
            return self._idle.popleft()
        waiter: asyncio.Future[_Environment] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed one just as we were cancelled
                self._hand_over(waiter.result())
            else:
                self._waiters.remove(waiter)
            raise

    def _give_back(self, environment: _Environment) -> None:
        if environment not in self._environments:  # the pool was stopped meanwhile
            return
        if not environment.alive:
            environment.close()  # its invocation is over: nothing reads the pipe any more
            replacement = self._new(environment.index)
            self._environments[self._environments.index(environment)] = replacement
            environment = replacement
        self._hand_over(environment)

    def _hand_over(self, environment: _Environment) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter is skipped
                waiter.set_result(environment)
                return
        self._idle.append(environment)

    def _new(self, index: int) -> _Environment:
        environment = _Environment(self._context, index, self._setup, self._timeout_s)
        environment.start()
        return environment
