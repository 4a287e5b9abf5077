"""The foreign universe: a second, independent renderer of spiral galaxies for benchmarks only.

Models trained on ``inclinet-synth`` are tested here on galaxies they were not drawn to
fit. Nothing is shared with the first renderer but the output format (raw layout,
catalog writer, file names): the physics, profiles, PSF, noise, stretch, colour mapping
and priors are all its own, in numpy/scipy.

What a galaxy is
  * a genuinely 3-D disk: face-on surface density on a polar-symmetric map (broken
    exponential radial profile, Ringermacher-Mead grand-design arms or sheared flocculent
    texture, HII knots) times an *exponential* vertical profile, integrated along each
    line of sight (Gauss-Legendre nodes in t = exp(-|z|/h_z), so thin and thick, face-on
    and edge-on disks are all integrated accurately); a thinner young layer and a dust
    layer are integrated along the same lines, the dust with the optical depth from each
    node to the observer, so dust lanes appear on the near side by themselves;
  * the intrinsic thickness q0 (the edge-on axial ratio of the old disk's second moments)
    drawn around 0.2 (0.08-0.40, thicker for bulgier galaxies);
  * bulges as oblate spheroids (intrinsic axis ratio 0.45-0.95) with a projected
    Hernquist profile (classical, de Vaucouleurs-like) or a Plummer profile (pseudo-bulge);
  * bars as 3-D Ferrers (n = 2) ellipsoids in the disk plane, projected exactly;
  * a Kolmogorov PSF (analytic atmospheric transfer function, slightly elliptical, width
    per band ~ lambda^-0.2) plus a broad scattered-light halo, applied in Fourier space;
  * foreground stars from a power-law magnitude count (saturating, with diffraction
    spikes), small background galaxies, sometimes a companion off the disk;
  * Poisson sky and source noise plus read noise in electrons, residual sky pedestal and
    gradient, a saturation level (saturated cores become white holes in some gray images,
    as in some real cutouts), and sometimes the blank corners of a rotated cutout;
  * gray PNGs: a stretch drawn per galaxy among asinh (softening in units of the sky
    noise of a 512-px cutout), signed log and power law, then a gamma, sky grey 190-242;
    colour JPEG: Lupton et al. (2004) colour-preserving asinh on the mean intensity with
    its own band scalings, dark sky with a small offset, JPEG quality 70-95.

Priors: inclinations isotropic (uniform in cos i); the field of view is 2 x the catalog
D25, whose error (0.07 dex) and a per-galaxy isophote make the size in the frame vary;
the centre is off by a few percent of the frame and the major axis off horizontal by a
Laplace-distributed position-angle error.

Labels (the original rules): accepted galaxies have the rounded inclination, 45-90; below
45 they are face-on (``F``, ``fon=F``, ``[face_on]``); rejected ones (``J``, ``inc_flg=1``)
have a rendered cause: ``[star]`` a saturated star on the disk, ``[multiple]`` an
overlapping galaxy of similar brightness, ``[faint]`` a galaxy lost in the noise of a
shallow exposure, ``[not_spiral]`` an elliptical.

    python bench/foreign_universe.py -o DIR -n 200 --size 256 --seed 7 [--jobs 2]

writes ``DIR/galaxies/pgc<id>_d25x2_rot_{g,r,i}.png`` and ``..._gri.sdss.jpg``,
``DIR/catalog.csv`` (the original pipe format) and ``DIR/truth.csv``. Ids start at
5,000,000. Every galaxy has its own random streams, so the output does not depend on
``--jobs`` and the same seed gives the same bytes.
"""

import argparse
import csv
import io
import logging
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inclinet import naming  # noqa: E402
from inclinet._helpers import rng_for  # noqa: E402
from inclinet.catalog import write_catalog  # noqa: E402
from inclinet.io import atomic_path, atomic_write_text, check_outputs  # noqa: E402

logger = logging.getLogger("foreign_universe")

PGC_BASE = 5_000_000
CATALOG_FILE = "catalog.csv"
TRUTH_FILE = "truth.csv"
REJECT_FRACTION = 0.18
REJECT_CAUSES = ("star", "multiple", "faint", "not_spiral")
REJECT_WEIGHTS = (0.3, 0.3, 0.2, 0.2)
#: Probability that a galaxy drawn below 45 deg stays face-on (otherwise it is redrawn
#: isotropically within 45-90): keeps the face-on class near 15% of the universe.
FACE_ON_KEEP = 0.55
NATIVE_PIXEL = 0.396  # arcsec: the survey's detector pixel
NATIVE_AREA = NATIVE_PIXEL**2
REFERENCE_SIZE = 512  # the originals' cutout size: the stretch is defined on its noise
WAVELENGTH = {"g": 4770.0, "r": 6231.0, "i": 7625.0}
BANDS = ("g", "r", "i")
#: Extinction A_band / A_r (a Milky-Way-like curve).
EXTINCTION = np.array([1.38, 1.00, 0.77])
#: Sky surface brightness of g and i relative to r (flux units of each band's scale).
SKY_RATIO = np.array([0.55, 1.0, 1.35])
#: Band flux ratios (g, r, i) of the stellar populations.
COLOURS = {
    "old": np.array([0.62, 1.0, 1.28]),
    "disk": np.array([0.80, 1.0, 1.12]),
    "young": np.array([1.20, 1.0, 0.82]),
    "knots": np.array([1.55, 1.0, 0.72]),
    "elliptical": np.array([0.58, 1.0, 1.32]),
}
KZ = 9.0  # the disk is integrated to |z| < KZ h_z
N_NODES = 12  # Gauss-Legendre nodes on each side of the mid-plane
MAP_CELLS = 160  # face-on map resolution (cells across 2 R_map)
N_ROWS = 4 * MAP_CELLS  # rows of the per-column resampled maps
CHUNK = 2048  # sky points integrated at once
TRUTH_COLUMNS = (
    "pgc",
    "index",
    "label",
    "cause",
    "true_inc",
    "q0",
    "hz_over_h",
    "b_a",
    "psf_fwhm",
    "pixel_scale",
    "fov_arcsec",
    "d25",
    "r25_over_h",
    "mu0_r",
    "bulge_bt",
    "bulge_kind",
    "bar",
    "arms",
    "dust_tau",
    "misalignment",
    "dx",
    "dy",
    "mirrored",
    "stretch",
    "gamma",
    "sky_gray",
    "jpeg_quality",
    "n_stars",
    "corners",
)


# -- parameters -----------------------------------------------------------------------------------


@dataclass
class ForeignGalaxy:
    """Everything drawn for one galaxy (angles in degrees, lengths in arcsec unless named)."""

    index: int
    pgc: int
    label: str  # "A", "F" or "J"
    cause: str
    inc: float
    q0: float  # edge-on second-moment axial ratio of the old disk
    h: float  # inner disk scale length (arcsec)
    h_out_ratio: float  # outer / inner scale length beyond the break
    break_radius: float  # in units of h
    r25: float  # isophotal radius (arcsec)
    d25_catalog: float  # arcmin
    mu0_r: float  # face-on central surface brightness of the disk, r (mag/arcsec^2)
    mu_sky_r: float
    sky_r: float  # r sky in electrons / arcsec^2
    read_noise: float  # electrons per native pixel
    saturation: float  # electrons per native pixel
    young_fraction: float
    young_thickness: float  # h_z(young) / h_z(old)
    arms: str  # "grand", "flocculent" or "mixed"
    n_arms: int
    rm_a: float
    rm_b: float
    rm_n: float
    arm_power: float
    arm_contrast: float
    knots: int
    bulge_bt: float
    bulge_kind: str  # "hernquist", "plummer" or "none"
    bulge_re_over_h: float
    bulge_q: float
    bar: bool
    bar_length: float  # semi-major axis / h
    bar_axes: tuple  # (b/a, c/a)
    bar_angle: float
    bar_fraction: float
    dust_tau: float  # face-on central optical depth in r
    dust_h_ratio: float
    dust_thickness: float  # h_z(dust) / h_z(old)
    psf_fwhm: float  # r band, arcsec
    psf_e: float
    psf_angle: float
    psf_halo: float
    psf_halo_ratio: float
    band_seeing: tuple
    misalignment: float
    mirrored: bool
    dx: float  # centre offset, fraction of the frame
    dy: float
    stretch: str
    softening: float  # in units of the 512-px sky noise
    mu_black: float  # r surface brightness mapped to black
    power: float
    gamma: float
    sky_gray: float
    colour_scale: tuple  # Lupton band scalings (g, r, i)
    lupton_q: float
    lupton_soft: float
    sky_dark: tuple
    jpeg_quality: int
    pedestal: float  # residual sky, fraction of the sky noise at 512 px
    gradient: tuple  # residual sky gradient across the frame, same units
    holes: bool
    corners: float  # 0 or the side of the rotated cutout in units of the frame
    corner_angle: float
    corner_white: bool
    ra: float
    dec: float
    pa: float
    inc_e: float
    inc_n: int
    stars: list = field(default_factory=list)  # (x, y) frame fractions, r magnitude, colour index
    background: list = field(default_factory=list)  # small galaxies: x, y, mag, size, q, angle, colour
    neighbour: dict = field(default_factory=dict)  # companion or overlapping galaxy
    elliptical_q: float = 1.0

    # -- derived --------------------------------------------------------------------------------
    @property
    def fov(self):
        """Field of view in arcsec: 2 x the catalog D25."""
        return 2.0 * self.d25_catalog * 60.0

    @property
    def hz(self):
        return self.q0 * math.sqrt(_radial_r2(self.h_out_ratio, self.break_radius)) * self.h / 2.0

    @property
    def b_a(self):
        if self.cause == "not_spiral":
            return self.elliptical_q
        c, s = math.cos(math.radians(self.inc)), math.sin(math.radians(self.inc))
        return math.sqrt(c * c + (self.q0 * s) ** 2)

    def catalog_row(self):
        flagged = self.label != "A"
        return {
            "pgc": self.pgc,
            "ra": round(self.ra, 4),
            "dec": round(self.dec, 4),
            "d25": round(self.d25_catalog, 2),
            "b_a": round(self.b_a, 2),
            "pa": round(self.pa, 1),
            "ty": -4.5 if self.cause == "not_spiral" else round(5.0 - 4.0 * self.bulge_bt / 0.5, 1),
            "type": "E" if self.cause == "not_spiral" else ("SBc" if self.bar else "Sc"),
            "fon": "F" if self.label == "F" else "",
            "inc": 0 if flagged else int(round(self.inc)),
            "inc_e": 0 if flagged else self.inc_e,
            "inc_flg": int(flagged),
            "inc_n": self.inc_n,
            "inc_note": "[face_on]" if self.label == "F" else (f"[{self.cause}]" if self.cause else ""),
        }

    def truth_row(self, size):
        return {
            "pgc": self.pgc,
            "index": self.index,
            "label": self.label,
            "cause": self.cause,
            "true_inc": "" if self.cause == "not_spiral" else f"{self.inc:.2f}",
            "q0": f"{self.q0:.4f}",
            "hz_over_h": f"{self.hz / self.h:.4f}",
            "b_a": f"{self.b_a:.4f}",
            "psf_fwhm": f"{self.psf_fwhm:.3f}",
            "pixel_scale": f"{self.fov / size:.4f}",
            "fov_arcsec": f"{self.fov:.2f}",
            "d25": f"{self.d25_catalog:.3f}",
            "r25_over_h": f"{self.r25 / self.h:.3f}",
            "mu0_r": f"{self.mu0_r:.2f}",
            "bulge_bt": f"{self.bulge_bt:.3f}",
            "bulge_kind": self.bulge_kind,
            "bar": int(self.bar),
            "arms": self.arms,
            "dust_tau": f"{self.dust_tau:.3f}",
            "misalignment": f"{self.misalignment:.2f}",
            "dx": f"{self.dx:.4f}",
            "dy": f"{self.dy:.4f}",
            "mirrored": int(self.mirrored),
            "stretch": self.stretch,
            "gamma": f"{self.gamma:.3f}",
            "sky_gray": f"{self.sky_gray:.1f}",
            "jpeg_quality": self.jpeg_quality,
            "n_stars": len(self.stars),
            "corners": f"{self.corners:.3f}",
        }


def _radial_profile(r_over_h, h_out_ratio, break_radius):
    """Face-on broken exponential (inner scale 1, outer h_out_ratio beyond the break), soft edge at 7 h."""
    r = np.asarray(r_over_h, dtype=np.float64)
    inner = np.exp(-r)
    outer = math.exp(-break_radius) * np.exp(-(r - break_radius) / h_out_ratio)
    # Smooth junction over ~0.3 h.
    w = 1.0 / (1.0 + np.exp(-(r - break_radius) / 0.15))
    return ((1.0 - w) * inner + w * outer) / (1.0 + np.exp(np.minimum((r - 7.0) / 0.3, 500.0)))


def _radial_r2(h_out_ratio, break_radius):
    """<R^2> / h^2 of the face-on radial profile (light-weighted)."""
    r = np.linspace(0.0, 9.0, 3601)
    p = _radial_profile(r, h_out_ratio, break_radius) * r
    return float(np.trapezoid(p * r * r, r) / np.trapezoid(p, r))


def _major_axis_r25(h_out_ratio, break_radius, mu0, inc, hz_over_h):
    """Radius (units of h) where the inclined disk's major axis reaches 24.3 mag/arcsec^2 in r.

    Catalog diameters are measured on the galaxy as seen: an inclined disk is brighter
    along its major axis (longer lines of sight), so it looks bigger than face-on.
    """
    inc = math.radians(min(inc, 89.9))
    ci, si = math.cos(inc), math.sin(inc)
    x = np.linspace(0.0, 7.5, 301)[:, None]
    z = np.linspace(-KZ, KZ, 361)[None, :] * hz_over_h  # units of h
    big_y = z * si / ci
    density = _radial_profile(np.hypot(x, big_y), h_out_ratio, break_radius)
    vertical = np.exp(-np.abs(z) / hz_over_h) / (2.0 * hz_over_h)
    surface = np.trapezoid(density * vertical, z, axis=1) / ci
    below = np.nonzero(surface < 10.0 ** (-0.4 * (24.3 - mu0)))[0]
    return float(x[below[0], 0]) if len(below) else 7.5


def _category(rng):
    """Label and cause, drawn independently for every galaxy."""
    if rng.random() < REJECT_FRACTION:
        return "J", REJECT_CAUSES[int(rng.choice(len(REJECT_CAUSES), p=REJECT_WEIGHTS))]
    return "A", ""


def draw_galaxy(index, seed, pgc=None):
    """Draw every parameter of galaxy ``index`` from ``rng_for(seed, "foreign", index)`` (no rendering)."""
    rng = rng_for(seed, "foreign", index)
    label, cause = _category(rng)
    # Isotropic orientations: cos i uniform. Face-on draws are partly redrawn in 45-90.
    cos_i = rng.uniform(0.0, 1.0)
    keep = rng.random() < FACE_ON_KEEP
    cos_redraw = rng.uniform(0.0, math.cos(math.radians(44.5)))
    inc = math.degrees(math.acos(cos_i))
    if label == "A" and round(inc) < 45 and not keep:
        inc = math.degrees(math.acos(cos_redraw))
    inc = min(inc, 89.9)
    if label == "A" and round(inc) < 45:
        label = "F"
    bulge_draw = rng.random()
    if bulge_draw < 0.2:
        bulge_kind, bulge_bt = "none", 0.0
    elif bulge_draw < 0.45:
        bulge_kind, bulge_bt = "plummer", rng.uniform(0.03, 0.2)
    else:
        bulge_kind, bulge_bt = "hernquist", rng.beta(2.0, 5.0) * 0.7 + 0.02
    # Thickness: bulgier galaxies are thicker (Sa ~0.25-0.3, Sc-Sd ~0.15-0.2).
    q0 = float(np.clip(rng.normal(0.17 + 0.35 * bulge_bt, 0.05), 0.08, 0.40))
    h_out_ratio = float(rng.choice([rng.uniform(0.45, 0.85), 1.0, rng.uniform(1.15, 1.6)], p=[0.55, 0.25, 0.2]))
    break_radius = rng.uniform(1.8, 3.2)
    mu0_r = float(np.clip(rng.normal(20.7, 0.55), 19.3, 22.3))
    mu_sky_r = rng.uniform(20.5, 21.2)
    hz_over_h = q0 * math.sqrt(_radial_r2(h_out_ratio, break_radius)) / 2.0
    r25_over_h = float(np.clip(_major_axis_r25(h_out_ratio, break_radius, mu0_r, inc, hz_over_h), 1.8, 6.0))
    d25_true = math.exp(rng.uniform(math.log(0.5), math.log(3.5)))  # arcmin
    r25 = d25_true * 30.0
    d25_catalog = d25_true * 10.0 ** rng.normal(0.0, 0.07)
    h = r25 / r25_over_h
    sky_r = rng.uniform(2500.0, 6000.0)
    read_noise = rng.uniform(4.0, 9.0)
    saturation = rng.uniform(1.0e5, 2.0e5)
    arms = str(rng.choice(["grand", "flocculent", "mixed"], p=[0.4, 0.3, 0.3]))
    n_arms = int(rng.choice([2, 2, 2, 3, 4]))
    rm_a = rng.uniform(0.6, 1.4)
    rm_b = rng.uniform(0.6, 1.6)
    rm_n = rng.uniform(1.5, 4.0)
    arm_power = rng.uniform(1.5, 5.0)
    arm_contrast = rng.uniform(0.1, 0.35)
    young_fraction = rng.uniform(0.15, 0.4)
    young_thickness = rng.uniform(0.3, 0.6)
    knots = int(rng.integers(10, 60))
    bulge_re_over_h = rng.uniform(0.12, 0.4)
    bulge_q = rng.uniform(0.45, 0.95)
    bar = bool(rng.random() < 0.35)
    bar_length = rng.uniform(0.8, 1.7)
    bar_axes = (rng.uniform(0.22, 0.45), rng.uniform(0.12, 0.25))
    bar_angle = rng.uniform(0.0, 180.0)
    bar_fraction = rng.uniform(0.05, 0.18)
    dust_tau = float(np.exp(rng.normal(math.log(1.2), 0.5)))
    dust_h_ratio = rng.uniform(1.0, 1.6)
    dust_thickness = rng.uniform(0.3, 0.6)
    psf_fwhm = float(np.clip(np.exp(rng.normal(math.log(1.35), 0.2)), 0.8, 2.6))
    psf_e = rng.uniform(0.0, 0.08)
    psf_angle = rng.uniform(0.0, 180.0)
    psf_halo = rng.uniform(0.02, 0.08)
    psf_halo_ratio = rng.uniform(3.0, 6.0)
    band_seeing = tuple(float(v) for v in rng.normal(1.0, 0.03, size=3))
    misalignment = float(np.clip(rng.laplace(0.0, 2.5), -15.0, 15.0))
    mirrored = bool(rng.random() < 0.5)
    dx, dy = (float(v) for v in np.clip(rng.standard_t(4, size=2) * 0.015, -0.08, 0.08))
    stretch = str(rng.choice(["asinh", "log", "power"], p=[0.55, 0.33, 0.12]))
    softening = rng.uniform(7.0, 16.0)
    mu_black = rng.uniform(18.8, 20.4)
    power = rng.uniform(0.55, 0.7)
    gamma = rng.uniform(0.85, 1.2)
    sky_gray = rng.uniform(228.0, 244.0) if rng.random() < 0.85 else rng.uniform(192.0, 228.0)
    colour_scale = (rng.uniform(1.25, 1.6), rng.uniform(0.95, 1.1), rng.uniform(0.75, 0.95))
    lupton_q = rng.uniform(6.0, 12.0)
    lupton_soft = rng.uniform(6.0, 12.0)
    sky_dark = tuple(float(v) for v in (rng.uniform(1.5, 5.0), rng.uniform(0.5, 3.5), rng.uniform(1.0, 4.5)))
    jpeg_quality = int(rng.integers(70, 96))
    pedestal = rng.normal(0.0, 0.15)
    gradient = (rng.normal(0.0, 0.25), rng.normal(0.0, 0.25))
    holes = bool(rng.random() < 0.4)
    corners = rng.uniform(1.12, 1.35) if rng.random() < 0.2 else 0.0
    corner_angle = rng.uniform(5.0, 40.0) * (1 if rng.random() < 0.5 else -1)
    corner_white = bool(rng.random() < 0.6)
    ra = rng.uniform(0.0, 360.0)
    dec = math.degrees(math.asin(rng.uniform(-0.3, 1.0)))
    pa = rng.uniform(0.0, 180.0)
    inc_e = round(float(np.clip(rng.gamma(4.0, 0.8), 1.0, 8.0)), 1)
    inc_n = int(rng.integers(3, 9))
    elliptical_q = rng.uniform(0.6, 1.0)
    star_density = math.exp(rng.uniform(math.log(1.0), math.log(5.0)))  # per arcmin^2 to r = 23
    galaxy_density = rng.uniform(0.5, 2.5)
    neighbour_draw = rng.random(size=8)

    g = ForeignGalaxy(
        index=index,
        pgc=PGC_BASE + index if pgc is None else int(pgc),
        label=label,
        cause=cause,
        inc=inc,
        q0=q0,
        h=h,
        h_out_ratio=h_out_ratio,
        break_radius=break_radius,
        r25=r25,
        d25_catalog=d25_catalog,
        mu0_r=mu0_r,
        mu_sky_r=mu_sky_r,
        sky_r=sky_r,
        read_noise=read_noise,
        saturation=saturation,
        young_fraction=young_fraction,
        young_thickness=young_thickness,
        arms=arms,
        n_arms=n_arms,
        rm_a=rm_a,
        rm_b=rm_b,
        rm_n=rm_n,
        arm_power=arm_power,
        arm_contrast=arm_contrast,
        knots=knots,
        bulge_bt=bulge_bt,
        bulge_kind=bulge_kind,
        bulge_re_over_h=bulge_re_over_h,
        bulge_q=bulge_q,
        bar=bar,
        bar_length=bar_length,
        bar_axes=bar_axes,
        bar_angle=bar_angle,
        bar_fraction=bar_fraction,
        dust_tau=dust_tau,
        dust_h_ratio=dust_h_ratio,
        dust_thickness=dust_thickness,
        psf_fwhm=psf_fwhm,
        psf_e=psf_e,
        psf_angle=psf_angle,
        psf_halo=psf_halo,
        psf_halo_ratio=psf_halo_ratio,
        band_seeing=band_seeing,
        misalignment=misalignment,
        mirrored=mirrored,
        dx=dx,
        dy=dy,
        stretch=stretch,
        softening=softening,
        mu_black=mu_black,
        power=power,
        gamma=gamma,
        sky_gray=sky_gray,
        colour_scale=colour_scale,
        lupton_q=lupton_q,
        lupton_soft=lupton_soft,
        sky_dark=sky_dark,
        jpeg_quality=jpeg_quality,
        pedestal=pedestal,
        gradient=gradient,
        holes=holes,
        corners=corners,
        corner_angle=corner_angle,
        corner_white=corner_white,
        ra=ra,
        dec=dec,
        pa=pa,
        inc_e=inc_e,
        inc_n=inc_n,
        elliptical_q=elliptical_q,
    )
    if cause == "faint":
        # A shallow exposure of a low-surface-brightness disk: lost in the noise.
        g.sky_r *= rng.uniform(0.02, 0.05)
        g.mu0_r = min(g.mu0_r + rng.uniform(1.2, 2.0), 23.8)
    _place_field(g, rng, star_density, galaxy_density, neighbour_draw)
    return g


def _place_field(g, rng, star_density, galaxy_density, neighbour_draw):
    """Stars, background galaxies and neighbours, in frame fractions (x right, y up, centre 0)."""
    area = (g.fov / 60.0) ** 2
    n_stars = min(int(rng.poisson(star_density * area)), 250)
    # dN/dm ~ 10^(0.3 m) between 14 and 23.
    u = rng.random(n_stars)
    lo, hi = 10.0 ** (0.3 * 14.0), 10.0 ** (0.3 * 23.0)
    mags = np.log10(lo + u * (hi - lo)) / 0.3
    xy = rng.uniform(-0.5, 0.5, size=(n_stars, 2))
    colours = rng.beta(2.0, 2.0, size=n_stars)
    r25_frac = g.r25 / g.fov
    for (x, y), m, c in zip(xy, mags, colours):
        # Stars brighter than 17 stay off the disk unless they are the reject cause.
        if m < 17.0 and math.hypot(x / r25_frac, y / (r25_frac * max(g.b_a, 0.3))) < 1.1:
            x = math.copysign(max(abs(x), 1.2 * r25_frac), x if x else 1.0)
        g.stars.append((float(x), float(y), float(m), float(c)))
    if g.cause == "star":
        radius = rng.uniform(0.1, 0.6) * r25_frac
        angle = rng.uniform(0.0, 2.0 * math.pi)
        g.stars.append(
            (
                float(radius * math.cos(angle)),
                float(radius * math.sin(angle) * max(g.b_a, 0.3)),
                float(rng.uniform(11.0, 13.5)),
                float(rng.beta(2.0, 2.0)),
            )
        )
    n_bg = min(int(rng.poisson(galaxy_density * area)), 60)
    for _ in range(n_bg):
        x, y, mag = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(18.5, 22.5)
        scale = np.exp(rng.uniform(math.log(0.6), math.log(3.0)))
        g.background.append(
            tuple(
                float(v) for v in (x, y, mag, scale, rng.uniform(0.3, 1.0), rng.uniform(0.0, 180.0), rng.beta(2.0, 2.0))
            )
        )
    u_kind, u_dist, u_angle, u_size, u_flux, u_inc, u_rot, u_bt = neighbour_draw
    if g.cause == "multiple":
        distance = (0.25 + 0.6 * u_dist) * r25_frac
        flux_ratio = 0.5 + 1.0 * u_flux
    elif u_kind < 0.15 and g.cause != "star":
        distance = (1.3 + 0.6 * u_dist) * r25_frac
        flux_ratio = 0.1 + 0.4 * u_flux
    else:
        return
    angle = 2.0 * math.pi * u_angle
    g.neighbour = {
        "x": float(distance * math.cos(angle)),
        "y": float(distance * math.sin(angle)),
        "h_ratio": float(0.45 + 0.5 * u_size),
        "flux_ratio": float(flux_ratio),
        "q": float(math.hypot(math.cos(math.radians(90.0 * u_inc)), 0.2 * math.sin(math.radians(90.0 * u_inc)))),
        "angle": float(180.0 * u_rot),
        "bt": float(0.1 + 0.4 * u_bt),
    }


# -- geometry helpers -------------------------------------------------------------------------------


def _hernquist_sigma(m):
    """Projected Hernquist profile for unit mass and scale (Hernquist 1990, eq. 32-33)."""
    s = np.maximum(np.asarray(m, dtype=np.float64), 1e-3)
    s = np.where(np.abs(s - 1.0) < 1e-3, 1.0 + 1e-3, s)
    x = np.empty_like(s)
    low = s < 1.0
    sl, sh = s[low], s[~low]
    x[low] = np.arccosh(1.0 / sl) / np.sqrt(1.0 - sl * sl)
    x[~low] = np.arccos(1.0 / sh) / np.sqrt(sh * sh - 1.0)
    return ((2.0 + s * s) * x - 3.0) / (2.0 * math.pi * (1.0 - s * s) ** 2)


def _plummer_sigma(m):
    return 1.0 / (math.pi * (1.0 + np.asarray(m) ** 2) ** 2)


def _spheroid(x, y, flux, scale, q_proj, kind):
    """Surface brightness of a projected spheroid (x along its major axis)."""
    m = np.sqrt(x * x + (y / q_proj) ** 2) / scale
    shape = _hernquist_sigma(m) if kind == "hernquist" else _plummer_sigma(m)
    return flux * shape / (scale * scale * q_proj)


def _ferrers_projection(a, b, c, psi, inc):
    """2x2 quadratic form (sky x, y) and area factor of a Ferrers ellipsoid projected at inclination ``inc``."""
    rot = np.array([[math.cos(psi), -math.sin(psi), 0.0], [math.sin(psi), math.cos(psi), 0.0], [0.0, 0.0, 1.0]])
    q3 = rot @ np.diag([1.0 / a**2, 1.0 / b**2, 1.0 / c**2]) @ rot.T
    ci, si = math.cos(inc), math.sin(inc)
    e = np.array([[1.0, 0.0], [0.0, ci], [0.0, -si]])
    n = np.array([0.0, si, ci])
    qe = e.T @ q3 @ e
    qn = e.T @ q3 @ n
    q2 = qe - np.outer(qn, qn) / float(n @ q3 @ n)
    return q2


def _column_profiles(maps, cell, r_map, columns, n_y):
    """Face-on maps resampled for a set of columns X = ``columns`` (arcsec) on ``n_y`` rows of Y.

    Returns ``(profiles (len(columns) * n_y, k), dy)``: row ``j * n_y + m`` holds the k map
    values at X = columns[j], Y = -r_map + (m + 0.5) dy (linear interpolation of the maps;
    the first and last rows are zero so that clipped indices fall on empty sky).
    """
    k, size, _ = maps.shape
    u = np.clip((columns + r_map) / cell - 0.5, 0.0, size - 1.000001)
    i0 = u.astype(np.int64)
    fu = u - i0
    by_x = maps[:, :, i0] * (1.0 - fu) + maps[:, :, np.minimum(i0 + 1, size - 1)] * fu  # (k, size, ncols)
    dy = 2.0 * r_map / n_y
    v = np.clip((np.arange(n_y) + 0.5) * dy / cell - 0.5, 0.0, size - 1.000001)
    j0 = v.astype(np.int64)
    fv = (v - j0)[None, :, None]
    prof = by_x[:, j0, :] * (1.0 - fv) + by_x[:, np.minimum(j0 + 1, size - 1), :] * fv  # (k, n_y, ncols)
    prof[:, 0, :] = 0.0
    prof[:, -1, :] = 0.0
    outside = np.abs(columns) >= r_map
    prof[:, :, outside] = 0.0
    return np.ascontiguousarray(prof.transpose(2, 1, 0)).reshape(-1, k), dy


# -- the disk -------------------------------------------------------------------------------------


def _face_on_maps(g, rng, r_map, with_structure=True):
    """Face-on maps over [-r_map, r_map]^2 (arcsec): old-disk and young surface density, dust optical depth.

    Surface densities are in units of the old disk's face-on central surface brightness.
    """
    cells = MAP_CELLS
    cell = 2.0 * r_map / cells
    coords = (np.arange(cells) + 0.5) * cell - r_map
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    rr = np.hypot(xx, yy)
    theta = np.arctan2(yy, xx)
    rh = rr / g.h
    smooth = _radial_profile(rh, g.h_out_ratio, g.break_radius)
    if not with_structure:
        zero = np.zeros_like(smooth)
        return np.stack([smooth, zero, zero]), cell
    # Grand design: Ringermacher & Mead (2009) arms r(phi) = A / log(B tan(phi / 2N)),
    # i.e. phi(r) = 2N arctan(exp(A / r) / B), repeated n_arms times.
    r_scaled = np.maximum(rh / (g.rm_a * (g.bar_length if g.bar else 1.0)), 0.05)
    phase = 2.0 * g.rm_n * np.arctan(np.exp(1.0 / r_scaled) / g.rm_b)
    grand = ((1.0 + np.cos(g.n_arms * (theta - phase))) / 2.0) ** g.arm_power
    grand /= max(float(grand.mean()), 1e-6)
    # Flocculent: a smoothed random field sheared by differential rotation into trailing segments.
    noise = ndimage.gaussian_filter(rng.normal(size=(cells, cells)), 2.5, mode="wrap")
    noise /= max(float(noise.std()), 1e-9)
    shear = np.log(np.maximum(rh, 0.05)) * rng.uniform(1.5, 3.0)
    tx = rr * np.cos(theta + shear)
    ty = rr * np.sin(theta + shear)
    floc = ndimage.map_coordinates(noise, [(ty + r_map) / cell - 0.5, (tx + r_map) / cell - 0.5], order=1, mode="wrap")
    floc = np.exp(1.1 * floc)
    floc /= float(floc.mean())
    weight = {"grand": 0.85, "flocculent": 0.1, "mixed": 0.5}[g.arms]
    pattern = weight * grand + (1.0 - weight) * floc
    inner = 0.5 * (g.bar_length if g.bar else 0.6)
    envelope = (1.0 - np.exp(-((rh / inner) ** 2))) * _radial_profile(rh / 1.15, 1.0, 99.0)
    young = envelope * pattern
    # HII knots along the brightest parts of the young layer.
    prob = young.ravel() ** 2
    total = float(prob.sum())
    knots = np.zeros(cells * cells)
    if total > 0 and g.knots:
        picks = rng.choice(cells * cells, size=g.knots, p=prob / total)
        np.add.at(knots, picks, rng.exponential(1.0, g.knots))
        knots = ndimage.gaussian_filter(knots.reshape(cells, cells), 0.8)
        knots *= 0.25 * float(young.sum()) / max(float(knots.sum()), 1e-9)
    else:
        knots = knots.reshape(cells, cells)
    # Normalise the young layer to its share of the disk light.
    young = young + knots
    young *= g.young_fraction * float(smooth.sum()) / max(float(young.sum()), 1e-9)
    old = smooth * (1.0 + g.arm_contrast * (pattern - 1.0)).clip(0.2)
    dust = g.dust_tau * _radial_profile(rh / g.dust_h_ratio, 1.0, 99.0) * (1.0 + 0.5 * (pattern - 1.0)).clip(0.1)
    return np.stack([old, young, dust]), cell


def _gauss_legendre(n):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1.0) / 2.0, weights / 2.0


class _ColumnMaps:
    """The face-on maps resampled once per galaxy on columns ``column_step`` apart (see _column_profiles)."""

    def __init__(self, maps, cell, r_map, column_step):
        self.r_map = r_map
        self.step = column_step
        self.n_cols = int(math.ceil(2.0 * r_map / column_step)) + 1
        columns = (np.arange(self.n_cols) - (self.n_cols - 1) / 2.0) * column_step
        self.profiles, self.dy = _column_profiles(maps, cell, r_map, columns, N_ROWS)

    def lookup(self, x, big_y):
        col = np.clip(np.rint(x / self.step + (self.n_cols - 1) / 2.0).astype(np.int64), 0, self.n_cols - 1)
        row = np.clip(((big_y + self.r_map) / self.dy).astype(np.int64), 0, N_ROWS - 1)
        return self.profiles[col[:, None] * N_ROWS + row]  # (P, K, 3)


def _integrate_disk(x, y, g, columns, young=True, dust=True):
    """Line-of-sight integrals through the 3-D disk at sky points (x along the major axis, y minor; arcsec).

    Returns ``(light (3, P) per band, total dust optical depth in r (P,))``.
    The disk: face-on map D(X, Y) times exp(-|Z|/h_z) / 2h_z (old), the same with h_z,young
    (young) and h_z,dust (dust). A sky point sees X = x, Y = y / cos i + Z tan i; the
    surface brightness is (1 / cos i) * integral of rho dZ. Nodes are Gauss-Legendre in
    t = exp(-|Z| / h_z) on each side of the mid-plane.
    """
    inc = math.radians(g.inc)
    ci, si = math.cos(inc), math.sin(inc)
    ti = si / ci
    hz = g.hz
    r_map = columns.r_map
    half = np.sqrt(np.maximum(r_map * r_map - x * x, 0.0))
    zmax = KZ * hz
    if ti > 1e-9:
        # Both ends clipped to the slab |Z| < zmax: a line of sight that misses the disk map
        # within it gets an empty interval at the slab's surface (zero weights), not an
        # interval beyond it where exp(-|Z| / h_z) underflows to 0.
        za = np.clip((-half - y / ci) / ti, -zmax, zmax)
        zb = np.clip((half - y / ci) / ti, -zmax, zmax)
    else:
        za = np.full_like(x, -zmax)
        zb = np.full_like(x, zmax)
    zb = np.maximum(zb, za)
    xi, wi = _gauss_legendre(N_NODES)
    # Negative side: Z in [za, min(zb, 0)], t = exp(Z / hz) ascending with Z.
    lo_n = np.exp(np.minimum(za, 0.0) / hz)
    hi_n = np.exp(np.minimum(zb, 0.0) / hz)
    # Positive side: Z in [max(za, 0), zb], t = exp(-Z / hz) descending with Z.
    lo_p = np.exp(-np.maximum(zb, 0.0) / hz)
    hi_p = np.exp(-np.maximum(za, 0.0) / hz)
    tn = lo_n[:, None] + (hi_n - lo_n)[:, None] * xi[None, :]
    tp = (lo_p[:, None] + (hi_p - lo_p)[:, None] * xi[None, :])[:, ::-1]  # ascending Z
    wn = (hi_n - lo_n)[:, None] * wi[None, :]
    wp = ((hi_p - lo_p)[:, None] * wi[None, :])[:, ::-1]
    t = np.concatenate([tn, tp], axis=1)
    ln_t = np.log(t)  # = -|Z| / hz
    z = np.concatenate([hz * np.log(tn), -hz * np.log(tp)], axis=1)
    dz = np.concatenate([wn, wp], axis=1) * hz / t  # dZ weights
    big_y = y[:, None] / ci + z * ti
    values = columns.lookup(x, big_y)
    d_old, d_young, d_dust = values[..., 0], values[..., 1], values[..., 2]
    weight = dz / ci
    old = d_old * (t / (2.0 * hz)) * weight
    light = np.empty((3, len(x)))
    if dust and g.dust_tau > 0:
        hzd = g.dust_thickness * hz
        kappa = d_dust * np.exp(ln_t * (hz / hzd)) / (2.0 * hzd) * weight
        above = np.cumsum(kappa[:, ::-1], axis=1)[:, ::-1]  # from each node to the observer (high Z)
        tau = above - 0.5 * kappa
        tau_total = above[:, 0]
    else:
        tau = None
        tau_total = np.zeros(len(x))
    young_light = None
    if young:
        hzy = g.young_thickness * hz
        young_light = d_young * np.exp(ln_t * (hz / hzy)) / (2.0 * hzy) * weight
    for b in range(3):
        layer = old * COLOURS["disk"][b]
        if young_light is not None:
            layer = layer + young_light * COLOURS["young"][b]
        if tau is not None:
            layer = layer * np.exp(-EXTINCTION[b] * tau)
        light[b] = layer.sum(axis=1)
    return light, tau_total


# -- the PSF ----------------------------------------------------------------------------------------


def _otf(shape, pixel, fwhm, e, angle, halo, halo_ratio):
    """Optical transfer function on an rfft grid: Kolmogorov core (slightly elliptical) + Gaussian halo."""
    fy = sfft.fftfreq(shape[0], d=pixel)[:, None]
    fx = sfft.rfftfreq(shape[1], d=pixel)[None, :]
    a = math.radians(angle)
    fu = fx * math.cos(a) + fy * math.sin(a)
    fv = -fx * math.sin(a) + fy * math.cos(a)
    f = np.sqrt((fu * (1.0 + e)) ** 2 + (fv * (1.0 - e)) ** 2)
    core = np.exp(-3.44 * (f * fwhm / 0.976) ** (5.0 / 3.0))
    sigma = halo_ratio * fwhm / 2.3548
    wing = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx * fx + fy * fy))
    return (1.0 - halo) * core + halo * wing


# -- rendering -------------------------------------------------------------------------------------


def _oversampling(size):
    return 4 if size <= 80 else (2 if size <= 320 else 1)


def render_light(
    g,
    size,
    seed,
    *,
    psf=True,
    oversample=None,
    components=("disk", "young", "dust", "bulge", "bar", "neighbour", "stars", "background"),
):
    """Noise-free surface brightness (electrons / arcsec^2 above the sky) per band: (3, size, size), rows top down.

    ``components`` selects what is drawn (the test of the projected shape draws the old
    disk alone: ``components=("disk",)``). Also returns the r-band saturation mask.
    """
    os_ = oversample or _oversampling(size)
    n = size * os_
    pixel = g.fov / size
    fine = pixel / os_
    structure_rng = rng_for(seed, "foreign-structure", g.index)
    s0 = g.sky_r * 10.0 ** (-0.4 * (g.mu0_r - g.mu_sky_r))  # disk central SB, r, electrons/arcsec^2
    # Fine-pixel centres in arcsec, x right, y up.
    c = (np.arange(n) + 0.5) * fine - g.fov / 2.0
    big_x = c[None, :]
    big_y = -c[:, None]
    cx, cy = g.dx * g.fov, g.dy * g.fov
    a = math.radians(g.misalignment)
    gx = (big_x - cx) * math.cos(a) + (big_y - cy) * math.sin(a)
    gy = -(big_x - cx) * math.sin(a) + (big_y - cy) * math.cos(a)
    if g.mirrored:
        gy = -gy
    gx = np.broadcast_to(gx, (n, n))
    gy = np.broadcast_to(gy, (n, n))
    image = np.zeros((3, n, n))
    tau_total = np.zeros((n, n))
    inc = math.radians(g.inc)
    ci, si = math.cos(inc), math.sin(inc)
    elliptical = g.cause == "not_spiral"
    disk_flux = 2.0 * math.pi * g.h * g.h * s0  # ~ total of the face-on disk
    if not elliptical and "disk" in components:
        r_map = 7.2 * g.h
        maps, cell = _face_on_maps(g, structure_rng, r_map, with_structure=bool({"young", "dust"} & set(components)))
        maps[:2] *= s0
        foot = (np.abs(gx) < r_map) & (np.abs(gy) < r_map * ci + KZ * g.hz * si)
        idx = np.nonzero(foot.ravel())[0]
        flat = image.reshape(3, -1)
        columns = _ColumnMaps(maps, cell, r_map, fine)
        # In chunks: small temporaries are reused instead of mapped and unmapped each time.
        for start in range(0, len(idx), CHUNK):
            part = idx[start : start + CHUNK]
            light, tau = _integrate_disk(
                gx.ravel()[part], gy.ravel()[part], g, columns, young="young" in components, dust="dust" in components
            )
            flat[:, part] = light
            tau_total.ravel()[part] = tau
    if "bulge" in components and (elliptical or g.bulge_kind != "none"):
        if elliptical:
            flux, kind, q_proj = 3.0 * disk_flux, "hernquist", g.elliptical_q
            scale = 0.45 * g.r25 / 1.8153
            colour = COLOURS["elliptical"]
        else:
            flux = g.bulge_bt / (1.0 - g.bulge_bt) * disk_flux
            kind = g.bulge_kind
            q_proj = math.sqrt(ci * ci + (g.bulge_q * si) ** 2)
            scale = g.bulge_re_over_h * g.h / (1.8153 if kind == "hernquist" else 1.0)
            colour = COLOURS["old"]
        bulge = _spheroid(gx, gy, flux, max(scale, 0.3 * fine), q_proj, kind)
        # Dust attenuation of a spheroid around a dust layer: half behind a screen when the
        # layer is seen face-on, mixed with it when seen edge-on.
        mix = si * si
        tt = np.maximum(tau_total, 1e-6)
        for b in range(3):
            tb = tt * EXTINCTION[b]
            att = mix * (1.0 - np.exp(-tb)) / tb + (1.0 - mix) * 0.5 * (1.0 + np.exp(-tb))
            image[b] += bulge * colour[b] * att
    if "bar" in components and g.bar and not elliptical:
        a_bar = g.bar_length * g.h
        q2 = _ferrers_projection(
            a_bar, g.bar_axes[0] * a_bar, max(g.bar_axes[1] * a_bar, 0.5 * g.hz), math.radians(g.bar_angle), inc
        )
        m2 = q2[0, 0] * gx * gx + 2.0 * q2[0, 1] * gx * gy + q2[1, 1] * gy * gy
        nu = 2.5
        area = math.pi / math.sqrt(max(np.linalg.det(q2), 1e-30))
        bar = g.bar_fraction * disk_flux * (nu + 1.0) / area * np.clip(1.0 - m2, 0.0, None) ** nu
        tt = np.maximum(tau_total, 1e-6)
        for b in range(3):
            tb = tt * EXTINCTION[b]
            image[b] += bar * COLOURS["old"][b] * (1.0 - np.exp(-tb)) / tb
    if "neighbour" in components and g.neighbour:
        nb = g.neighbour
        nx, ny = nb["x"] * g.fov, nb["y"] * g.fov
        ux, uy = big_x - nx, big_y - ny
        ang = math.radians(nb["angle"])
        px = ux * math.cos(ang) + uy * math.sin(ang)
        py = -ux * math.sin(ang) + uy * math.cos(ang)
        hn = g.h * nb["h_ratio"]
        flux = disk_flux * nb["flux_ratio"] * nb["h_ratio"] ** 2
        disk = (
            flux
            * (1 - nb["bt"])
            / (2 * math.pi * hn * hn * nb["q"])
            * np.exp(-np.sqrt(px * px + (py / nb["q"]) ** 2) / hn)
        )
        bul = _spheroid(px, py, flux * nb["bt"], 0.15 * hn, min(1.0, nb["q"] + 0.5), "hernquist")
        for b in range(3):
            image[b] += disk * COLOURS["disk"][b] + bul * COLOURS["old"][b]
    if "background" in components:
        for x, y, m, size_arcsec, q, angle, col in g.background:
            flux = g.sky_r * 10.0 ** (-0.4 * (m - g.mu_sky_r))
            half = int(min(8.0 * size_arcsec / fine + 3, n // 2))
            ix = int((x * g.fov + g.fov / 2.0) / fine)
            iy = int((g.fov / 2.0 - y * g.fov) / fine)
            r0, r1, c0, c1 = max(iy - half, 0), min(iy + half, n), max(ix - half, 0), min(ix + half, n)
            if r0 >= r1 or c0 >= c1:
                continue
            ux = big_x[:, c0:c1] - x * g.fov
            uy = big_y[r0:r1, :] - y * g.fov
            ang = math.radians(angle)
            px = ux * math.cos(ang) + uy * math.sin(ang)
            py = -ux * math.sin(ang) + uy * math.cos(ang)
            prof = np.exp(-np.sqrt(px * px + (py / q) ** 2) / size_arcsec) / (2 * math.pi * size_arcsec**2 * q)
            colour = COLOURS["old"] * (1 - col) + COLOURS["young"] * col
            for b in range(3):
                image[b, r0:r1, c0:c1] += flux * prof * colour[b]
    stars_sat = []
    if "stars" in components:
        rot = math.radians(g.corner_angle if g.corners else g.pa % 90.0)
        for x, y, m, col in g.stars:
            flux = g.sky_r * 10.0 ** (-0.4 * (m - g.mu_sky_r))
            colour = np.array([0.95 - 0.6 * col, 1.0, 1.05 + 0.45 * col])
            fx = (x * g.fov + g.fov / 2.0) / fine - 0.5
            fy = (g.fov / 2.0 - y * g.fov) / fine - 0.5
            pts = [(fx, fy, 1.0)]
            if m < 15.5:  # diffraction spikes along the detector axes
                length = (15.5 - m + 1.0) * 4.0 * g.psf_fwhm / fine
                steps = np.arange(1.5, length, 0.7)
                amp = 1.2e-4 * 0.7 / (1.0 + steps / (0.3 * length)) ** 2
                for k in range(4):
                    d = rot + k * math.pi / 2
                    for s, wgt in zip(steps, amp):
                        pts.append((fx + s * math.cos(d), fy - s * math.sin(d), wgt))
            for px_, py_, wgt in pts:
                i0, j0 = int(math.floor(px_)), int(math.floor(py_))
                fu, fv = px_ - i0, py_ - j0
                for di, dj, ww in (
                    (0, 0, (1 - fu) * (1 - fv)),
                    (1, 0, fu * (1 - fv)),
                    (0, 1, (1 - fu) * fv),
                    (1, 1, fu * fv),
                ):
                    ii, jj = i0 + di, j0 + dj
                    if 0 <= ii < n and 0 <= jj < n:
                        image[:, jj, ii] += flux * wgt * ww * colour / (fine * fine)
            stars_sat.append((fx, fy, flux))
    # Convolve with the PSF of each band, then integrate over the output pixels.
    out = np.empty((3, size, size))
    if psf:
        pad = max(int(0.15 * n), 8)
        shape = (sfft.next_fast_len(n + 2 * pad, real=True),) * 2
        for b, band in enumerate(BANDS):
            fwhm = g.psf_fwhm * (WAVELENGTH[band] / WAVELENGTH["r"]) ** -0.2 * g.band_seeing[b]
            otf = _otf(shape, fine, fwhm, g.psf_e, g.psf_angle, g.psf_halo, g.psf_halo_ratio)
            spectrum = sfft.rfft2(image[b], s=shape)
            conv = sfft.irfft2(spectrum * otf, s=shape)[:n, :n]
            out[b] = conv.reshape(size, os_, size, os_).mean(axis=(1, 3))
    else:
        out[:] = image.reshape(3, size, os_, size, os_).mean(axis=(2, 4))
    return out


def star_peak(g, mag):
    """Peak electrons per native pixel (sky included) of a star of r magnitude ``mag`` (Gaussian core)."""
    sigma = g.psf_fwhm / 2.3548
    flux = g.sky_r * 10.0 ** (-0.4 * (mag - g.mu_sky_r))
    return (1.0 - g.psf_halo) * flux / (2.0 * math.pi * sigma * sigma) * NATIVE_AREA + g.sky_r * NATIVE_AREA


def saturation_mask(g, size):
    """Output pixels whose native pixels saturate in r: discs around the bright stars."""
    mask = np.zeros((size, size), dtype=bool)
    sigma = g.psf_fwhm / 2.3548
    pixel = g.fov / size
    c = (np.arange(size) + 0.5) * pixel - g.fov / 2.0
    for x, y, mag, _ in g.stars:
        peak = star_peak(g, mag)
        if peak <= g.saturation:
            continue
        radius = sigma * math.sqrt(2.0 * math.log(peak / g.saturation))
        radius = max(radius, 0.71 * pixel)  # at least the pixel holding the core
        mask |= (c[None, :] - x * g.fov) ** 2 + (-c[:, None] - y * g.fov) ** 2 <= radius * radius
    return mask


def _stretch(values, g, beta, black):
    """Normalised stretch: 0 at the sky, 1 at ``black`` (signed for negative noise)."""
    if g.stretch == "asinh":
        v = np.arcsinh(values / beta) / math.asinh(black / beta)
    elif g.stretch == "log":
        v = np.sign(values) * np.log1p(np.abs(values) / beta) / math.log1p(black / beta)
    else:
        v = np.sign(values) * (np.abs(values) / black) ** g.power
    return np.sign(v) * np.abs(v) ** g.gamma


def render_galaxy(g, size, seed):
    """Render one galaxy: ``({"g", "r", "i"}: uint8 (S, S) dark-on-white, uint8 (S, S, 3) colour)``."""
    light = render_light(g, size, seed)
    pixel = g.fov / size
    area = pixel * pixel
    noise_rng = rng_for(seed, "foreign-noise", g.index)
    sky = g.sky_r * SKY_RATIO
    native = area / NATIVE_AREA
    # Sky noise (electrons/arcsec^2) of a 512-px cutout of this field: defines the stretch.
    area_ref = (g.fov / REFERENCE_SIZE) ** 2
    sigma_ref = np.sqrt(sky * area_ref + g.read_noise**2 * area_ref / NATIVE_AREA) / area_ref
    c = (np.arange(size) + 0.5) / size - 0.5
    plane = g.gradient[0] * c[None, :] + g.gradient[1] * (-c[:, None])
    observed = np.empty_like(light)
    for b in range(3):
        counts = noise_rng.poisson(np.maximum((light[b] + sky[b]) * area, 0.0)).astype(np.float64)
        counts += noise_rng.normal(0.0, g.read_noise * math.sqrt(native), size=counts.shape)
        observed[b] = counts / area - sky[b] + sigma_ref[b] * (g.pedestal + plane)
    saturated = saturation_mask(g, size)
    black = g.sky_r * 10.0 ** (-0.4 * (g.mu_black - g.mu_sky_r)) * np.array([0.8, 1.0, 1.15])
    gray = {}
    for b, band in enumerate(BANDS):
        v = _stretch(observed[b], g, g.softening * sigma_ref[b], black[b])
        level = g.sky_gray * (1.0 - v)
        if g.holes:
            level = np.where(saturated, 255.0, level)
        gray[band] = np.clip(np.rint(level), 0, 255).astype(np.uint8)
    # Colour: Lupton et al. (2004), R, G, B = scaled i, r, g; asinh of the mean intensity.
    scale = np.array(g.colour_scale) / (g.lupton_soft * sigma_ref[1])
    chans = np.stack([observed[2] * scale[2], observed[1] * scale[1], observed[0] * scale[0]])
    chans = np.maximum(chans, 0.0)
    mean = chans.mean(axis=0)
    fmean = np.arcsinh(mean / g.lupton_q * 4.0) / math.asinh(black[1] * scale[1] / g.lupton_q * 4.0)
    ratio = np.where(mean > 1e-9, fmean / np.maximum(mean, 1e-9), 0.0)
    rgb = chans * ratio
    peak = np.maximum(rgb.max(axis=0), 1.0)
    rgb = rgb / peak
    rgb = np.moveaxis(rgb, 0, -1) * (255.0 - np.array(g.sky_dark)) + np.array(g.sky_dark)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if g.corners:
        blank = _corner_mask(size, g.corners, g.corner_angle)
        for band in BANDS:
            gray[band][blank] = 255
        rgb[blank] = 255 if g.corner_white else 0
    return gray, rgb


def _corner_mask(size, side, angle):
    """Pixels outside a square of ``side`` x the frame rotated by ``angle``: blank corners of a rotated cutout."""
    c = (np.arange(size) + 0.5) / size - 0.5
    x, y = c[None, :], c[:, None]
    a = math.radians(angle)
    u = x * math.cos(a) + y * math.sin(a)
    v = -x * math.sin(a) + y * math.cos(a)
    return (np.abs(u) > side / 2.0) | (np.abs(v) > side / 2.0)


# -- writing ----------------------------------------------------------------------------------------


def _save(path, array, **options):
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, **options)


def galaxy_files(output, pgc):
    output = Path(output)
    return [output / naming.raw_image(pgc, band) for band in naming.BANDS]


def _render_and_write(args):
    index, seed, size, output = args
    g = draw_galaxy(index, seed)
    gray, rgb = render_galaxy(g, size, seed)
    paths = galaxy_files(output, g.pgc)
    for band, path in zip(BANDS, paths):
        _save(path, gray[band], format="PNG")
    _save(paths[3], rgb, format="JPEG", quality=g.jpeg_quality)
    return [str(p) for p in paths]


def _render_some(tasks):
    for task in tasks:
        _render_and_write(task)


def _truth_csv(galaxies, size):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for g in galaxies:
        writer.writerow(g.truth_row(size))
    return buffer.getvalue()


def render_universe(output_dir, *, n_galaxies, size=512, seed=0, jobs=1):
    """Render ``n_galaxies`` foreign galaxies at ``size`` px into ``output_dir``; returns a summary dict."""
    if isinstance(n_galaxies, bool) or int(n_galaxies) != n_galaxies or n_galaxies < 1:
        raise ValueError(f"n_galaxies must be a positive integer, not {n_galaxies!r}")
    if isinstance(size, bool) or int(size) != size or size < 16:
        raise ValueError(f"size must be an integer >= 16, not {size!r}")
    if jobs not in (1, 2):
        raise ValueError(f"jobs must be 1 or 2, not {jobs!r}")
    output = Path(output_dir)
    start = time.perf_counter()
    galaxies = [draw_galaxy(k, seed) for k in range(n_galaxies)]
    write_catalog(output / CATALOG_FILE, [g.catalog_row() for g in galaxies])
    atomic_write_text(output / TRUTH_FILE, _truth_csv(galaxies, size))
    tasks = [(k, seed, int(size), str(output)) for k in range(n_galaxies)]
    written = []
    if jobs == 1:
        for task in tasks:
            written.extend(_render_and_write(task))
    else:
        # Forked workers (no pickling: works however this file was imported); each renders
        # every jobs-th galaxy, and the files do not depend on who rendered them.
        context = multiprocessing.get_context("fork")
        workers = [context.Process(target=_render_some, args=(tasks[k::jobs],)) for k in range(jobs)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        failed = [w.exitcode for w in workers if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"a rendering process failed (exit codes {failed})")
        written = [str(p) for task in tasks for p in galaxy_files(output, PGC_BASE + task[0])]
    check_outputs([output / CATALOG_FILE, output / TRUTH_FILE] + written)
    seconds = time.perf_counter() - start
    counts = {label: sum(g.label == label for g in galaxies) for label in ("A", "F", "J")}
    logger.info(
        "foreign universe: %d galaxies at %d px in %.1f s (%.2f/s); A %d, F %d, J %d; seed %d",
        n_galaxies,
        size,
        seconds,
        n_galaxies / seconds,
        counts["A"],
        counts["F"],
        counts["J"],
        seed,
    )
    return {
        "n_galaxies": n_galaxies,
        "size": size,
        "seconds": seconds,
        "labels": counts,
        "catalog": output / CATALOG_FILE,
        "truth": output / TRUTH_FILE,
    }


# -- figure -----------------------------------------------------------------------------------------


def comparison_figure(path, real_dir, *, n=4, size=256, seed=11, real=None):
    """PNG: foreign galaxies (r and colour) next to real-look cutouts, rows gray then colour."""
    from PIL import Image, ImageDraw

    real_dir = Path(real_dir)
    real = real or ["pgc3738", "pgc46153", "pgc55224", "pgc1844"]
    tile = 150
    # The first accepted galaxies near inclinations spread over 45-90.
    targets = list(np.linspace(50.0, 88.0, n))
    picks, k = [], 0
    while targets and k < 2000:
        g = draw_galaxy(k, seed)
        near = [t for t in targets if abs(g.inc - t) < 4.0]
        if g.label == "A" and near:
            picks.append(g)
            targets.remove(near[0])
        k += 1
    picks.sort(key=lambda galaxy: galaxy.inc)
    canvas = Image.new("RGB", (tile * 2 * n + 8, tile * 2 + 22), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "foreign universe (r, colour)", fill=(0, 0, 0))
    draw.text((tile * n + 12, 4), "real SDSS cutouts (r, colour)", fill=(0, 0, 0))
    for j, g in enumerate(picks):
        gray, rgb = render_galaxy(g, size, seed)
        canvas.paste(Image.fromarray(gray["r"]).convert("RGB").resize((tile, tile)), (j * tile, 20))
        canvas.paste(Image.fromarray(rgb).resize((tile, tile)), (j * tile, 20 + tile))
        draw.text((j * tile + 4, 22), f"i={g.inc:.0f}", fill=(200, 0, 0))
    for j, stem in enumerate(real[:n]):
        r = Image.open(real_dir / f"{stem}_d25x2_rot_r.png").convert("RGB").resize((tile, tile))
        colour = real_dir / f"{stem}_d25x2_rot_gri.sdss.jpg"
        if not colour.exists():
            colour = real_dir / f"{stem}_d25x2_rot_gri.jpg"
        c = Image.open(colour).convert("RGB").resize((tile, tile))
        canvas.paste(r, (tile * n + 8 + j * tile, 20))
        canvas.paste(c, (tile * n + 8 + j * tile, 20 + tile))
    with atomic_path(path) as tmp:
        canvas.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG).save(
            tmp, format="PNG", optimize=True
        )


# -- command line -----------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description="Render the foreign universe (benchmarks only).")
    parser.add_argument("-o", "--output", type=Path, help="output directory (required unless --figure)")
    parser.add_argument("-n", "--n-galaxies", type=int, help="number of galaxies (required unless --figure)")
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="processes (1 or 2)")
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="instead of a universe, write a side-by-side PNG with the real-look cutouts",
    )
    parser.add_argument(
        "--real-look", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared/reference/real-look"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.figure:
        comparison_figure(args.figure, args.real_look, seed=args.seed)
        return 0
    if args.output is None or args.n_galaxies is None:
        parser.error("-o/--output and -n/--n-galaxies are required")
    render_universe(args.output, n_galaxies=args.n_galaxies, size=args.size, seed=args.seed, jobs=args.jobs)
    return 0


if __name__ == "__main__":
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")
    sys.exit(main())
