"""Shared test fixtures: a tiny seeded synthetic universe and small npz builders.

``tiny_universe`` renders ~40 galaxies at 64 px once per test session (a few seconds);
``build_npz`` writes an npz in the formats of docs/architecture.md. Other test modules may
``from conftest import build_npz`` or use the ``make_npz`` fixture.
"""

import numpy as np
import pytest

TINY_N_GALAXIES = 40
TINY_SIZE = 64
TINY_SEED = 1


def build_npz(path, *, n=8, size=32, band="g", labels=None, pgc_ids=None, seed=0, **extra):
    """Write a small npz with ``images`` uint8 (n, size, size, 3), ``labels``, ``pgcIDs``, ``band``.

    Grey bands get three identical channels. ``labels`` defaults to inclinations 45..90;
    ``extra`` arrays (e.g. ``filter``, ``inverted``) are stored as given. Returns the path.
    """
    rng = np.random.default_rng(seed)
    if band == "gri":
        images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    else:
        gray = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        images = np.repeat(gray[..., None], 3, axis=3)
    if labels is None:
        labels = rng.integers(45, 91, size=n)
    if pgc_ids is None:
        pgc_ids = 1_000_000 + np.arange(n)
    np.savez_compressed(
        path,
        images=images,
        labels=np.asarray(labels, dtype=np.int32),
        pgcIDs=np.asarray(pgc_ids, dtype=np.int32),
        band=np.asarray(band),
        **extra,
    )
    return path


@pytest.fixture
def make_npz():
    """The :func:`build_npz` function, as a fixture."""
    return build_npz


@pytest.fixture(scope="session")
def tiny_universe(tmp_path_factory):
    """Directory of a synthetic universe: 40 galaxies at 64 px, seed 1 (catalog.csv, truth.csv, galaxies/)."""
    from inclinet.stages import synth

    output = tmp_path_factory.mktemp("tiny_universe")
    synth.run(n_galaxies=TINY_N_GALAXIES, output=output, size=TINY_SIZE, seed=TINY_SEED)
    return output


def ellipse_images(n, size, seed, *, colour, major=0.3):
    """Images of smooth elliptical galaxies with inclinations 45..90 (q0 = 0.2).

    Returns ``(images uint8 (n, size, size, 3), inclinations int32 (n,))``; colour images
    are bright on black, gray ones dark on white, as the raw bands are.
    """
    rng = np.random.default_rng(seed)
    inclinations = rng.integers(45, 91, n)
    q = np.sqrt(np.cos(np.radians(inclinations)) ** 2 * 0.96 + 0.04)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    major = major * size
    images = []
    for ratio in q:
        profile = np.exp(-3 * ((xx / major) ** 2 + (yy / (major * ratio)) ** 2))
        image = profile * 255 if colour else 255 - profile * 200
        images.append(np.repeat(image[..., None], 3, axis=-1))
    return np.clip(np.round(images), 0, 255).astype(np.uint8), inclinations.astype(np.int32)


def untrained_bundle(root, members, *, size=32, seed=1, views=2, seed_offset=0):
    """``root/bundle`` of untrained members ``(model, subset, task)`` at ``size`` px: fast, enough for plumbing tests.

    Member ``k`` is initialised with Keras seed ``seed_offset + k``. Returns the bundle folder.
    """
    from pathlib import Path

    from inclinet import bundle, models, naming

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (model, subset, task) in enumerate(members):
        models.import_keras().utils.set_random_seed(seed_offset + index)
        path = root / f"{Path(naming.model_stem(model, subset)).name}.keras"
        models.build_model(model, input_size=size, task=task).save(path)
        records.append(
            {"name": naming.member_name(model, subset), "model": model, "task": task, "subset": subset, "path": path}
        )
    bundle.write_bundle(root / "bundle", records, input_size=size, seed=seed, views=views)
    return root / "bundle"
