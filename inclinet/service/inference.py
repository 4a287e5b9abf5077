"""One inference thread owns the loaded bundle; requests queue for it and are answered in batches.

Keras models are loaded once, at start-up, and only this thread calls them, so requests
served in parallel never load a model twice nor call one concurrently. Whatever is waiting
when the thread becomes free is predicted as one batch (up to ``max_batch``), which keeps
latency low when idle and raises throughput under load; a full queue is refused at once
(503) instead of growing memory.

After every batch the thread hands the C heap's free memory back to the system
(glibc's ``malloc_trim``). Without it the resident size crept by ~20 kB per request for as
long as the service ran (about 30 MB per 1,500 requests at 32 clients) although no object
outlived its request: uploads are decoded in the thread pool and their buffers, TensorFlow's
tensors and the answers are freed on other threads, and glibc keeps such freed blocks in its
per-thread arenas instead of returning them. With the trim the resident size stays flat
(BENCHMARKS.md, Serving). Where the C library has no ``malloc_trim`` (musl, macOS) nothing
is done.
"""

import asyncio
import ctypes
import ctypes.util
import logging
import queue
import threading
import time

import numpy as np

logger = logging.getLogger(__name__)


def _find_malloc_trim():
    """glibc's ``malloc_trim(size_t pad)``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory():
    """Return the C heap's free pages to the system; True where that is possible (glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class Busy(Exception):
    """The queue is full: the client should retry later."""


class Inference:
    """Predictions through :func:`inclinet.stages.predict.predict_images`, one batch at a time."""

    def __init__(self, bundle, *, max_batch=16, max_queue=256, release_memory=True):
        from inclinet.stages import predict

        self._predict_images = predict.predict_images
        self.bundle = bundle
        self.max_batch = int(max_batch)
        self._queue = queue.Queue(maxsize=int(max_queue))
        self._thread = None
        self.release_memory = bool(release_memory)
        self.batches = 0
        self.predicted = 0
        self.releases = 0

    def load(self):
        """Load every member and run one warm-up prediction (first requests are then not slow)."""
        start = time.perf_counter()
        for name in self.bundle.members:
            self.bundle.network(name)
        size = max(self.bundle.input_size, 16)
        yy, xx = np.mgrid[:size, :size]
        blob = 16 + 200 * np.exp(-(((xx - size / 2) / (0.2 * size)) ** 2 + ((yy - size / 2) / (0.1 * size)) ** 2))
        self._predict_images(self.bundle, [np.repeat(blob[:, :, None], 3, axis=2).astype(np.uint8)], names=["warm-up"])
        logger.info(
            "serve: %d member(s) loaded and warmed up in %.1f s", len(self.bundle.members), time.perf_counter() - start
        )

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="inclinet-inference", daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def waiting(self):
        return self._queue.qsize()

    async def predict(self, image, name):
        """The answer for one ``uint8 (H, W, 3)`` image; raises :class:`Busy` when the queue is full."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            self._queue.put_nowait((image, name, future, loop))
        except queue.Full:
            raise Busy(f"{self._queue.maxsize} requests are already waiting") from None
        return await future

    def _loop(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            extra = None
            stop = False
            while len(batch) < self.max_batch:
                try:
                    extra = self._queue.get_nowait()
                except queue.Empty:
                    break
                if extra is None:
                    stop = True
                    break
                batch.append(extra)
            self._run(batch)
            batch = item = extra = None  # the images are freed before the heap is trimmed
            if self.release_memory and release_free_memory():
                self.releases += 1
            if stop:
                return

    def _run(self, batch):
        try:
            answers = self._predict_images(self.bundle, [b[0] for b in batch], names=[b[1] for b in batch])
        except Exception as exc:  # noqa: BLE001 -- handed to every waiting request, which answers 500
            logger.exception("serve: prediction of a batch of %d failed", len(batch))
            for _, _, future, loop in batch:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            return
        self.batches += 1
        self.predicted += len(batch)
        for (_, _, future, loop), answer in zip(batch, answers):
            loop.call_soon_threadsafe(_settle, future, answer, None)


def _settle(future, answer, exc):
    if future.done():  # the client went away and the request was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(answer)
