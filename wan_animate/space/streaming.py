"""Blocking work streamed to the page: callbacks on a worker thread turned into a generator, and a blocking
generator driven from an async endpoint.

The segment engine reports through callbacks (progress, each finished segment) on the thread that runs it;
Gradio streams what an endpoint yields, and ZeroGPU streams what a `spaces.GPU` generator yields out of its
worker process. `stream_thread` runs the work on a thread and yields its reports as they come.

The endpoints that generate are async generators, driving the blocking job through `stream_async`: Gradio
cancels an event (Stop on the page, ``job.cancel()`` from `gradio_client`) by cancelling its task, which an async
generator sees at once, at the ``await`` it waits on. A plain generator would see it only when it next yields:
Gradio closes it then, holding its iterator lock (and the client's cancel request) until it does.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _Raised:
    error: BaseException


_END = object()


def _start(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread running ``target`` in a copy of this context (Gradio's request and progress live in
    context variables: `gr.Progress`, `gr.Warning` and `spaces` read them)."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread


def stream_thread(work: Callable[[Callable[[Any], None]], T], cancel: threading.Event) -> Iterator[Any]:
    """Run ``work(report)`` on a new thread; yield every value it passes to ``report``, then what it returns.

    Raises what ``work`` raises. Closing the generator before the end (its consumer stopped) sets ``cancel``,
    which ``work`` must honour, and waits for ``work`` to return.
    """
    reports: queue.SimpleQueue = queue.SimpleQueue()

    def run() -> None:
        try:
            result = work(reports.put)
        except BaseException as error:  # handed to the consumer's thread
            reports.put(_Raised(error))
        else:
            reports.put(result)
            reports.put(_END)

    thread = _start(run, "wan_animate_work")
    try:
        while (item := reports.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    except GeneratorExit:  # closed before the end
        cancel.set()
        raise
    finally:
        thread.join()


async def stream_async(generator: Iterator[T], on_stop: Callable[[], None]) -> AsyncIterator[T]:
    """Drive the blocking ``generator`` on a worker thread; yield its items as they come.

    When the consumer stops before the end (Gradio cancelled the event), ``on_stop`` is called at once and the
    thread goes on draining ``generator`` to its end, dropping its items: ``on_stop`` must make that end come soon,
    and the generator gets to finish (record how it ended, free what it holds) as it would have.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    dropped = threading.Event()

    def hand_over(item: Any) -> None:
        if dropped.is_set():
            return
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the event loop closed (the app is shutting down)
            dropped.set()

    def drive() -> None:
        try:
            for item in generator:
                hand_over(item)
        except BaseException as error:
            hand_over(_Raised(error))
        else:
            hand_over(_END)

    _start(drive, "wan_animate_job")
    try:
        while (item := await items.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    except (GeneratorExit, asyncio.CancelledError):  # closed, or the event cancelled, before the end
        dropped.set()
        on_stop()
        raise


__all__ = ["stream_async", "stream_thread"]
