"""inclinet-synth: a synthetic universe of spiral galaxies with known inclination, in the raw layout.

Writes, for every galaxy of the run (or of one shard of it), the four raw images of the
original IncliNET data set under ``DIR/galaxies/``

* ``pgc<id>_d25x2_rot_{g,r,i}.png``: 8-bit grayscale (mode ``L``), asinh-stretched, dark
  galaxy on a white sky;
* ``pgc<id>_d25x2_rot_gri.sdss.jpg``: colour composite (R, G, B = i, r, g) on a dark sky,

and ``DIR/catalog.csv`` in the original pipe-separated catalog format, plus
``DIR/truth.csv`` with the true parameters of every galaxy (including the true inclination
of flagged galaxies, which the catalog records as 0, as the original does).

Geometry follows the originals: the field of view is 2 x D25 (``d25`` column) and the
image is the sky rotated by the catalog position angle ``pa`` so that the major axis is
horizontal; the catalog ``pa`` carries a measurement error of a couple of degrees, so the
rendered major axis is off horizontal by that residual.

A galaxy is an inclined exponential disk (``galsim.InclinedExponential``, random
thickness) with a Sersic bulge (random bulge-to-total and index, de Vaucouleurs at n=4),
logarithmic spiral arms and star-forming knots (Gaussians laid along the arms in the disk
plane, then inclined and rotated with the disk), sometimes a bar, all convolved with a
Moffat PSF, with sky noise and foreground stars. Labels: most galaxies are accepted with
45-90 deg; some are face-on (``F``: ``inc_flg=1``, ``fon=F``, ``[face_on]``); about a fifth
are rejected (``J``: ``inc_flg=1``) for a cause that is rendered: a bright star on the
disk ``[star]``, an overlapping second galaxy ``[multiple]``, a very faint galaxy
``[faint]``, or an elliptical ``[not_spiral]``.

The *observation* of each galaxy is drawn wide on purpose, so that the universe contains
real SDSS cutouts and goes beyond them (ranges in :data:`OBSERVATION_RANGES`): galaxy size
in the frame (the catalog's D25 is only roughly the visible size), centring errors, PSF
width, Moffat index and ellipticity, sky level, noise and sky gradients, the asinh
softening and a gamma of the stretch, saturation, JPEG quality, colour balance, rotation
corners (the black or white triangles left by rotating a cutout), and a field of faint
stars and background galaxies. The disk's intrinsic (edge-on, second-moment) axial ratio
q0 follows a truncated normal (mean 0.22, sd 0.07, 0.08-0.40), the spread measured for SDSS
spirals (Padilla & Strauss 2008: mean 0.21, sd 0.05; Rodriguez & Padilla 2013: 0.27, sd
0.10); bulges range from none to 60% of the light.

What makes a galaxy usable is not what makes its image clean: accepted and face-on galaxies
also get what real cutouts show around usable galaxies (:func:`_draw_surroundings`): a bright
saturated star off the disk with diffraction spikes and, sometimes, a masked (white) core, a
neighbouring galaxy that does not overlap the disk, and a lopsided disk. A ``[faint]``
galaxy is faint by its visible signal-to-noise (D25 surface brightness over the sky noise per
pixel at 512 px: 0.04-0.2, where accepted galaxies have 0.5-8), so the two never overlap.

Every galaxy is drawn from its own random streams ``rng_for(seed, "synth", index)`` (the
galaxy) and ``rng_for(seed, "synth-observation", index)`` (how it is observed), so a
shard renders byte-identical files to an unsharded run, and the catalog is computed
without rendering anything.
"""

import argparse
import csv
import io
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inclinet import config, naming
from inclinet._helpers import derive_seed, parse_shard, rng_for, shard_range
from inclinet.catalog import write_catalog
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import StageError, invalid
from inclinet.io import atomic_path, atomic_write_text, check_outputs

logger = logging.getLogger(__name__)

PGC_BASE = 1_000_000
#: Fractions of the label classes (the rest is accepted, 45-90 deg).
REJECTED_FRACTION = 0.20
FACE_ON_FRACTION = 0.12
REJECT_CAUSES = ("star", "multiple", "faint", "not_spiral")
JPEG_QUALITY = 90
TRUTH_FILE = "truth.csv"
CATALOG_FILE = "catalog.csv"
GRAY_BANDS = naming.GRAY_BANDS
#: Dust optical depth in g, r, i relative to r (reddening).
DUST_BAND_FACTORS = (1.3, 1.0, 0.8)
# Relative brightness of each kind of component in g, r, i: old stars are red, arms and
# star-forming knots blue.
BAND_WEIGHTS = {
    "disk": (0.75, 1.0, 1.15),
    "bulge": (0.45, 1.0, 1.35),
    "arms": (1.05, 1.0, 0.90),
    "knots": (1.80, 1.0, 0.65),
}
SERSIC_INDICES = (1.0, 1.5, 2.0, 3.0, 4.0)  # a few fixed values: GalSim caches each one
#: Ranges of the observation of a galaxy (log: drawn log-uniformly). Real SDSS cutouts
#: (../shared/reference/real-look, measured by bench/bench_look.py) lie inside them.
OBSERVATION_RANGES = {
    "frame": (0.8, 2.0, "log"),  # field of view / (2 x D25)
    "centring": (0.0, 0.04, "sd"),  # galaxy centre offset, fraction of the field (normal sd)
    "psf_fwhm": (0.8, 2.4, "log"),  # arcsec
    "psf_beta": ((2.5, 3.0, 3.5, 4.5), None, "choice"),  # Moffat index (a few values: GalSim caches each)
    "psf_shear": (0.0, 0.08, "lin"),  # PSF ellipticity |g|
    "noise_level": (0.12, 2.0, "log"),  # sky noise per pixel at 512 px, units of the D25 brightness
    "gradient": (0.0, 3.0, "lin"),  # sky gradient across the field, units of the sky noise
    "softening": (0.2, 3.0, "log"),  # asinh softening, units of the D25 brightness
    "gamma": (0.8, 1.25, "lin"),  # applied to the stretched values
    "saturation": (0.5, 5.0, "log"),  # full scale, units of the disk centre brightness
    "sky_gray": (185.0, 250.0, "lin"),  # grey level of the sky of the g, r, i PNGs
    "sky_dark": (1.0, 30.0, "log"),  # level of the sky of the colour JPEG
    "colour_balance": (0.75, 1.3, "lin"),  # per-band factor of the light (gray bands and composite)
    "composite_g": (0.55, 1.05, "lin"),  # scale of the g (blue) channel of the composite, r = 1
    "composite_i": (0.9, 1.4, "lin"),  # scale of the i (red) channel of the composite
    "jpeg_quality": (55, 95, "int"),
    "corner_probability": (0.25, None, "p"),  # rotation corners in the frame
    "field_sources": (35.0, None, "poisson"),  # mean number of faint stars and background galaxies
}
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def galaxy_ids(n_galaxies, seed):
    """The pgc ids of a synthetic universe: ``1000000 + index``, unique and cheap.

    ``seed`` is accepted so that callers need not know the rule; the ids do not depend on it.
    """
    del seed
    return [PGC_BASE + index for index in range(int(n_galaxies))]


def _category(seed, index):
    """Label class and reject cause of galaxy ``index``.

    A golden-ratio sequence with a seeded offset spreads the classes evenly over any run of
    indices, so even a few dozen galaxies get the intended mix.
    """
    offset = (derive_seed(seed, "synth-classes") % 1_000_003) / 1_000_003
    u = (offset + index * _GOLDEN) % 1.0
    if u < REJECTED_FRACTION:
        return "J", REJECT_CAUSES[min(int(u / REJECTED_FRACTION * len(REJECT_CAUSES)), len(REJECT_CAUSES) - 1)]
    if u < REJECTED_FRACTION + FACE_ON_FRACTION:
        return "F", ""
    return "A", ""


@dataclass
class GalaxyParams:
    """Everything needed to render one galaxy and write its catalog row (angles in degrees)."""

    index: int
    pgc: int
    label: str
    cause: str
    true_inc: float
    sky_pa: float
    catalog_pa: float
    d25: float  # arcmin, as written in the catalog
    ra: float
    dec: float
    inc_e: float
    inc_n: int
    elliptical: bool
    thickness: float  # q0: the disk's edge-on axial ratio (second moments); scale height = q0 x 6/pi x h
    r25_over_h: float
    bulge_fraction: float
    bulge_n: float
    bulge_hlr_over_h: float
    bulge_q: float
    has_bar: bool
    bar_fraction: float
    bar_sigma_over_h: float
    bar_q: float
    bar_angle: float
    arm_fraction: float
    knot_fraction: float
    n_arms: int
    pitch: float
    arm_phase: float
    arm_inner_over_h: float
    arm_outer_over_h: float
    psf_fwhm: float  # arcsec
    noise_level: float  # sky noise per pixel at 512 px, in units of the disk's D25 surface brightness
    softening: float  # asinh softening in units of the D25 surface brightness
    saturation: float  # surface brightness mapped to full scale, in units of the disk centre
    sky_gray: float  # grey level of the sky in the g, r, i PNGs
    sky_dark: float  # level of the sky in the colour JPEG
    brightness: float  # 1, or a small factor for [faint]
    colour_jitter: tuple = field(default=(1.0, 1.0, 1.0))
    elliptical_hlr_over_r25: float = 0.0
    elliptical_q: float = 1.0
    companion: dict = field(default_factory=dict)
    stars: list = field(default_factory=list)  # dicts: x, y (arcsec from centre), flux, colour
    dust_tau: float = 0.0  # central optical depth (r band) of the dust lane of an edge-on disk
    dust_side: float = 1.0  # which side of the major axis the near (obscuring) half lies on
    frame: float = 1.0  # field of view over 2 x D25 (truth.csv: fov_arcsec, whatever the pixel count)
    centre_offset: tuple = (0.0, 0.0)  # galaxy centre, fraction of the field (x, y)
    psf_beta: float = 3.0
    psf_shear: tuple = (0.0, 0.0)  # g1, g2
    gradient: tuple = (0.0, 0.0)  # sky gradient (x, y) across the field, units of the sky noise
    gamma: float = 1.0
    jpeg_quality: int = JPEG_QUALITY
    composite: tuple = (1.0, 1.0, 1.0)  # scale of the g, r, i channels of the colour composite
    corners: dict = field(default_factory=dict)  # angle, half_side (fraction of the side), gray, colour fill
    neighbour: dict = field(default_factory=dict)  # a galaxy beside the disk (not overlapping it), as companion
    lopsided: dict = field(default_factory=dict)  # fraction, scale, offset_over_h, angle of a displaced disk
    field_sources: list = field(default_factory=list)  # dicts: x, y (fraction of field), flux, size, q, angle

    @property
    def b_a(self):
        """Axial ratio a catalog would record (from the true shape, not measured)."""
        if self.elliptical:
            return self.elliptical_q
        cos_i = math.cos(math.radians(self.true_inc))
        sin_i = math.sin(math.radians(self.true_inc))
        return math.sqrt(cos_i**2 + (self.thickness * sin_i) ** 2)

    def catalog_row(self):
        flagged = self.label != "A"
        row = {
            "pgc": self.pgc,
            "ra": round(self.ra, 4),
            "dec": round(self.dec, 4),
            "d25": self.d25,
            "b_a": round(self.b_a, 2),
            "pa": self.catalog_pa,
            "ty": -5.0 if self.elliptical else 3.0,
            "type": "E" if self.elliptical else "Sb",
            "fon": "F" if self.label == "F" else "",
            "inc": 0 if flagged else int(min(90, max(45, round(self.true_inc)))),
            "inc_e": 0 if flagged else self.inc_e,
            "inc_flg": 1 if flagged else 0,
            "inc_n": self.inc_n,
            "inc_note": "[face_on]" if self.label == "F" else (f"[{self.cause}]" if self.cause else ""),
        }
        return row

    def truth_row(self):
        return {
            "pgc": self.pgc,
            "index": self.index,
            "label": self.label,
            "cause": self.cause,
            "true_inc": "" if self.elliptical else f"{self.true_inc:.2f}",
            "b_a": f"{self.b_a:.4f}",
            "thickness": f"{self.thickness:.4f}",
            "sky_pa": f"{self.sky_pa:.2f}",
            "catalog_pa": f"{self.catalog_pa:.1f}",
            "misalignment": f"{self._misalignment():.2f}",
            "d25": f"{self.d25:.2f}",
            "bulge_fraction": f"{self.bulge_fraction:.3f}",
            "bulge_n": f"{self.bulge_n:g}",
            "bar": int(self.has_bar),
            "n_arms": self.n_arms,
            "pitch": f"{self.pitch:.1f}",
            "psf_fwhm": f"{self.psf_fwhm:.2f}",
            "noise_level": f"{self.noise_level:.3f}",
            "brightness": f"{self.brightness:.3f}",
            "n_stars": len(self.stars),
            "frame": f"{self.frame:.3f}",
            "psf_beta": f"{self.psf_beta:.2f}",
            "softening": f"{self.softening:.3f}",
            "gamma": f"{self.gamma:.3f}",
            "jpeg_quality": self.jpeg_quality,
            "corners": int(bool(self.corners)),
            "n_field": len(self.field_sources),
            "fov_arcsec": f"{4.0 * self.d25 * 30.0 * self.frame:.2f}",
        }

    def _misalignment(self):
        """Angle of the major axis in the rotated image (counter-clockwise, degrees)."""
        return ((self.sky_pa - self.catalog_pa + 90.0) % 180.0) - 90.0


TRUTH_COLUMNS = (
    "pgc",
    "index",
    "label",
    "cause",
    "true_inc",
    "b_a",
    "thickness",
    "sky_pa",
    "catalog_pa",
    "misalignment",
    "d25",
    "bulge_fraction",
    "bulge_n",
    "bar",
    "n_arms",
    "pitch",
    "psf_fwhm",
    "noise_level",
    "brightness",
    "n_stars",
    "frame",
    "psf_beta",
    "softening",
    "gamma",
    "jpeg_quality",
    "corners",
    "n_field",
    "fov_arcsec",
)


def galaxy_params(index, seed, pgc=None):
    """Draw the parameters of galaxy ``index`` from ``rng_for(seed, "synth", index)`` (no rendering)."""
    rng = rng_for(seed, "synth", index)
    label, cause = _category(seed, index)
    # Draw every quantity in a fixed order whatever the class, so that the streams of
    # different classes stay comparable and adding a class never shifts the others.
    inc_accepted = rng.uniform(44.5, 90.0)
    inc_face_on = rng.uniform(0.0, 40.0)
    inc_rejected = rng.uniform(20.0, 90.0)
    true_inc = {"A": inc_accepted, "F": inc_face_on, "J": inc_rejected}[label]
    sky_pa = rng.uniform(0.0, 180.0)
    catalog_pa = round((sky_pa + rng.normal(0.0, 2.0)) % 180.0, 1)
    d25 = round(float(np.exp(rng.uniform(np.log(0.6), np.log(3.0)))), 2)
    ra = rng.uniform(0.0, 360.0)
    dec = math.degrees(math.asin(rng.uniform(-1.0, 1.0)))
    inc_e = round(float(np.clip(rng.normal(3.0, 0.6), 1.5, 5.5)), 1)
    inc_n = int(rng.integers(3, 13))
    # Intrinsic thickness and bulges spread as in real spirals: this is what makes the
    # axial-ratio formula (fixed q0 = 0.2) fail for a good fraction of galaxies.
    thickness = _truncated_normal(rng, 0.22, 0.07, 0.08, 0.40)
    r25_over_h = rng.uniform(2.6, 4.4)
    bulge_fraction = rng.uniform(0.0, 0.6)
    bulge_n = float(SERSIC_INDICES[int(rng.integers(len(SERSIC_INDICES)))])
    bulge_hlr_over_h = rng.uniform(0.1, 0.6)
    bulge_q = rng.uniform(0.5, 1.0)
    has_bar = bool(rng.random() < 0.4)
    bar_fraction = rng.uniform(0.05, 0.2)
    bar_sigma_over_h = rng.uniform(0.35, 0.7)
    bar_q = rng.uniform(0.25, 0.4)
    bar_angle = rng.uniform(0.0, 180.0)
    arm_fraction = rng.uniform(0.15, 0.35)
    knot_fraction = rng.uniform(0.01, 0.04)
    n_arms = int((2, 2, 2, 3, 4)[int(rng.integers(5))])
    pitch = rng.uniform(10.0, 30.0)
    arm_phase = rng.uniform(0.0, 360.0)
    arm_inner_over_h = rng.uniform(0.3, 0.8)
    arm_outer_over_h = rng.uniform(2.8, 3.6)
    # The next eight quantities are redrawn from the observation stream (_draw_observation);
    # they are still drawn here so that the draws after them keep their order.
    psf_fwhm = rng.uniform(1.0, 1.6)
    noise_level = rng.uniform(0.4, 1.0)
    softening = rng.uniform(0.6, 1.5)
    saturation = rng.uniform(1.0, 3.0)
    sky_gray = rng.uniform(215.0, 245.0)
    sky_dark = rng.uniform(4.0, 18.0)
    colour_jitter = tuple(float(v) for v in rng.uniform(0.9, 1.1, size=3))
    faint_snr = rng.uniform(0.04, 0.2)  # [faint]: D25 brightness / sky noise (accepted: >= 0.5)
    elliptical_hlr_over_r25 = rng.uniform(0.2, 0.35)
    elliptical_q = rng.uniform(0.55, 1.0)
    companion = {
        "distance_over_r25": rng.uniform(0.6, 1.0),
        "angle": rng.uniform(0.0, 360.0),
        "flux_ratio": rng.uniform(0.6, 1.5),
        "h_ratio": rng.uniform(0.35, 0.7),
        "inc": rng.uniform(0.0, 85.0),
        "rotation": rng.uniform(0.0, 180.0),
    }
    n_stars = int(rng.poisson(1.5))
    star_draws = rng.random(size=(n_stars + 1, 5))
    dust_tau = rng.uniform(1.5, 4.0)
    dust_side = 1.0 if rng.random() < 0.5 else -1.0
    # A moderate foreground star near the disk's edge in about a quarter of the galaxies
    # that stay usable (drawn last so the draws above keep their order).
    edge_star_draw = rng.random(size=6)

    params = GalaxyParams(
        index=index,
        pgc=PGC_BASE + index if pgc is None else int(pgc),
        label=label,
        cause=cause,
        true_inc=float(true_inc),
        sky_pa=float(sky_pa),
        catalog_pa=float(catalog_pa),
        d25=d25,
        ra=float(ra),
        dec=float(dec),
        inc_e=inc_e,
        inc_n=inc_n,
        elliptical=cause == "not_spiral",
        thickness=float(thickness),
        r25_over_h=float(r25_over_h),
        bulge_fraction=float(bulge_fraction),
        bulge_n=bulge_n,
        bulge_hlr_over_h=float(bulge_hlr_over_h),
        bulge_q=float(bulge_q),
        has_bar=has_bar,
        bar_fraction=float(bar_fraction),
        bar_sigma_over_h=float(bar_sigma_over_h),
        bar_q=float(bar_q),
        bar_angle=float(bar_angle),
        arm_fraction=float(arm_fraction),
        knot_fraction=float(knot_fraction),
        n_arms=n_arms,
        pitch=float(pitch),
        arm_phase=float(arm_phase),
        arm_inner_over_h=float(arm_inner_over_h),
        arm_outer_over_h=float(arm_outer_over_h),
        psf_fwhm=float(psf_fwhm),
        noise_level=float(noise_level),
        softening=float(softening),
        saturation=float(saturation),
        sky_gray=float(sky_gray),
        sky_dark=float(sky_dark),
        brightness=1.0,
        colour_jitter=colour_jitter,
        elliptical_hlr_over_r25=float(elliptical_hlr_over_r25),
        elliptical_q=float(elliptical_q),
        companion=companion if cause == "multiple" else {},
        dust_tau=float(dust_tau),
        dust_side=dust_side,
    )
    params.stars = _place_stars(params, star_draws, edge_star_draw)
    _draw_observation(params, rng_for(seed, "synth-observation", index))
    if cause == "faint":
        params.brightness = float(faint_snr * params.noise_level)
    _draw_surroundings(params, rng_for(seed, "synth-surroundings", index))
    return params


def _truncated_normal(rng, mean, sd, low, high):
    for _ in range(100):
        value = rng.normal(mean, sd)
        if low <= value <= high:
            return float(value)
    return float(np.clip(mean, low, high))


def _draw_range(rng, name):
    low, high, kind = OBSERVATION_RANGES[name]
    if kind == "log":
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    if kind == "int":
        return int(rng.integers(low, high + 1))
    if kind == "choice":
        return float(low[int(rng.integers(len(low)))])
    return float(rng.uniform(low, high))


def _draw_observation(params, rng):
    """How the galaxy is observed and rendered, from its own stream (fixed draw order)."""
    params.frame = _draw_range(rng, "frame")
    centring_sd = OBSERVATION_RANGES["centring"][1] / 2.0
    params.centre_offset = tuple(float(v) for v in np.clip(rng.normal(0.0, centring_sd, 2), -0.08, 0.08))
    params.psf_fwhm = _draw_range(rng, "psf_fwhm")
    params.psf_beta = _draw_range(rng, "psf_beta")
    shear, shear_angle = _draw_range(rng, "psf_shear"), rng.uniform(0.0, np.pi)
    params.psf_shear = (float(shear * np.cos(2 * shear_angle)), float(shear * np.sin(2 * shear_angle)))
    params.noise_level = _draw_range(rng, "noise_level")
    gradient, gradient_angle = _draw_range(rng, "gradient"), rng.uniform(0.0, 2 * np.pi)
    params.gradient = (float(gradient * np.cos(gradient_angle)), float(gradient * np.sin(gradient_angle)))
    params.softening = _draw_range(rng, "softening")
    params.gamma = _draw_range(rng, "gamma")
    params.saturation = _draw_range(rng, "saturation")
    params.sky_gray = _draw_range(rng, "sky_gray")
    params.sky_dark = _draw_range(rng, "sky_dark")
    low, high, _ = OBSERVATION_RANGES["colour_balance"]
    params.colour_jitter = tuple(float(v) for v in rng.uniform(low, high, size=3))
    params.jpeg_quality = _draw_range(rng, "jpeg_quality")
    params.composite = (_draw_range(rng, "composite_g"), 1.0, _draw_range(rng, "composite_i"))
    corner_draws = rng.random(5)
    if corner_draws[0] < OBSERVATION_RANGES["corner_probability"][0]:
        params.corners = {
            "angle": float(5.0 + 40.0 * corner_draws[1]),
            "half_side": float(0.55 + 0.15 * corner_draws[2]),
            "gray": 0 if corner_draws[3] < 0.6 else 255,
            "colour": 255 if corner_draws[4] < 0.5 else 0,
        }
    n_field = int(rng.poisson(OBSERVATION_RANGES["field_sources"][0]))
    draws = rng.random(size=(n_field, 7))
    params.field_sources = [
        {
            "x": float(u[0] - 0.5),
            "y": float(u[1] - 0.5),
            # Mostly faint (as in real cutouts): log-flux weighted towards the faint end over 2.7
            # decades, in units of the D25 brightness x PSF area.
            "flux": float(np.exp(np.log(0.3) + u[2] ** 2 * np.log(500.0))),
            "galaxy": bool(u[3] < 0.4),
            "size": float(0.3 + 1.2 * u[4]),  # arcsec (background galaxies only)
            "q": float(0.3 + 0.7 * u[5]),
            "angle": float(np.pi * u[6]),
        }
        for u in draws
    ]


#: Scale height over scale radius of GalSim's sech^2 disk per unit of q0: a disk's edge-on
#: second-moment axial ratio is sqrt(<z^2> / <x^2>) = sqrt((pi^2 h_z^2 / 12) / (3 h^2)) = (pi / 6) h_z / h.
HZ_PER_Q0 = 6.0 / math.pi

#: Probabilities of what surrounds a galaxy (any class but the one the item would define).
SURROUNDINGS = {
    "bright_star": 0.35,  # a saturated star off the disk (diffraction spikes; masked core in 40%)
    "neighbour": 0.25,  # a galaxy beside the disk, not overlapping it
    "lopsided": 0.6,  # part of the disk light displaced in the disk plane
}


def _ellipse_radius(params, angle):
    """Radius (arcsec) of the disk's D25 ellipse in the direction ``angle`` (radians, image frame)."""
    r25 = params.d25 * 30.0
    q = max(params.b_a, 0.1)
    phi = angle - math.radians(params._misalignment())
    return r25 * q / math.sqrt((q * math.cos(phi)) ** 2 + math.sin(phi) ** 2)


def _draw_surroundings(params, rng):
    """Bright star, neighbour and lopsidedness, from the galaxy's own stream (fixed draw order)."""
    r25 = params.d25 * 30.0
    half_fov = 2.0 * r25 * params.frame
    u = rng.random(12)
    if u[0] < SURROUNDINGS["bright_star"] and params.cause != "star":
        angle = 2.0 * math.pi * u[1]
        radius = min(_ellipse_radius(params, angle) * (1.35 + 0.8 * u[2]) + 2.0 * params.psf_fwhm, 1.3 * half_fov)
        fov = 4.0 * r25 * params.frame
        params.stars.append(
            {
                "x": float(radius * math.cos(angle) + params.centre_offset[0] * fov),
                "y": float(radius * math.sin(angle) + params.centre_offset[1] * fov),
                "flux": float(np.exp(np.log(300.0) + u[3] * np.log(100.0))),
                "colour": (0.6 + 0.6 * float(u[4]), 1.0, 0.9 + 0.3 * float(u[5])),
                "spikes": float(180.0 * u[6]),
                "masked_core": bool(u[7] < 0.4),
            }
        )
    v = rng.random(8)
    if v[0] < SURROUNDINGS["neighbour"] and params.cause != "multiple" and not params.elliptical:
        h_ratio = 0.15 + 0.4 * float(v[1])
        angle = 2.0 * math.pi * float(v[2])
        distance = _ellipse_radius(params, angle) + (1.1 * h_ratio + 0.1 + 0.6 * float(v[3])) * r25
        params.neighbour = {
            "distance_over_r25": float(distance / r25),
            "angle": float(math.degrees(angle)),
            "flux_ratio": float(0.1 + 0.8 * v[4]),
            "h_ratio": float(h_ratio),
            "inc": float(85.0 * v[5]),
            "rotation": float(180.0 * v[6]),
        }
    w = rng.random(5)
    if w[0] < SURROUNDINGS["lopsided"] and not params.elliptical:
        params.lopsided = {
            "fraction": float(0.05 + 0.2 * w[1]),
            "scale": float(0.5 + 0.4 * w[2]),
            "offset_over_h": float(0.3 + 0.9 * w[3]),
            "angle": float(360.0 * w[4]),
        }
    if params.cause == "star":
        params.stars[-1]["spikes"] = float(180.0 * u[6])
        params.stars[-1]["masked_core"] = bool(u[7] < 0.4)


def _place_stars(params, draws, edge_draw=None):
    """Foreground stars: mostly off the disk, sometimes one near its edge; a bright one on it for ``[star]``.

    Positions are in arcsec from the image centre, in the (rotated) image frame; fluxes in
    units of the disk's central surface brightness times PSF area.
    """
    r25 = params.d25 * 30.0
    half_fov = 2.0 * r25
    q = max(params.b_a, 0.15)
    stars = []
    for u_x, u_y, u_flux, u_colour1, u_colour2 in draws[:-1]:
        x = (2.0 * u_x - 1.0) * half_fov * 0.95
        y = (2.0 * u_y - 1.0) * half_fov * 0.95
        # Keep ordinary stars outside the disk's 1.15 x D25 ellipse: move them outward radially.
        scale = math.hypot(x / (1.15 * r25), y / (1.15 * r25 * q))
        if scale < 1.0:
            if scale < 1e-3:
                x, y = 1.15 * r25, 0.0
            else:
                x, y = x / scale, y / scale
        stars.append(
            {
                "x": float(np.clip(x, -half_fov * 0.95, half_fov * 0.95)),
                "y": float(np.clip(y, -half_fov * 0.95, half_fov * 0.95)),
                "flux": float(np.exp(np.log(0.5) + u_flux * np.log(100.0))),
                "colour": (0.5 + 0.8 * float(u_colour1), 1.0, 0.8 + 0.5 * float(u_colour2)),
            }
        )
    if edge_draw is not None and params.cause != "star" and edge_draw[0] < 0.25:
        _, u_r, u_angle, u_flux, u_colour1, u_colour2 = edge_draw
        radius = (0.7 + 0.5 * float(u_r)) * r25
        angle = 2.0 * math.pi * float(u_angle)
        stars.append(
            {
                "x": float(radius * math.cos(angle)),
                "y": float(radius * math.sin(angle) * max(q, 0.4)),
                "flux": float(np.exp(np.log(20.0) + u_flux * np.log(20.0))),
                "colour": (0.6 + 0.6 * float(u_colour1), 1.0, 0.9 + 0.3 * float(u_colour2)),
            }
        )
    if params.cause == "star":
        u_r, u_angle, u_flux, u_colour1, u_colour2 = draws[-1]
        radius = (0.3 + 0.45 * float(u_r)) * r25
        angle = 2.0 * math.pi * float(u_angle)
        stars.append(
            {
                "x": float(radius * math.cos(angle)),
                "y": float(radius * math.sin(angle) * q),
                "flux": float(np.exp(np.log(2000.0) + u_flux * np.log(10.0))),
                "colour": (0.6 + 0.6 * float(u_colour1), 1.0, 0.9 + 0.3 * float(u_colour2)),
            }
        )
    return stars


# -- rendering ---------------------------------------------------------------------------------


def _import_galsim():
    try:
        import galsim
    except ImportError:
        raise StageError(
            "GalSim is not installed in this Python; install the synth extra: pip install 'inclinet[synth]'"
        ) from None
    return galsim


def _gsparams():
    galsim = _import_galsim()

    # Slightly looser than GalSim's defaults: invisible after an 8-bit asinh stretch, and
    # several times faster for the small FFTs of 64-128 px images.
    return galsim.GSParams(folding_threshold=1e-2, maxk_threshold=3e-3)


def _arm_points(params, h, rng):
    """Centres, widths and weights of the Gaussians tracing the spiral arms (face-on, arcsec)."""
    n_per_arm = 24
    tan_pitch = math.tan(math.radians(params.pitch))
    r_in = params.arm_inner_over_h * h
    if params.has_bar:
        r_in = max(r_in, 2.0 * params.bar_sigma_over_h * h)
    r_out = params.arm_outer_over_h * h
    radii = np.linspace(r_in, r_out, n_per_arm)
    points = []
    for arm in range(params.n_arms):
        theta0 = math.radians(params.arm_phase) + 2.0 * math.pi * arm / params.n_arms
        theta = theta0 + np.log(radii / r_in) / tan_pitch
        jitter = rng.normal(0.0, 0.04, size=radii.shape) * radii
        x = radii * np.cos(theta) + jitter * np.cos(theta + math.pi / 2)
        y = radii * np.sin(theta) + jitter * np.sin(theta + math.pi / 2)
        sigma = 0.08 * radii + 0.12 * h
        weight = radii * np.exp(-radii / h) * rng.uniform(0.6, 1.4, size=radii.shape)
        points.append(np.stack([x, y, sigma, weight], axis=1))
    return np.concatenate(points)


def _knot_points(params, arm_points, h, rng):
    n_knots = int(rng.integers(8, 40))
    choice = rng.choice(len(arm_points), size=n_knots, p=arm_points[:, 3] / arm_points[:, 3].sum())
    base = arm_points[choice]
    x = base[:, 0] + rng.normal(0.0, 1.0, n_knots) * 0.5 * base[:, 2]
    y = base[:, 1] + rng.normal(0.0, 1.0, n_knots) * 0.5 * base[:, 2]
    sigma = rng.uniform(0.05, 0.12, n_knots) * h
    weight = rng.exponential(1.0, n_knots)
    return np.stack([x, y, sigma, weight], axis=1)


def _disk_plane(galsim, points, flux, cos_i, rotation, gsparams):
    """A sum of Gaussians in the disk plane, projected by the inclination and rotated."""
    blobs = [
        galsim.Gaussian(sigma=float(s), flux=float(w), gsparams=gsparams).shift(float(x), float(y))
        for x, y, s, w in points
    ]
    pattern = galsim.Add(blobs).withFlux(float(flux))
    return pattern.transform(1.0, 0.0, 0.0, cos_i).withFlux(float(flux)).rotate(rotation * galsim.degrees)


def _draw_star(galsim, profile, star, size, pixel_scale, fwhm):
    """Draw a star (flux per pixel) into a full-size array, on a stamp around it.

    The PSF is evaluated in real space on a 4x finer grid and summed into pixels: an FFT
    draw of a star thousands of times brighter than the sky rings along the pixel axes.
    """
    oversample = 4
    x = (size + 1) / 2.0 + star["x"] / pixel_scale
    y = (size + 1) / 2.0 + star["y"] / pixel_scale
    half = int(math.ceil(min(25.0 * fwhm / pixel_scale, size)))
    ix, iy = int(round(x)), int(round(y))
    side = 2 * half + 1
    fine = galsim.ImageD(side * oversample, side * oversample, scale=pixel_scale / oversample)
    centre = galsim.PositionD((x - (ix - half - 0.5)) * oversample + 0.5, (y - (iy - half - 0.5)) * oversample + 0.5)
    profile.drawImage(image=fine, center=centre, method="no_pixel")
    # Fine pixels hold flux per fine pixel: their sum over a block is the flux of the pixel.
    stamp = fine.array.reshape(side, oversample, side, oversample).sum(axis=(1, 3))
    full = np.zeros((size, size))
    # Stamp pixel (0, 0) is image pixel (ix - half, iy - half), 1-based as in GalSim.
    x0, y0 = ix - half - 1, iy - half - 1
    xs, ys = max(x0, 0), max(y0, 0)
    xe, ye = min(x0 + side, size), min(y0 + side, size)
    if xs < xe and ys < ye:
        full[ys:ye, xs:xe] = stamp[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return full


def _spikes(star, flux, size, pixel_scale, fwhm):
    """Diffraction spikes of a bright star (flux per pixel): a cross of thin exponential streaks.

    3% of the star's flux, along two perpendicular directions at the star's ``spikes`` angle,
    longer for brighter stars.
    """
    x0 = (size - 1) / 2.0 + star["x"] / pixel_scale
    y0 = (size - 1) / 2.0 + star["y"] / pixel_scale
    length = fwhm * math.sqrt(star["flux"] / 300.0) / pixel_scale
    width = max(0.35 * fwhm / pixel_scale, 0.5)
    yy, xx = np.indices((size, size), dtype=np.float64)
    xx -= x0
    yy -= y0
    image = np.zeros((size, size))
    for angle in (star["spikes"], star["spikes"] + 90.0):
        theta = math.radians(angle)
        along = xx * math.cos(theta) + yy * math.sin(theta)
        across = -xx * math.sin(theta) + yy * math.cos(theta)
        image += np.exp(-np.abs(along) / length - 0.5 * (across / width) ** 2)
    # Normalise by the analytic integral of both streaks: 2 x (2 L) x sqrt(2 pi) w.
    return image * 0.03 * flux / (4.0 * length * math.sqrt(2.0 * math.pi) * width)


def _dust_lane(params, size, pixel_scale, h, offset=(0.0, 0.0)):
    """Optical depth map (r band) of the dust lane of a disk seen at more than 60 deg, or None.

    A thin dust layer in the disk plane: strongest along the major axis, offset towards the
    near side as the disk tilts away from edge-on, blurred by the PSF like the light it dims.
    """
    if params.elliptical or params.true_inc <= 60.0:
        return None
    from scipy import ndimage

    cos_i = math.cos(math.radians(params.true_inc))
    tau0 = params.dust_tau * ((params.true_inc - 60.0) / 30.0) ** 1.5
    coords = (np.arange(size) - (size - 1) / 2.0) * pixel_scale
    y, x = np.meshgrid(coords, coords, indexing="ij")  # GalSim orientation: row index is y
    x, y = x - offset[0] * pixel_scale, y - offset[1] * pixel_scale
    angle = math.radians(params._misalignment())
    along = x * math.cos(angle) + y * math.sin(angle)
    across = -x * math.sin(angle) + y * math.cos(angle)
    width = 0.5 * params.thickness * HZ_PER_Q0 * h + 0.25 * h * cos_i
    offset = params.dust_side * 0.15 * h * cos_i
    tau = tau0 * np.exp(-np.abs(along) / (1.5 * h)) * np.exp(-0.5 * ((across - offset) / width) ** 2)
    sigma_pixels = params.psf_fwhm / 2.3548 / pixel_scale
    return ndimage.gaussian_filter(tau, sigma_pixels, mode="constant") if sigma_pixels > 0.3 else tau


def render_galaxy(params, size, seed):
    """Render one galaxy: returns ``({"g": L, "r": L, "i": L} uint8 (S, S) arrays, rgb uint8 (S, S, 3))``."""
    galsim = _import_galsim()

    gsparams = _gsparams()
    size = int(size)
    r25 = params.d25 * 30.0  # arcsec
    pixel_scale = 4.0 * r25 * params.frame / size  # field of view 2 x D25 x frame
    h = r25 / params.r25_over_h
    inc = params.true_inc
    cos_i = max(math.cos(math.radians(inc)), 0.02)
    sin_i = math.sin(math.radians(inc))
    rotation = params._misalignment()
    g1, g2 = params.psf_shear
    psf = galsim.Moffat(
        beta=params.psf_beta, fwhm=params.psf_fwhm, trunc=8.0 * params.psf_fwhm, gsparams=gsparams
    ).shear(g1=g1, g2=g2)
    star_psf = galsim.Moffat(beta=params.psf_beta, fwhm=params.psf_fwhm).shear(g1=g1, g2=g2)
    # The galaxy's centre in the frame (pixels from the centre; GalSim's y is up).
    offset = (params.centre_offset[0] * size, params.centre_offset[1] * size)
    # Face-on central surface brightness of the disk is 1 (times ``brightness``).
    disk_plane_flux = 2.0 * math.pi * h * h * params.brightness
    components = {}  # the galaxy itself: dust dims these
    neighbours = {}  # a second galaxy

    def draw(obj):
        image = galsim.Convolve(obj, psf).drawImage(
            nx=size, ny=size, scale=pixel_scale, dtype=np.float64, offset=offset
        )
        return image.array

    def shoot(obj, key, n_photons):
        image = galsim.Convolve(obj, psf).drawImage(
            nx=size,
            ny=size,
            scale=pixel_scale,
            dtype=np.float64,
            method="phot",
            n_photons=n_photons,
            rng=galsim.BaseDeviate(derive_seed(seed, "synth-photons", params.index, key)),
            poisson_flux=False,
            offset=offset,
        )
        return image.array

    # Photon count grows with the number of pixels so the arm texture stays smooth at every size.
    n_photons = int(np.clip(size * size * 1.2, 20_000, 400_000))
    structure_rng = rng_for(seed, "synth-structure", params.index)
    if params.elliptical:
        hlr = params.elliptical_hlr_over_r25 * r25
        elliptical = galsim.DeVaucouleurs(half_light_radius=hlr, flux=disk_plane_flux, gsparams=gsparams)
        components["bulge"] = draw(elliptical.shear(q=params.elliptical_q, beta=rotation * galsim.degrees))
    else:
        smooth_fraction = (
            1.0 - params.arm_fraction - params.knot_fraction - (params.bar_fraction if params.has_bar else 0.0)
        )
        hz_over_h = params.thickness * HZ_PER_Q0
        lop = params.lopsided
        lop_fraction = lop.get("fraction", 0.0)
        disk = galsim.InclinedExponential(
            inclination=inc * galsim.degrees,
            scale_radius=h,
            scale_h_over_r=hz_over_h,
            flux=disk_plane_flux * smooth_fraction * (1.0 - lop_fraction),
            gsparams=gsparams,
        )
        if lop:
            # Part of the disk light in a smaller disk displaced in the disk plane (projected
            # along the minor axis by cos i): the m = 1 asymmetry most spirals show.
            shift = lop["offset_over_h"] * h
            phase = math.radians(lop["angle"])
            displaced = galsim.InclinedExponential(
                inclination=inc * galsim.degrees,
                scale_radius=h * lop["scale"],
                scale_h_over_r=hz_over_h / lop["scale"],
                flux=disk_plane_flux * smooth_fraction * lop_fraction,
                gsparams=gsparams,
            ).shift(shift * math.cos(phase), shift * math.sin(phase) * cos_i)
            disk = disk + displaced
        components["disk"] = draw(disk.rotate(rotation * galsim.degrees))
        bulge_flux = disk_plane_flux * params.bulge_fraction / (1.0 - params.bulge_fraction)
        bulge_q = math.sqrt(cos_i**2 + (params.bulge_q * sin_i) ** 2)
        bulge = galsim.Sersic(
            n=params.bulge_n,
            half_light_radius=params.bulge_hlr_over_h * h,
            flux=max(bulge_flux, 1e-6),
            gsparams=gsparams,
        ).shear(q=bulge_q, beta=rotation * galsim.degrees)
        bulge_like = [bulge]
        if params.has_bar:
            bar = galsim.Gaussian(
                sigma=params.bar_sigma_over_h * h, flux=disk_plane_flux * params.bar_fraction, gsparams=gsparams
            ).shear(q=params.bar_q, beta=params.bar_angle * galsim.degrees)
            bar = bar.transform(1.0, 0.0, 0.0, cos_i).withFlux(disk_plane_flux * params.bar_fraction)
            bulge_like.append(bar.rotate(rotation * galsim.degrees))
        components["bulge"] = draw(galsim.Add(bulge_like))
        # Arms and knots have no thickness of their own: blur them by the projected scale height.
        thick_blur = galsim.Gaussian(sigma=max(0.9 * hz_over_h * h * sin_i, 1e-3), gsparams=gsparams)
        arm_points = _arm_points(params, h, structure_rng)
        arms = _disk_plane(galsim, arm_points, disk_plane_flux * params.arm_fraction, cos_i, rotation, gsparams)
        components["arms"] = shoot(galsim.Convolve(arms, thick_blur), "arms", n_photons)
        knot_points = _knot_points(params, arm_points, h, structure_rng)
        knots = _disk_plane(galsim, knot_points, disk_plane_flux * params.knot_fraction, cos_i, rotation, gsparams)
        components["knots"] = shoot(galsim.Convolve(knots, thick_blur), "knots", max(n_photons // 4, 5_000))
        # A second galaxy: overlapping the disk for [multiple], beside it for a neighbour.
        for c in (params.companion, params.neighbour):
            if not c:
                continue
            distance = c["distance_over_r25"] * r25
            angle = math.radians(c["angle"])
            other = galsim.InclinedExponential(
                inclination=c["inc"] * galsim.degrees,
                scale_radius=h * c["h_ratio"],
                scale_h_over_r=0.15 * HZ_PER_Q0,
                flux=disk_plane_flux * c["flux_ratio"] * c["h_ratio"] ** 2,
                gsparams=gsparams,
            ).rotate(c["rotation"] * galsim.degrees)
            other_bulge = galsim.DeVaucouleurs(
                half_light_radius=0.3 * h * c["h_ratio"], flux=0.25 * other.flux, gsparams=gsparams
            )
            position = (distance * math.cos(angle), distance * math.sin(angle))
            for name, profile in (("disk", other), ("bulge", other_bulge)):
                image = draw(profile.shift(position))
                neighbours[name] = neighbours[name] + image if name in neighbours else image

    stars = np.zeros((3, size, size))
    masked = np.zeros((size, size), dtype=bool)  # saturated cores blanked by the pipeline
    for star in params.stars:
        flux = star["flux"] * params.psf_fwhm**2
        image = _draw_star(galsim, star_psf.withFlux(flux), star, size, pixel_scale, params.psf_fwhm)
        if star.get("masked_core"):
            masked |= image / (pixel_scale * pixel_scale) > 5.0 * params.saturation
        if "spikes" in star:
            image = image + _spikes(star, flux, size, pixel_scale, params.psf_fwhm)
        for band in range(3):
            stars[band] += image * star["colour"][band]

    # Surface brightness (flux per arcsec^2) per band, plus sky noise. The noise per pixel
    # grows with the number of pixels across the fixed field (smaller pixels, fewer photons).
    area = pixel_scale * pixel_scale
    i25 = math.exp(-params.r25_over_h)
    sigma = params.noise_level * i25 * size / 512.0
    noise_rng = rng_for(seed, "synth-noise", params.index)
    tau = _dust_lane(params, size, pixel_scale, h, offset)
    field_light = _field_sources(params, size, pixel_scale, i25)
    yy, xx = (np.indices((size, size)) - (size - 1) / 2.0) / size
    gradient = sigma * (params.gradient[0] * xx + params.gradient[1] * yy)
    surface = []
    for band in range(3):
        galaxy = np.zeros((size, size))
        for name, image in components.items():
            galaxy += image * BAND_WEIGHTS[name][band] * params.colour_jitter[band]
        if tau is not None:
            galaxy *= np.exp(-tau * DUST_BAND_FACTORS[band])
        total = stars[band] + galaxy
        for name, image in neighbours.items():
            total += image * BAND_WEIGHTS[name][band] * params.colour_jitter[band]
        total = total / area + field_light * params.colour_jitter[band] * (0.8, 1.0, 1.15)[band]
        surface.append(total + gradient + noise_rng.normal(0.0, sigma, size=(size, size)))

    softening = params.softening * i25
    full_scale = math.asinh(params.saturation / softening)
    gray = {}
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    for band, name in enumerate(GRAY_BANDS):
        stretched = np.arcsinh(surface[band] / softening) / full_scale
        stretched = np.sign(stretched) * np.power(np.abs(stretched), params.gamma)
        gray[name] = np.clip(np.rint(params.sky_gray * (1.0 - stretched)), 0, 255).astype(np.uint8)
        # Colour: R, G, B = i, r, g on a dark sky.
        channel = 2 - band
        rgb[:, :, channel] = np.clip(
            np.rint(params.sky_dark + (255.0 - params.sky_dark) * stretched * params.composite[band]), 0, 255
        )
    for array in gray.values():
        array[masked] = 255
    rgb[masked] = int(round(params.sky_dark))
    if params.corners:
        corners = _corner_mask(params.corners, size)
        for array in gray.values():
            array[corners] = params.corners["gray"]
        rgb[corners] = params.corners["colour"]
    # GalSim images are (y, x) with y up; flip so that image rows run top to bottom as in a file.
    gray = {name: np.ascontiguousarray(array[::-1]) for name, array in gray.items()}
    return gray, np.ascontiguousarray(rgb[::-1])


def _corner_mask(corners, size):
    """Pixels outside a square of half-side ``half_side x size`` rotated by ``angle``: a rotated cutout's corners."""
    yy, xx = np.indices((size, size)) - (size - 1) / 2.0
    angle = math.radians(corners["angle"])
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    return np.maximum(np.abs(u), np.abs(v)) > corners["half_side"] * size


def _field_sources(params, size, pixel_scale, i25):
    """Surface brightness of the faint field: stars and small background galaxies, PSF-blurred Gaussians.

    Drawn directly (not through GalSim) on a stamp around each source: they are many, small
    and faint, and only their look matters.
    """
    light = np.zeros((size, size))
    psf_sigma = params.psf_fwhm / 2.3548
    for source in params.field_sources:
        x = (size - 1) / 2.0 + source["x"] * size
        y = (size - 1) / 2.0 + source["y"] * size
        extent = source["size"] if source["galaxy"] else 0.0
        major = math.hypot(psf_sigma, extent) / pixel_scale
        minor = math.hypot(psf_sigma, extent * source["q"]) / pixel_scale
        half = int(math.ceil(4 * major)) + 1
        x0, x1 = max(int(x) - half, 0), min(int(x) + half + 1, size)
        y0, y1 = max(int(y) - half, 0), min(int(y) + half + 1, size)
        if x0 >= x1 or y0 >= y1:
            continue
        sy, sx = np.mgrid[y0:y1, x0:x1]
        dx, dy = sx - x, sy - y
        cos, sin = math.cos(source["angle"]), math.sin(source["angle"])
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        # Peak surface brightness: flux (units of i25 x PSF area) spread over the blurred area.
        peak = source["flux"] * i25 * (psf_sigma / pixel_scale) ** 2 / (major * minor)
        light[y0:y1, x0:x1] += peak * np.exp(-0.5 * ((u / major) ** 2 + (v / minor) ** 2))
    return light


def _save_image(path, array, **options):
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, **options)


def galaxy_files(output, pgc):
    """The four raw image paths of one galaxy under ``output``."""
    output = Path(output)
    return [output / naming.raw_image(pgc, band) for band in naming.BANDS]


def _truth_csv(params_list):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for params in params_list:
        writer.writerow(params.truth_row())
    return buffer.getvalue()


def _validate(n_galaxies, size):
    if isinstance(n_galaxies, bool) or not isinstance(n_galaxies, (int, np.integer)) or n_galaxies < 1:
        raise invalid("--n-galaxies", n_galaxies, "a positive integer")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise invalid("--size", size, "an integer number of pixels >= 16 (the originals use 512)")


def run(
    *, n_galaxies, output, size=config.DEFAULTS.synthetic_size, seed=0, shard=None, catalog_only=False, no_catalog=False
):
    """Render a synthetic universe (or one shard of it) and/or write its catalog.

    ``shard`` is ``"I/K"`` or ``(I, K)``; it selects ``shard_range(n_galaxies, I, K)`` and,
    unless ``catalog_only``, turns off writing the catalog. Returns a summary dict with
    ``rendered`` (count), ``indices`` (range), ``catalog`` (path or None), ``seconds``.
    """
    _validate(n_galaxies, size)
    if catalog_only and no_catalog:
        raise invalid("--catalog-only/--no-catalog", "both", "at most one of them")
    if shard is None:
        index, count = 1, 1
    elif isinstance(shard, str):
        index, count = parse_shard(shard)
    else:
        index, count = parse_shard(f"{shard[0]}/{shard[1]}")
    if not catalog_only:
        _import_galsim()  # fail before writing anything
    output = Path(output)
    start = time.perf_counter()
    ids = galaxy_ids(n_galaxies, seed)
    write_catalog_file = catalog_only or (shard is None and not no_catalog)
    catalog_path = None
    if write_catalog_file:
        params_list = [galaxy_params(k, seed, ids[k]) for k in range(n_galaxies)]
        catalog_path = output / CATALOG_FILE
        write_catalog(catalog_path, [p.catalog_row() for p in params_list])
        atomic_write_text(output / TRUTH_FILE, _truth_csv(params_list))
        check_outputs([catalog_path, output / TRUTH_FILE])

    indices = range(0) if catalog_only else shard_range(n_galaxies, index, count)
    written = []
    every = max(1, len(indices) // 10)
    for done, k in enumerate(indices, start=1):
        params = galaxy_params(k, seed, ids[k])
        gray, rgb = render_galaxy(params, size, seed)
        paths = galaxy_files(output, params.pgc)
        for band, path in zip(GRAY_BANDS, paths):
            _save_image(path, gray[band], format="PNG")
        _save_image(paths[3], rgb, format="JPEG", quality=params.jpeg_quality)
        written.extend(paths)
        if done % every == 0 or done == len(indices):
            logger.info("rendered %d/%d galaxies", done, len(indices))
    check_outputs(written)
    seconds = time.perf_counter() - start
    rate = len(indices) / seconds if seconds > 0 and len(indices) else 0.0
    logger.info(
        "synth: %d galaxies rendered (shard %d/%d, indices %d..%d of %d) at %d px in %.1f s (%.2f galaxies/s); "
        "catalog %s; seed %d",
        len(indices),
        index,
        count,
        indices.start if len(indices) else 0,
        indices.stop - 1 if len(indices) else -1,
        n_galaxies,
        size,
        seconds,
        rate,
        catalog_path if catalog_path else "not written",
        seed,
    )
    return {"rendered": len(indices), "indices": indices, "catalog": catalog_path, "seconds": seconds}


def add_arguments(parser):
    parser.add_argument(
        "--n-galaxies", "-n", type=int, required=True, help="number of galaxies in the universe (required)"
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        help="output directory: images under galaxies/, catalog.csv and truth.csv",
    )
    parser.add_argument(
        "--size",
        "-s",
        type=int,
        default=config.DEFAULTS.synthetic_size,
        help=f"image size in pixels (default {config.DEFAULTS.synthetic_size})",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/K",
        help="render only shard I of K (1-based); the catalog is then not written unless --catalog-only",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--catalog-only", action="store_true", help="write catalog.csv and truth.csv only, render nothing (fast)"
    )
    group.add_argument("--no-catalog", action="store_true", help="render images only, write no catalog")
    add_common_arguments(parser)
    return parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog="inclinet-synth",
        description="Render a synthetic universe of galaxies with known inclinations in the original raw layout.",
    )
    return add_arguments(parser)


def main(argv=None):
    parser = build_parser()

    def _run(args):
        run(
            n_galaxies=args.n_galaxies,
            output=args.output,
            size=args.size,
            seed=args.seed,
            shard=args.shard,
            catalog_only=args.catalog_only,
            no_catalog=args.no_catalog,
        )

    return run_main(parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
