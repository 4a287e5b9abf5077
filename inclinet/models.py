"""The CNN family of IncliNET (model4/5/6) as plain Keras 3 models, and the one definition of every scaling.

Keras is imported only inside the functions that build or run models, so importing this
module for its constants and scalings never imports TensorFlow. ``KERAS_BACKEND`` is set
to ``tensorflow`` only when the user has not chosen a backend; the model code uses
``keras`` layers only, so it also runs under ``KERAS_BACKEND=torch`` or ``jax``.

Scalings (docs/architecture.md):

* pixels ``x / 255`` as float32 (:func:`scale_pixels`), in training, evaluation and
  prediction alike;
* regression target ``y = (inc - 67.5) / 22.5`` (:func:`inclination_to_target`), inverse
  ``inc = 22.5 y + 67.5`` clipped to 45..90 (:func:`target_to_inclination`).
"""

import os

import numpy as np

from inclinet.errors import ConfigError, invalid

MODEL_NAMES = ("model4", "model5", "model6")
TASKS = ("regression", "binary")
DEFAULT_INPUT_SIZE = 128
PIXEL_SCALE = 255.0
INCLINATION_MIN = 45.0
INCLINATION_MAX = 90.0
INCLINATION_CENTRE = 67.5
INCLINATION_HALF_RANGE = 22.5
TTA_VIEW_COUNTS = (1, 2, 4, 8)
#: Dropout rate of every dropout layer of the three families (the original's 0.25).
DROPOUT = 0.25

PIXEL_SCALING = {"divide_by": PIXEL_SCALE, "dtype": "float32"}
LABEL_SCALING = {
    "target": "(inclination - 67.5) / 22.5",
    "inverse": "22.5 * y + 67.5, clipped to [45, 90]",
    "centre": INCLINATION_CENTRE,
    "half_range": INCLINATION_HALF_RANGE,
    "clip": [INCLINATION_MIN, INCLINATION_MAX],
}

# The convolutional bodies as (kind, argument) steps; "conv" is a 3x3 valid ReLU convolution.
_BODIES = {
    "model4": [
        ("conv", 16),
        ("conv", 16),
        ("pool", 2),
        ("dropout", None),
        ("conv", 32),
        ("conv", 32),
        ("bn", None),
        ("pool", 4),
        ("dropout", None),
    ],
    "model5": [
        ("conv", 128),
        ("conv", 128),
        ("pool", 2),
        ("dropout", None),
        ("conv", 256),
        ("conv", 256),
        ("bn", None),
        ("pool", 4),
        ("dropout", None),
        ("conv", 256),
        ("conv", 256),
        ("bn", None),
        ("pool", 4),
    ],
    "model6": [
        ("conv", 32),
        ("conv", 32),
        ("pool", 2),
        ("dropout", None),
        ("conv", 64),
        ("conv", 64),
        ("bn", None),
        ("pool", 4),
        ("dropout", None),
    ],
}
# Dense stacks with the original layer names (fc_out2 is the head).
_DENSE = {
    "model4": [("fc_2", 256), ("fc_4", 32), ("fc_5", 8)],
    "model5": [("fc_2", 256), ("fc_3", 128), ("fc_4", 64), ("fc_5", 8)],
    "model6": [("fc_3", 128), ("fc_4", 64), ("fc_5", 8)],
}


def import_keras():
    """Import Keras, choosing the TensorFlow backend unless ``KERAS_BACKEND`` is already set."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def feature_size(name, input_size):
    """Side of the last feature map of ``name`` at ``input_size`` (< 1 means too small)."""
    side = int(input_size)
    for kind, arg in _BODIES[name]:
        if kind == "conv":
            side -= 2
        elif kind == "pool":
            side //= arg
        if side < 1:
            return 0
    return side


def minimum_input_size(name):
    """The smallest square input ``name`` accepts (model4/6: 20 px, model5: 76 px)."""
    if name not in _BODIES:
        raise invalid("model", name, "one of " + ", ".join(MODEL_NAMES))
    size = 1
    while feature_size(name, size) < 1:
        size += 1
    return size


def build_model(name, *, input_size=DEFAULT_INPUT_SIZE, task="regression", dropout=DROPOUT):
    """Build (uncompiled) model4, model5 or model6 for square RGB inputs of ``input_size`` px.

    The layers follow the original tables: 3x3 valid ReLU convolutions, max pooling with
    strides equal to the pool size, batch normalisation over channels, dropout ``dropout`` (0.25), a
    ReLU dense stack and the head ``fc_out2``: ``Dense(1, tanh)`` for regression (the
    scaled inclination), ``Dense(2, softmax)`` for binary (P(accept), P(reject)).

    Raises :class:`ConfigError` for an unknown name/task or an input too small for the
    model (model5 needs at least 76 px).
    """
    if name not in _BODIES:
        raise invalid("model", name, "one of " + ", ".join(MODEL_NAMES))
    if task not in TASKS:
        raise invalid("task", task, "one of " + ", ".join(TASKS))
    if not 0.0 <= float(dropout) < 1.0:
        raise invalid("dropout", dropout, "a rate in [0, 1)")
    input_size = int(input_size)
    needed = minimum_input_size(name)
    if input_size < needed:
        raise ConfigError(
            f"invalid input size: {input_size} px for {name}; must be at least {needed} px "
            f"({name}'s valid convolutions and pooling leave no feature map below that); "
            "use a larger --size or model4/model6 for small images"
        )
    keras = import_keras()
    layers = keras.layers
    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = inputs
    counts = {"conv": 0, "bn": 1, "pool": 0, "dropout": 0}
    for kind, arg in _BODIES[name]:
        counts[kind] += 1
        if kind == "conv":
            x = layers.Conv2D(arg, 3, padding="valid", activation="relu", name=f"conv{counts[kind]}")(x)
        elif kind == "pool":
            x = layers.MaxPooling2D(pool_size=arg, strides=arg, name=f"pool_{counts[kind]}")(x)
        elif kind == "dropout":
            x = layers.Dropout(float(dropout), name=f"dropout_{counts[kind]}")(x)
        else:
            x = layers.BatchNormalization(axis=-1, name=f"bn_{counts[kind]}")(x)
    x = layers.Flatten(name="flatten")(x)
    for layer_name, units in _DENSE[name]:
        x = layers.Dense(units, activation="relu", name=layer_name)(x)
    if task == "regression":
        outputs = layers.Dense(1, activation="tanh", name="fc_out2")(x)
    else:
        outputs = layers.Dense(2, activation="softmax", name="fc_out2")(x)
    return keras.Model(inputs, outputs, name=f"{name}_{task}")


def adopt_trunk(net, source):
    """Copy the convolutional trunk of ``source`` into ``net`` and freeze it there.

    Every layer of ``net`` that holds weights and is not a dense layer (the convolutions
    and batch normalisations) takes the weights of ``source``'s layer of the same name and
    stops learning (frozen batch normalisations use the source's moving statistics); the
    dense layers and the head keep their own initial weights and learn. Both models must be
    the same architecture at the same input size (a ``ValueError`` names the first layer
    that differs). Returns the names of the layers copied.
    """
    keras = import_keras()
    copied = []
    for layer in net.layers:
        if not layer.weights or isinstance(layer, keras.layers.Dense):
            continue
        try:
            donor = source.get_layer(layer.name)
        except ValueError:
            raise ValueError(f"layer {layer.name!r} is missing from {source.name}") from None
        weights = donor.get_weights()
        if [w.shape for w in weights] != [tuple(v.shape) for v in layer.weights]:
            raise ValueError(f"layer {layer.name!r} of {source.name} has other shapes than {net.name}'s")
        layer.set_weights(weights)
        layer.trainable = False
        copied.append(layer.name)
    return copied


def scale_pixels(images):
    """uint8 (or any numeric) pixels -> float32 in [0, 1]: ``x / 255``."""
    return np.asarray(images, dtype=np.float32) / np.float32(PIXEL_SCALE)


def inclination_to_target(inclination):
    """Inclination in degrees -> regression target ``(inc - 67.5) / 22.5`` (float32)."""
    return ((np.asarray(inclination, dtype=np.float64) - INCLINATION_CENTRE) / INCLINATION_HALF_RANGE).astype(
        np.float32
    )


def target_to_inclination(target):
    """Regression output -> inclination in degrees, ``22.5 y + 67.5`` clipped to [45, 90]."""
    inclination = INCLINATION_HALF_RANGE * np.asarray(target, dtype=np.float64) + INCLINATION_CENTRE
    return np.clip(inclination, INCLINATION_MIN, INCLINATION_MAX)


def tta_views(images, n_views):
    """Exact test-time views of ``images`` (N, S, S, C): shape (n_views, N, S, S, C).

    Views are rotations by multiples of 90 degrees and their mirror images, in the order
    0, 180, 90, 270 degrees, then the same four flipped left-right. The first ``n`` views of
    8 are the views of ``n``: 1 = the image, 2 = the original's 0/180 degree pair, 4 = all
    rotations, 8 = the dihedral group. Being pixel permutations, they need no resampling.
    """
    if n_views not in TTA_VIEW_COUNTS:
        raise invalid("views", n_views, "one of " + ", ".join(map(str, TTA_VIEW_COUNTS)))
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"tta_views needs square images (N, S, S, C), got shape {images.shape}")
    views = []
    for index in range(n_views):
        turns = (0, 2, 1, 3)[index % 4]
        view = np.rot90(images, k=turns, axes=(1, 2))
        if index >= 4:
            view = view[:, :, ::-1]
        views.append(view)
    return np.ascontiguousarray(np.stack(views))


def predict_views(model, images, n_views, *, batch_size=256):
    """Model outputs averaged over ``n_views`` test-time views: (N, outputs) float64.

    ``images`` are uint8 (N, S, S, 3); each view is scaled with :func:`scale_pixels`.
    Returns the per-view outputs too: ``(mean, per_view)`` with per_view (n_views, N, outputs).
    """
    per_view = []
    for view in tta_views(images, n_views):
        outputs = []
        for start in range(0, len(view), batch_size):
            chunk = scale_pixels(view[start : start + batch_size])
            outputs.append(np.asarray(model(chunk, training=False)))
        per_view.append(np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1])))
    per_view = np.stack(per_view).astype(np.float64)
    return per_view.mean(axis=0), per_view
