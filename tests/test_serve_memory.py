"""Memory of inclinet-serve over many requests: what kept the resident size creeping, and that it is released.

The creep (~20 kB per request, bench/bench_serve.py) was free C-heap memory that glibc kept
in its arenas; no Python object outlived its request. These tests guard both halves without
timing anything: repeated predictions leave no objects (no retraced functions, no caches
growing per call), and the inference thread hands the heap's free pages back after every batch.
"""

import asyncio
import ctypes
import ctypes.util
import gc
import platform
import sys
import threading

import numpy as np
import pytest
from conftest import untrained_bundle

from inclinet.service import inference
from inclinet.stages import predict

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
SIZE = 32


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    members = (("model4", 0, "regression"), ("model4", "binary", "binary"))
    return predict.Bundle(untrained_bundle(tmp_path_factory.mktemp("bundle"), members, size=SIZE))


def galaxies(count, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :64]
    images = []
    for _ in range(count):
        ratio = rng.uniform(0.3, 0.9)
        blob = np.exp(-(((xx - 32) / 10.0) ** 2 + ((yy - 24) / (10.0 * ratio)) ** 2))
        base = 20 + 200 * blob + rng.normal(0, 3, blob.shape)
        images.append(np.clip(np.stack([base, base * 0.9, base * 0.7], axis=-1), 0, 255).astype(np.uint8))
    return images


def resident_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_repeated_predictions_leave_no_objects_behind(bundle):
    images = galaxies(4)
    for size in (1, 3, 4):  # every batch size used below has run once
        predict.predict_images(bundle, images[:size])
    gc.collect()
    before = len(gc.get_objects())
    for round_ in range(12):
        answers = predict.predict_images(bundle, images[: (1, 3, 4)[round_ % 3]])
        assert all(answer["status"] == "success" for answer in answers)
    del answers
    gc.collect()
    # A retraced tf.function, a cache keyed per call or kept answers would add hundreds per call.
    assert len(gc.get_objects()) - before < 200


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_free_memory_returns_freed_heap_blocks_to_the_system():
    """The mechanism of the creep: blocks freed between live ones stay resident until trimmed."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    kept = []
    measured = {}

    def fragment():
        # In a thread of its own, as the service's pool threads: its own glibc arena.
        blocks = [libc.malloc(4000) for _ in range(16384)]  # ~64 MB
        for block in blocks:
            ctypes.memset(block, 1, 4000)
        for index, block in enumerate(blocks):
            if index % 32 == 31:
                kept.append(block)  # a live block every 128 kB keeps the arena from shrinking by itself
            else:
                libc.free(block)
        measured["freed"] = resident_kb()
        assert inference.release_free_memory()
        measured["trimmed"] = resident_kb()

    worker = threading.Thread(target=fragment)
    worker.start()
    worker.join()
    for block in kept:
        libc.free(block)
    assert measured["freed"] - measured["trimmed"] > 30_000, measured


def test_the_inference_thread_releases_memory_after_every_batch(bundle):
    served = inference.Inference(bundle, max_batch=4)
    served.load()
    served.start()
    images = galaxies(10, seed=1)

    async def ask_all():
        return await asyncio.gather(*(served.predict(image, f"g{index}") for index, image in enumerate(images)))

    try:
        answers = asyncio.run(ask_all())
    finally:
        served.stop()
    assert [answer["filename"] for answer in answers] == [f"g{index}" for index in range(10)]
    assert all(answer["status"] == "success" for answer in answers)
    assert served.predicted == 10 and served.batches >= 3
    if GLIBC:
        assert served.releases == served.batches
    off = inference.Inference(bundle, release_memory=False)
    assert off.release_memory is False and off.releases == 0
