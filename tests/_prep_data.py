"""Tiny seeded galaxy images and npz files for the preparation-stage tests (no GalSim needed)."""

import numpy as np

from inclinet.npzstream import NpzWriter


def galaxy_image(size, axial_ratio, *, angle_deg=0.0, colour=False, radius=None, seed=0, noise=1.0):
    """``uint8 (size, size, 3)``: an elliptical exponential-ish disk at the centre.

    Gray: dark galaxy on a white sky (the g/r/i look); colour: bright, yellowish galaxy
    on a black sky (the SDSS composites). ``axial_ratio`` = minor/major axis.
    """
    rng = np.random.default_rng(seed)
    radius = radius or size / 8.0
    y, x = np.mgrid[:size, :size] - (size - 1) / 2.0
    theta = np.deg2rad(angle_deg)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    profile = np.exp(-np.sqrt((u / radius) ** 2 + (v / (radius * axial_ratio)) ** 2) * 2.0)
    if colour:
        weights = np.array([1.0, 0.85, 0.6])
        image = 230.0 * profile[..., None] * weights + rng.normal(0, noise, (size, size, 3)) + 8.0
    else:
        plane = 245.0 - 200.0 * profile + rng.normal(0, noise, (size, size))
        image = np.repeat(plane[..., None], 3, axis=2)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def inclination_to_q(inclination, q0=0.2):
    cos = np.cos(np.deg2rad(inclination))
    return float(np.sqrt(cos * cos * (1 - q0 * q0) + q0 * q0))


def write_sample(path, band, pgcs, labels, size, *, seed=0, compress=True):
    """An npz in the sample/compressed format with one synthetic galaxy per row."""
    pgcs = np.asarray(pgcs, dtype=np.int32)
    labels = np.asarray(labels, dtype=np.int32)
    with NpzWriter(path, (size, size, 3), n_rows=len(pgcs), compress=compress) as writer:
        for pgc, label in zip(pgcs.tolist(), labels.tolist()):
            q = inclination_to_q(label) if label >= 45 else 0.9
            writer.append(galaxy_image(size, q, angle_deg=pgc % 180, colour=(band == "gri"), seed=seed + pgc))
        writer.set(labels=labels, pgcIDs=pgcs, band=np.array(band))
    return path
