"""A ten-minute probe of the reject model across universes: train small, score on three sets.

Trains one model4 binary classifier (the workflow's reject member, Adam at the workflow's
binary learning rate, class-balanced weights, a random rotation/flip per batch) on the
canonical 64-px images of a universe drawn by ``inclinet-synth``, then scores it with four
test-time views on

* another draw of our universe (``--own``): AUC and the share of accepted galaxies rejected;
* the foreign universe (``--foreign``, ``bench/foreign_universe.py``): the same, which
  should match ``--own`` if the reject model is calibrated across renderers;
* real cutouts (``--real``, e.g. ``../shared/reference/real-look``, no labels): how many
  images get P(reject) > 0.5.

The share of accepted galaxies rejected is also broken down by true inclination, to tell
the face-on boundary (45 deg) from the rest. ``--labels j`` trains on the ``J`` causes alone
(``F`` counted as accepted), ``--labels jf`` on the workflow's labels (``J`` or ``F``),
``--labels j:CAUSE`` on one cause (``star``, ``multiple``, ``faint``, ``not_spiral``) against
``A`` and ``F``, the other ``J`` galaxies left out.
``--stretch-augment G`` is another: every training image gets its own random grey-level
curve after normalisation (levels above the sky raised to a power drawn log-uniformly in
[1/G, G]), so that the light profile the stretch leaves is no cue to the label.
Several ``--seed`` values train one member per seed and score their mean P(reject) (a deep
ensemble, the usual remedy for over-confidence on shifted data); each member's own
rejection rates are reported beside the ensemble's.
``--augment full`` trains on the workflow's augmentation instead (the colour or gray chain of
``inclinet.augmentation`` per image, re-normalised, as the binary batches of a run);
``--augment geometry`` and ``--augment photometry`` keep only the chains' geometric steps
(rotation, flips, shift, scale) or photometric ones (gamma, contrast, offset, noise, blur,
desaturation), each view re-normalised as in a run; ``--augment renormalise`` keeps none of
them (every training image normalised a second time, nothing else).
``--texture-augment BLUR NOISE`` blurs each training image by a Gaussian of sigma drawn in
[0, BLUR] px and adds white noise of sigma drawn in [0, NOISE] grey levels (no resampling,
no re-normalisation), so that pixel texture is no cue to the label.
``--labels heads`` learns one independent sigmoid per reject class (face-on and each cause;
``heads:fj``: face-on and rejected) and scores P(reject) = 1 - prod(1 - P(class)).
``--init-from KERAS`` starts from a trained model4 regression member's weights (every layer
but the head), fine-tuned, or with ``--freeze`` only the head learns on the member's features
(``--freeze conv``: the dense layers and the head, on its convolutional trunk).
``--freeze workflow`` is the workflow's reject member: the convolutions copied and frozen, the
dense layers from fresh weights.
``--pretrain KIND EPOCHS`` first trains that regression member here, one per seed, on the
``--train`` images (``narrow``: accepted galaxies, 45-90 deg, the workflow's; ``censored``:
accepted galaxies and face-on ones as "below 45 deg", all a catalog says of them; ``wide``:
both at their true inclination), then the reject member on its frozen convolutions; for
``censored`` and ``wide`` the report adds how the regression member alone sorts galaxies at 45
deg (``pretrain_face_on``).
Several ``--train`` folders pool their galaxies (the cache keeps the pool: use a new
``--work`` per combination).
``--aperture R`` shows the reject member only the galaxy's body: every pixel farther than R px
from the centre of the 64-px image is set to the sky level, in training and scoring alike.
``--save-scores NPZ`` keeps every image's P(reject) per set.
``--remap-quantiles`` is an experiment: after the canonical normaliser, a monotonic map sends
four quantiles of the galaxy region (50, 75, 90 and 97%) to fixed grey levels (isophote
shapes unchanged, the light profile's shape removed).

The model is far from the workflow's training volume (a few thousand images, a few
epochs): only the contrasts between sets mean something, not the absolute rates.

Usage::

    inclinet-synth -n 2400 --size 128 --seed 5151 -o /tmp/syn/train
    inclinet-synth -n 400 --size 128 --seed 4242 -o /tmp/syn/own
    python bench/foreign_universe.py -o /tmp/syn/foreign -n 400 --size 128 --seed 77
    nice python bench/reject_probe.py --train /tmp/syn/train --own /tmp/syn/own \\
        --foreign /tmp/syn/foreign --real ../shared/reference/real-look --labels jf \\
        --work /tmp/reject_probe [--epochs 5] [--remap-quantiles] [--out results.json]
"""

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_name, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from inclinet import augmentation, naming, normalise, reliability  # noqa: E402
from inclinet.images import load_image  # noqa: E402
from inclinet.io import atomic_path  # noqa: E402

SIZE = 64
BANDS = ("g", "r", "i", "gri")
INCLINATION_BINS = ((45, 55), (55, 65), (65, 75), (75, 91))
REMAP_QUANTILES = (50.0, 75.0, 90.0, 97.0)
#: Grey levels the quantiles go to: about the median real-look r image's (bench_look).
REMAP_LEVELS = (18.0, 27.0, 75.0, 160.0)


def remap_quantiles(image):
    """The ``--remap-quantiles`` experiment: a monotonic grey-level map fixing four quantiles of the galaxy region."""
    # The normaliser's galaxy region: within 3 target sigmas of the centre.
    quantiles = np.percentile(image.mean(axis=2)[normalise._output_grids(SIZE)], REMAP_QUANTILES)
    # Strictly increasing knots above the sky level (16), whatever the image.
    knots = np.maximum.accumulate(np.maximum(quantiles, 16.5) + np.arange(len(quantiles)) * 1e-3)
    xs = np.concatenate([[0.0, 16.0], knots, [255.0]])
    ys = np.concatenate([[0.0, 16.0], REMAP_LEVELS, [255.0]])
    table = np.rint(np.interp(np.arange(256), xs, ys)).astype(np.uint8)
    return table[image]


def _truth(folder):
    with open(Path(folder) / "truth.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def canonical(path, remap):
    """The image at ``path`` as the models see it (and remapped with ``remap``)."""
    image = normalise.normalise_image(load_image(path), SIZE)
    return remap_quantiles(image) if remap else image


def load_universe(folder, remap):
    """Canonical images of every galaxy and band of an ``inclinet-synth``-layout folder, with labels and causes."""
    images, labels, causes, inclinations, bands = [], [], [], [], []
    for row in _truth(folder):
        for band in BANDS:
            images.append(canonical(Path(folder) / naming.raw_image(int(row["pgc"]), band), remap))
            labels.append(row["label"])
            causes.append(row["cause"])
            inclinations.append(float(row["true_inc"] or "nan"))
            bands.append(band)
    return {
        "images": np.stack(images),
        "labels": np.array(labels),
        "causes": np.array(causes),
        "inclinations": np.array(inclinations),
        "bands": np.array(bands),
    }


def aperture(images, radius):
    """Copies of canonical images with every pixel farther than ``radius`` px from the centre set to the sky level."""
    centre = (SIZE - 1) / 2.0
    yy, xx = np.mgrid[:SIZE, :SIZE]
    outside = (yy - centre) ** 2 + (xx - centre) ** 2 > radius**2
    masked = images.copy()
    masked[:, outside] = np.uint8(normalise.SKY_LEVEL)
    return masked


def pool(universes):
    """Several :func:`load_universe` results as one training set (arrays concatenated in order)."""
    return {key: np.concatenate([universe[key] for universe in universes]) for key in universes[0]}


def load_real(folder, remap):
    """Canonical images of the real cutouts (every band file present) and their bands."""
    images, bands = [], []
    for band in BANDS:
        suffix = "_d25x2_rot_gri.sdss.jpg" if band == "gri" else f"_d25x2_rot_{band}.png"
        for path in sorted(Path(folder).glob(f"pgc*{suffix}")):
            images.append(canonical(path, remap))
            bands.append(band)
    return {"images": np.stack(images), "bands": np.array(bands)}


def cached(work, name, loader):
    path = work / f"{name}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}
    data = loader()
    with atomic_path(path) as temporary:
        np.savez(temporary, **data)
    return data


#: Label schemes whose rejects are ``J`` or ``F`` (scored on every image, face-on included).
JF_SCHEMES = ("jf", "multi", "heads", "heads:fj")


def rejected_target(data, scheme):
    """``(positive, used)``: which images count as rejects under ``scheme``, and which take part at all.

    ``j``: ``J`` against ``A`` and ``F``; ``jf``: ``J`` or ``F`` against ``A``; ``j:CAUSE``:
    the ``J`` galaxies of one cause against ``A`` and ``F`` (other ``J`` galaxies left out);
    ``multi``: scored as ``jf`` (the model learns each class apart, :data:`MULTI_CLASSES`).
    """
    labels = data["labels"]
    if scheme in JF_SCHEMES:
        return labels != "A", np.ones(len(labels), dtype=bool)
    if scheme == "j":
        return labels == "J", np.ones(len(labels), dtype=bool)
    positive = data["causes"] == scheme.split(":", 1)[1]
    return positive, positive | (labels != "J")


#: Classes of ``--labels multi``: accepted, face-on and each rejection cause.
MULTI_CLASSES = ("A", "F", "star", "multiple", "faint", "not_spiral")


def multi_target(data):
    """Class index of every image under ``multi`` (``A``, ``F``, then the ``J`` cause)."""
    names = np.where(data["labels"] == "J", data["causes"], data["labels"])
    return np.array([MULTI_CLASSES.index(name) for name in names], dtype=np.int64)


#: Outputs of ``--labels heads``: one independent sigmoid per reject class (face-on, each cause).
HEAD_CLASSES = MULTI_CLASSES[1:]


def heads_target(data, scheme):
    """Which reject head each image belongs to (none for accepted), float32.

    ``heads``: (N, 5), one column per class of :data:`HEAD_CLASSES`; ``heads:fj``: (N, 2),
    face-on and rejected (any cause): what a catalog's ``fon`` and ``inc_flg`` give.
    """
    if scheme == "heads:fj":
        return np.stack([data["labels"] == "F", data["labels"] == "J"], axis=1).astype(np.float32)
    return (multi_target(data)[:, None] == np.arange(1, len(MULTI_CLASSES))[None, :]).astype(np.float32)


def roc_auc(positive, scores):
    """Area under the ROC curve (ties counted half)."""
    from inclinet.stages.evaluate import roc_auc as auc

    return auc(positive.astype(int), scores)


def stretch_batch(batch, rng, spread):
    """``--stretch-augment``: a random power curve per image on the levels above the sky."""
    sky = normalise.SKY_LEVEL
    levels = np.clip((np.arange(256, dtype=np.float64) - sky) / (255.0 - sky), 0.0, 1.0)
    out = np.empty_like(batch)
    for row, power in enumerate(np.exp(rng.uniform(-np.log(spread), np.log(spread), len(batch)))):
        table = np.where(np.arange(256) <= sky, np.arange(256), sky + (255.0 - sky) * levels**power)
        out[row] = np.rint(table).astype(np.uint8)[batch[row]]
    return out


#: ``--augment`` variants: the workflow's chains, or only their geometric or photometric steps.
_GEOMETRY_OFF = {"rotation_degrees": 0.0, "flip_probability": 0.0, "max_shift": 0.0, "scale_range": (1.0, 1.0)}
_PHOTOMETRY_OFF = {
    "gamma_range": (1.0, 1.0),
    "contrast_range": (1.0, 1.0),
    "offset_range": (0, 0),
    "noise_max": 0.0,
    "blur_probability": 0.0,
    "desaturate_probability": 0.0,
}
AUGMENT_PARTS = {
    "full": {},
    "geometry": _PHOTOMETRY_OFF,
    "photometry": _GEOMETRY_OFF,
    "renormalise": {**_GEOMETRY_OFF, **_PHOTOMETRY_OFF},
}


def _chains(part):
    from dataclasses import replace

    changes = AUGMENT_PARTS[part]
    return replace(augmentation.COLOUR_CHAIN, **changes), replace(augmentation.GRAY_CHAIN, **changes)


def texture_batch(batch, rng, max_blur, max_noise):
    """``--texture-augment``: per image a Gaussian blur (sigma U[0, max_blur] px) and white noise (U[0, max_noise])."""
    import cv2

    out = np.empty_like(batch)
    for row, image in enumerate(batch):
        sigma, noise = rng.uniform(0.0, max_blur), rng.uniform(0.0, max_noise)
        values = image.astype(np.float32)
        if sigma > 0.05:
            values = cv2.GaussianBlur(values, (0, 0), sigma, borderType=cv2.BORDER_REFLECT).reshape(values.shape)
        values += rng.standard_normal(values.shape[:2] + (1,), dtype=np.float32) * np.float32(noise)
        out[row] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


def init_from_regression(model, path, freeze):
    """Copy every layer but the head from the regression member at ``path``.

    The convolutional trunk goes over as the workflow's ``--init-trunk`` takes it
    (:func:`inclinet.models.adopt_trunk`); the dense layers below the head are copied too (the
    workflow's reject member starts them afresh). ``freeze``: None trains every layer;
    ``trunk`` the head alone; ``conv`` the dense layers and the head; ``workflow`` the same as
    ``conv`` but with the dense layers from fresh weights, as the workflow's reject member.
    """
    import keras

    from inclinet.models import adopt_trunk

    source = keras.models.load_model(path, compile=False)
    trunk = set(adopt_trunk(model, source))
    for layer in model.layers:
        if layer.name in trunk:
            layer.trainable = freeze is None
        elif layer.weights and layer.name != "fc_out2" and freeze != "workflow":
            layer.set_weights(source.get_layer(layer.name).get_weights())
            layer.trainable = freeze != "trunk"


#: ``--pretrain`` trunks: which images the regression member learns from, and how.
PRETRAIN_KINDS = ("narrow", "censored", "wide")


def pretrain_targets(data, kind):
    """``(rows, target, bound)`` of a ``--pretrain`` regression member on ``data``.

    ``narrow``: the workflow's regression member, accepted galaxies, ``(inc - 67.5) / 22.5``.
    ``censored``: accepted galaxies at ``(inc - 45) / 45`` (0 to 1) and face-on ones as an upper
    bound only (``target <= 0``, i.e. below 45 deg: all a catalog's ``F`` flag says).
    ``wide``: accepted and face-on galaxies at their true inclination, ``(inc - 45) / 45``
    (-1 to 1); only a synthetic universe knows a face-on galaxy's inclination.
    """
    labels, inclinations = data["labels"], data["inclinations"]
    if kind == "narrow":
        rows = labels == "A"
        return rows, ((inclinations[rows] - 67.5) / 22.5).astype(np.float32), np.zeros(rows.sum(), np.float32)
    rows = (labels == "A") | (labels == "F")
    target = ((inclinations[rows] - 45.0) / 45.0).astype(np.float32)
    bound = np.zeros(rows.sum(), np.float32)
    if kind == "censored":
        face_on = labels[rows] == "F"
        target[face_on] = 0.0
        bound[face_on] = 1.0
    return rows, target, bound


def censored_mse(y_true, y_pred):
    """Squared error; where ``y_true[:, 1]`` is 1, ``y_true[:, 0]`` is an upper bound only."""
    import keras

    ops = keras.ops
    target, bound = y_true[:, 0], y_true[:, 1]
    error = y_pred[:, 0] - target
    error = ops.where(bound > 0.5, ops.maximum(error, 0.0), error)
    return ops.square(error)


def pretrain(data, kind, epochs, seed, path, learning_rate=1e-3, batch_size=32):
    """Train a model4 regression member on ``data`` (``kind``: :data:`PRETRAIN_KINDS`), save it at ``path``."""
    import keras

    from inclinet.models import build_model, scale_pixels

    keras.utils.set_random_seed(seed + 1000)
    rng = np.random.default_rng(seed + 1000)
    rows, target, bound = pretrain_targets(data, kind)
    images = data["images"][rows]
    truth = np.stack([target, bound], axis=1)
    model = build_model("model4", input_size=SIZE, task="regression")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=censored_mse)
    history = []
    for epoch in range(epochs):
        start = time.time()
        losses = []
        for picked, batch in dihedral_batches(images, batch_size, rng):
            losses.append(float(model.train_on_batch(scale_pixels(batch), truth[picked])))
        seconds = round(time.time() - start, 1)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "seconds": seconds})
        print(json.dumps({"pretrain": kind, **history[-1]}), flush=True)
    model.save(path)
    return history


def face_on_by_regression(path, data):
    """How a ``censored``/``wide`` regression member alone sorts galaxies at 45 deg (four views).

    The share of face-on galaxies it reads below 45 deg, and of accepted ones per inclination bin.
    """
    import keras

    from inclinet.models import predict_views

    model = keras.models.load_model(path, compile=False)
    used = (data["labels"] == "A") | (data["labels"] == "F")
    below = np.zeros(len(used), dtype=bool)
    below[used] = predict_views(model, data["images"][used], 4)[0][:, 0] < 0.0
    result = {"face_on_below_45": round(float(below[data["labels"] == "F"].mean()), 3)}
    accepted = data["labels"] == "A"
    for low, high in INCLINATION_BINS:
        rows = accepted & (data["inclinations"] >= low) & (data["inclinations"] < high)
        result[f"accepted_{low}-{min(high, 90)}_below_45"] = round(float(below[rows].mean()), 3) if rows.any() else None
    return result


def train(
    data,
    scheme,
    epochs,
    seed,
    learning_rate,
    stretch_spread=None,
    augment=None,
    texture=None,
    init_from=None,
    freeze=None,
):
    import keras

    from inclinet.models import build_model, scale_pixels

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    positive, used = rejected_target(data, scheme)
    images = data["images"][used]
    bands = data["bands"][used]
    target = positive[used].astype(np.int64)
    share = target.mean()
    weights = np.where(target == 1, 0.5 / share, 0.5 / (1.0 - share)).astype(np.float32)
    colour_chain, gray_chain = _chains(augment) if augment else (None, None)
    model = build_model("model4", input_size=SIZE, task="binary")
    if init_from:
        init_from_regression(model, init_from, freeze)
    if scheme == "multi":
        # Half the weight on accepted images, the other half shared equally by the five other
        # classes: the same accept/reject balance as ``jf``, each cause learnt apart.
        target = multi_target(data)[used]
        shares = np.bincount(target, minlength=len(MULTI_CLASSES)) / len(target)
        per_class = np.where(np.arange(len(MULTI_CLASSES)) == 0, 0.5, 0.5 / (len(MULTI_CLASSES) - 1))
        weights = (per_class[target] / shares[target]).astype(np.float32)
        head = keras.layers.Dense(len(MULTI_CLASSES), activation="softmax", name="fc_out_multi")
        model = keras.Model(model.input, head(model.get_layer("fc_out2").input), name="model4_multi")
    loss = "sparse_categorical_crossentropy"
    if scheme.startswith("heads"):
        # One sigmoid per reject class, each learnt against everything else at its natural
        # frequency (no class weights): a galaxy is rejected only for looking like one of them.
        target = heads_target(data, scheme)[used]
        weights = np.ones(len(target), dtype=np.float32)
        head = keras.layers.Dense(target.shape[1], activation="sigmoid", name="fc_out_heads")
        model = keras.Model(model.input, head(model.get_layer("fc_out2").input), name="model4_heads")
        loss = "binary_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    history = []
    for epoch in range(epochs):
        start = time.time()
        losses = []
        for rows, batch in dihedral_batches(images, 64, rng):
            if stretch_spread:
                batch = stretch_batch(batch, rng, stretch_spread)
            if texture:
                batch = texture_batch(batch, rng, *texture)
            if augment:
                # The workflow's chains (colour or gray by band) and re-normalisation.
                codes = ["c" if band == "gri" else band for band in bands[rows]]
                batch = augmentation.augment_batch(
                    np.ascontiguousarray(batch), codes, rng, colour_params=colour_chain, gray_params=gray_chain
                )
            losses.append(float(model.train_on_batch(scale_pixels(batch), target[rows], sample_weight=weights[rows])))
        seconds = round(time.time() - start, 1)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "seconds": seconds})
        print(json.dumps(history[-1]), flush=True)
    return model, history


def dihedral_batches(images, batch_size, rng):
    """One epoch of full batches in a random order, each turned by a random multiple of 90 deg and maybe flipped.

    Yields ``(rows, batch)``; the last partial batch is dropped.
    """
    order = rng.permutation(len(images))
    for first in range(0, len(order) - batch_size + 1, batch_size):
        rows = order[first : first + batch_size]
        batch = np.rot90(images[rows], k=int(rng.integers(4)), axes=(1, 2))
        if rng.integers(2):
            batch = batch[:, :, ::-1]
        yield rows, batch


def p_reject(models, images):
    """Mean P(reject) of ``models`` (one or several members), four views each."""
    from inclinet.models import predict_views

    # P(reject) = 1 - P(accepted): column 1 of the binary head, 1 - column 0 of the multi-class
    # one; for independent heads, 1 - the product of (1 - P(class)) over the reject classes.
    def one(model):
        mean = predict_views(model, images, 4)[0]
        if model.name == "model4_heads":
            return 1.0 - np.prod(1.0 - mean, axis=1)
        return 1.0 - mean[:, 0]

    return np.mean([one(model) for model in models], axis=0)


def pooled_reliability(scores, positive, temperature):
    """All bands pooled: prevalence of rejects, mean P(reject), rejects caught at 0.5, and the ECE.

    The ECE is that of the raw P(reject) and, where ``temperature`` is given, of the
    probabilities rescaled by it (:func:`inclinet.reliability.apply_temperature`), the
    evaluation's calibration, fitted on the own universe's labels (a temperature leaves the
    0.5 point, and so every rejection rate, where it is).
    """
    result = {
        "n": int(len(scores)),
        "prevalence": round(float(positive.mean()), 3),
        "mean_p": round(float(scores.mean()), 3),
        "rejects_caught": round(float((scores[positive] > 0.5).mean()), 3) if positive.any() else None,
        "ece": round(reliability.reliability_table(scores, positive)[1], 3),
    }
    if temperature is not None:
        calibrated = reliability.apply_temperature(scores, temperature)
        result["temperature"] = round(float(temperature), 3)
        result["ece_temperature"] = round(reliability.reliability_table(calibrated, positive)[1], 3)
    return result


def scored_target(data, scheme):
    """``(positive, scored)``: the rejects under ``scheme`` and the images a member is scored on.

    J-only schemes are scored on ``J`` against ``A`` (``F`` is neither what they learn nor accepted).
    """
    positive, used = rejected_target(data, scheme)
    return positive, used if scheme in JF_SCHEMES else used & (data["labels"] != "F")


def score_universe(models, data, scheme, scores=None, temperature=None):
    if scores is None:
        scores = p_reject(models, data["images"])
    positive, scored = scored_target(data, scheme)
    accepted = data["labels"] == "A"
    result = {"bands": {}, "accepted_rejected_by_inclination": {}}
    for band in BANDS:
        rows = data["bands"] == band
        result["bands"][band] = {
            "auc": round(roc_auc(positive[rows & scored], scores[rows & scored]), 3),
            "accepted_rejected": round(float((scores[rows & accepted] > 0.5).mean()), 3),
            "n_accepted": int((rows & accepted).sum()),
        }
    result["pooled"] = pooled_reliability(scores[scored], positive[scored], temperature)
    for low, high in INCLINATION_BINS:
        rows = accepted & (data["inclinations"] >= low) & (data["inclinations"] < high)
        result["accepted_rejected_by_inclination"][f"{low}-{min(high, 90)}"] = {
            "n": int(rows.sum()),
            "rejected": round(float((scores[rows] > 0.5).mean()), 3) if rows.any() else None,
        }
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train",
        type=Path,
        nargs="+",
        required=True,
        help="inclinet-synth folder(s) to train on (several: their galaxies pooled, e.g. a second look "
        "drawn by bench/foreign_universe.py with another seed)",
    )
    parser.add_argument("--own", type=Path, required=True, help="another draw of our universe")
    parser.add_argument("--foreign", type=Path, required=True, help="bench/foreign_universe.py folder")
    parser.add_argument("--real", type=Path, help="folder of real cutouts (no labels)")
    parser.add_argument(
        "--labels",
        choices=("j", "jf", "multi", "heads", "heads:fj", "j:star", "j:multiple", "j:faint", "j:not_spiral"),
        default="jf",
        help="rejects: J, J or F, or the J galaxies of one cause; multi: J or F, learnt as six classes "
        "(accepted, face-on, each cause); heads: J or F, one independent sigmoid per reject class "
        "(heads:fj: one for F, one for J)",
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[7], help="one member per seed; several: their mean P(reject)"
    )
    parser.add_argument("--remap-quantiles", action="store_true")
    parser.add_argument(
        "--stretch-augment", type=float, metavar="G", help="random power curve per training image, in [1/G, G]"
    )
    parser.add_argument(
        "--augment",
        choices=sorted(AUGMENT_PARTS),
        help="the workflow's augmentation chains on every training batch: all of them, or their geometric or "
        "photometric steps alone",
    )
    parser.add_argument(
        "--texture-augment",
        nargs=2,
        type=float,
        metavar=("BLUR", "NOISE"),
        help="per training image a Gaussian blur of sigma U[0, BLUR] px and noise of sigma U[0, NOISE] levels",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="KERAS",
        help="start from a trained model4 regression member's weights (every layer but the head)",
    )
    parser.add_argument(
        "--freeze",
        nargs="?",
        const="trunk",
        choices=("trunk", "conv", "workflow"),
        help="with --init-from: train the head alone (trunk, the default), the dense layers and the head (conv), "
        "or those from fresh weights on the frozen convolutions (workflow: the workflow's reject member)",
    )
    parser.add_argument(
        "--pretrain",
        nargs=2,
        metavar=("KIND", "EPOCHS"),
        help="first train a model4 regression member per seed on --train (KIND: narrow = accepted galaxies, "
        "45-90 deg; censored = accepted ones and face-on ones as 'below 45 deg'; wide = both at their true "
        "inclination) and start the reject member on its frozen convolutions (as --freeze workflow)",
    )
    parser.add_argument(
        "--aperture",
        type=float,
        metavar="R",
        help="the reject member sees only the pixels within R px of the centre of the 64-px image "
        "(the rest at the sky level), in training and scoring; the trunk's pretraining sees all",
    )
    parser.add_argument("--work", type=Path, required=True, help="cache of normalised images")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--save-scores", type=Path, metavar="NPZ", help="write each image's mean P(reject) per set (own, foreign, real)"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    variant = "remapped" if args.remap_quantiles else "canonical"
    work = args.work / variant
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    sets = {
        name: cached(work, name, lambda folder=folder: load_universe(folder, args.remap_quantiles))
        for name, folder in (("own", args.own), ("foreign", args.foreign))
    }
    sets["train"] = cached(
        work, "train", lambda: pool([load_universe(folder, args.remap_quantiles) for folder in args.train])
    )
    if args.real:
        sets["real"] = cached(work, "real", lambda: load_real(args.real, args.remap_quantiles))
    normalised = time.time() - start
    models, histories = [], []
    pretrained = []
    if args.pretrain:
        kind, pre_epochs = args.pretrain[0], int(args.pretrain[1])
        if kind not in PRETRAIN_KINDS:
            raise SystemExit(f"reject_probe: --pretrain KIND must be one of {', '.join(PRETRAIN_KINDS)}, not {kind!r}")
        args.freeze = "workflow"
    # The reject member's view of every set (``--aperture``: the galaxy's body only); the
    # trunk's pretraining sees the whole frame, as the workflow's regression members do.
    seen = dict(sets)
    if args.aperture:
        seen = {name: {**data, "images": aperture(data["images"], args.aperture)} for name, data in sets.items()}
    for seed in args.seed:
        init_from = args.init_from
        if args.pretrain:
            init_from = work / f"pretrain_{kind}_{pre_epochs}_{seed}.keras"
            if not init_from.is_file():
                pretrained.append(pretrain(sets["train"], kind, pre_epochs, seed, init_from))
        model, history = train(
            seen["train"],
            args.labels,
            args.epochs,
            seed,
            args.learning_rate,
            args.stretch_augment,
            args.augment,
            args.texture_augment,
            init_from,
            args.freeze,
        )
        models.append(model)
        histories.append(history)
    result = {
        "variant": variant,
        "labels": args.labels,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "seed": args.seed[0] if len(args.seed) == 1 else args.seed,
        "stretch_augment": args.stretch_augment,
        "augment": args.augment,
        "texture_augment": args.texture_augment,
        "init_from": str(args.init_from) if args.init_from else None,
        "freeze": args.freeze,
        "pretrain": args.pretrain,
        "aperture": args.aperture,
        "pretrain_history": pretrained,
        "n_train_images": int(len(sets["train"]["images"])),
        "normalise_seconds": round(normalised, 1),
        "history": histories[0] if len(models) == 1 else histories,
    }
    names = ["own", "foreign"] + (["real"] if args.real else [])
    member_scores = {name: [p_reject([model], seen[name]["images"]) for model in models] for name in names}
    # The evaluation's calibration: one temperature fitted on the own universe's labels.
    own_positive, own_scored = scored_target(sets["own"], args.labels)
    temperature = reliability.fit_temperature(
        np.mean(member_scores["own"], axis=0)[own_scored], own_positive[own_scored]
    )
    for name in ("own", "foreign"):
        result[name] = score_universe(
            models, sets[name], args.labels, np.mean(member_scores[name], axis=0), temperature
        )
    if args.real:
        scores = np.mean(member_scores["real"], axis=0)
        result["real"] = {
            band: {
                "rejected": int((scores[sets["real"]["bands"] == band] > 0.5).sum()),
                "n": int((sets["real"]["bands"] == band).sum()),
            }
            for band in BANDS
        }
    if len(models) > 1:
        result["members"] = [
            {
                "seed": seed,
                **{
                    name: score_universe([model], sets[name], args.labels, member_scores[name][k])["bands"]
                    for name in ("own", "foreign")
                },
                **({"real_rejected": int((member_scores["real"][k] > 0.5).sum())} if args.real else {}),
            }
            for k, (seed, model) in enumerate(zip(args.seed, models))
        ]
    if args.pretrain and kind != "narrow":
        result["pretrain_face_on"] = {
            name: face_on_by_regression(work / f"pretrain_{kind}_{pre_epochs}_{args.seed[0]}.keras", sets[name])
            for name in ("own", "foreign")
        }
    if args.save_scores:
        args.save_scores.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.save_scores) as temporary:
            np.savez(temporary, **{name: np.mean(member_scores[name], axis=0) for name in names})
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
