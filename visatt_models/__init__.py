"""visatt's models: CNN, RAM, DRAM and STN trained from visatt stores (`visatt-train`, `visatt-eval`,
`visatt-predict`).

    from visatt_models import load_run, predict
    model = load_run("runs/cnn")                 # best checkpoint of a run, for raw uint8 images
    predict("runs/cnn", ["a.png", "b.png"])      # -> ["7", "123"]

Importing the package does not import Keras; the names below load on first use.
"""

__all__ = ["load_run", "predict"]


def __getattr__(name):
    if name in __all__:
        from visatt_models import inference as module

        return getattr(module, name)
    raise AttributeError(f"module 'visatt_models' has no attribute {name!r}")
