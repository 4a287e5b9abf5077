"""Small shared helpers: shard parsing, per-item seeds, argument validation, library versions."""

import sys
import zlib

import numpy as np

from inclinet.errors import invalid


def parse_shard(text):
    """Parse ``"I/K"`` (1-based: shard I of K) into ``(I, K)``."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise invalid("--shard", text, "I/K with integers 1 <= I <= K, e.g. 2/8") from None
    if count < 1 or not 1 <= index <= count:
        raise invalid("--shard", text, "I/K with integers 1 <= I <= K, e.g. 2/8")
    return index, count


def shard_range(n_items, index, count):
    """The contiguous block of item indices that shard ``index`` of ``count`` owns.

    Blocks differ in size by at most one item and together cover ``range(n_items)`` in
    order, so concatenating the shards' outputs gives the unsharded output.
    """
    start = (index - 1) * n_items // count
    stop = index * n_items // count
    return range(start, stop)


def _key_to_int(key):
    if isinstance(key, (int, np.integer)):
        return int(key)
    return zlib.crc32(str(key).encode("utf-8"))


def derive_seed(seed, *keys):
    """A 32-bit seed derived from one run seed and any number of keys (ints or strings).

    Items seeded with ``derive_seed(seed, "synth", pgc)`` get the same random numbers
    whichever job, shard or order processes them.
    """
    entropy = [int(seed) & 0xFFFFFFFF] + [_key_to_int(k) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def rng_for(seed, *keys):
    """A numpy Generator seeded with :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(seed, *keys))


def require_positive(name, value, *, allow_zero=False):
    if value is None or (value < 0 if allow_zero else value <= 0):
        raise invalid(name, value, "a non-negative number" if allow_zero else "a positive number")
    return value


def versions():
    """Versions of the libraries a trained model depends on."""
    import importlib.metadata as metadata

    found = {"python": sys.version.split()[0]}
    for package in ("inclinet", "keras", "tensorflow", "tensorflow-cpu", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
