"""One inference thread owns the loaded bundle; requests queue for it and are answered in batches.

Keras models are loaded once, at start-up, and only this thread calls them, so requests
served in parallel never load a model twice nor call one concurrently. Whatever is waiting
when the thread becomes free is predicted as one batch (up to ``max_batch``), which keeps
latency low when idle and raises throughput under load; a full queue is refused at once
(503) instead of growing memory.
"""

import asyncio
import logging
import queue
import threading
import time

import numpy as np

logger = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full: the client should retry later."""


class Inference:
    """Predictions through :func:`inclinet.stages.predict.predict_images`, one batch at a time."""

    def __init__(self, bundle, *, max_batch=16, max_queue=256):
        from inclinet.stages import predict

        self._predict_images = predict.predict_images
        self.bundle = bundle
        self.max_batch = int(max_batch)
        self._queue = queue.Queue(maxsize=int(max_queue))
        self._thread = None
        self.batches = 0
        self.predicted = 0

    def load(self):
        """Load every member and run one warm-up prediction (first requests are then not slow)."""
        start = time.perf_counter()
        for name in self.bundle.members:
            self.bundle.network(name)
        size = max(self.bundle.input_size, 16)
        yy, xx = np.mgrid[:size, :size]
        blob = 16 + 200 * np.exp(-(((xx - size / 2) / (0.2 * size)) ** 2 + ((yy - size / 2) / (0.1 * size)) ** 2))
        self._predict_images(self.bundle, [np.repeat(blob[:, :, None], 3, axis=2).astype(np.uint8)], names=["warm-up"])
        logger.info("serve: %d member(s) loaded and warmed up in %.1f s", len(self.bundle.members),
                    time.perf_counter() - start)

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
