"""visatt's models: CNN, RAM, DRAM and STN trained from visatt stores (`visatt-train`, `visatt-eval`,
`visatt-predict`).

    from visatt_models import load_run, predict
    model = load_run("runs/cnn")                 # best checkpoint of a run, for raw uint8 images
    predict("runs/cnn", ["a.png", "b.png"])      # -> ["7", "123"]

    import keras, visatt_models                  # Keras first: the model classes register on import
    model = keras.saving.load_model("runs/cnn/checkpoints/last-epoch-0003.keras")
    model = visatt_models.load_model(path)       # the same, in whichever order things were imported

Importing the package imports Keras only when Keras is already imported (so that `--help` of the
command-line tools stays fast); then it registers every model class with Keras' serialization.
Keras itself imports the module of a saved class only for its own packages, so a `.keras` file
of a custom model cannot load before the module that defines it has been imported.
"""

import sys

__all__ = ["load_model", "load_run", "predict"]


def load_model(path, **kwargs):
    """`keras.saving.load_model(path)` with every visatt model class registered first."""
    import keras

    from visatt_models.registry import register_all

    register_all()
    return keras.saving.load_model(path, **kwargs)


def __getattr__(name):
    if name in ("load_run", "predict"):
        from visatt_models import inference as module

        return getattr(module, name)
    raise AttributeError(f"module 'visatt_models' has no attribute {name!r}")


if "keras" in sys.modules:
    from visatt_models.registry import register_all as _register_all

    _register_all()
