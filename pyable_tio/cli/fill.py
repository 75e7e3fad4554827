"""Fill the volume cache for ``pyable-tio cache``: each file's reader in a pool of worker processes.

Workers stop cleanly: on Ctrl-C or SIGTERM of the command the pending jobs fail and each worker
removes its temporary files and exits; a worker whose parent dies gets SIGTERM (Linux
``PR_SET_PDEATHSIG``) or notices within ``_PARENT_POLL_SECONDS``. Finished entries are kept.

Example:
    >>> for counts, problem in fill(jobs, workers=2):  # doctest: +SKIP
    ...     print(counts['writes'], problem)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import InvalidStateError, ProcessPoolExecutor, as_completed
from typing import Any

from ..constants import EXIT_TERMINATED
from ..errors import PyableTioError, describe
from ..reader import GridReader


def fill(jobs: list[tuple[GridReader, str]], workers: int) -> Iterator[tuple[dict[str, int], str | None]]:
    """Yield each job's ``(counts, problem line or None)``, in completion order.

    On Ctrl-C or SIGTERM the pending jobs are cancelled and the workers are told to stop
    (SIGTERM: each removes its temporary files and exits); finished entries are kept.
    """
    if workers <= 1 or len(jobs) <= 1:
        for reader, path in jobs:
            yield fill_one(reader, path)
        return
    import multiprocessing

    # ITK's thread pool does not survive fork: workers come from a fresh server process
    # (forkserver, which imports pyable-tio once for all of them) or are spawned.
    if 'forkserver' in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context('forkserver')
        context.set_forkserver_preload(['pyable_tio.reader'])
    else:
        context = multiprocessing.get_context('spawn')
    threads = max(1, (os.cpu_count() or 1) // workers)
    others = set(multiprocessing.active_children())
    initargs = (threads, os.getpid())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        futures = [pool.submit(fill_one, reader, path) for reader, path in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            # No future.cancel(): Python 3.11's pool manager then fails the cancelled futures
            # with InvalidStateError (a traceback from its thread). Stopping the workers breaks
            # the pool, which fails every pending future itself.
            threading.excepthook = _quiet_broken_pool(threading.excepthook)
            for worker in set(multiprocessing.active_children()) - others:
                worker.terminate()  # SIGTERM: the worker cleans up and exits (_init_worker)
            raise


def _quiet_broken_pool(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``hook``, but silent for the pool manager's InvalidStateError while the pool is torn down."""

    def quiet(args: Any) -> Any:
        if not issubclass(args.exc_type, InvalidStateError):
            return hook(args)
        return None

    return quiet


#: How often (seconds) a ``cache`` worker checks that the command that started it still runs.
_PARENT_POLL_SECONDS = 0.5


def _init_worker(threads: int, parent: int) -> None:
    """Set ITK's and torch's threads; make the worker stop cleanly on SIGTERM and when ``parent`` dies.

    Ctrl-C is the main process's to handle (it then terminates the workers), so workers
    ignore SIGINT. SIGTERM unwinds the current job (its temporary files are removed) and
    exits. The worker gets SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``; the
    parent may be the forkserver) and, everywhere, when a watchdog thread sees that the
    ``pyable-tio cache`` process ``parent`` is gone (e.g. after ``kill -9``).
    """
    import SimpleITK as sitk
    import torch

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.set_num_threads(threads)  # deepbet's network: no more threads than this worker's share
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_terminated)
    if sys.platform.startswith('linux'):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_PARENT_POLL_SECONDS)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        except OSError:
            pass  # exists (another user's pid): keep watching


_terminating = False


def _worker_terminated(signum, frame) -> None:
    global _terminating
    _terminating = True
    raise SystemExit(EXIT_TERMINATED)  # unwinds the job: temporary files are removed


def fill_one(reader: GridReader, path: str) -> tuple[dict[str, int], str | None]:
    """Load one volume through the cache; its hit/miss/... counts and a problem line or None.

    A volume that loads but cannot be written to the cache is a problem too: the command
    exists to fill the cache, so it must not report success when nothing was stored.
    """
    before = reader.cache.counts
    try:
        array, _ = reader(path)
    except (PyableTioError, OSError) as error:
        return {}, str(error)
    finally:
        if _terminating:
            os._exit(EXIT_TERMINATED)  # the pool would otherwise send the exit back and go on
    after = reader.cache.counts
    counts = {name: after[name] - before[name] for name in after}
    counts['written_bytes'] = array.nbytes if counts['writes'] else 0
    problem = None
    if counts['failed_writes']:
        problem = describe(reader.subject_id, f'file {path}', f'not cached: {reader.cache.last_write_error}')
    return counts, problem
