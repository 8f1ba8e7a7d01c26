"""visatt's data side: deterministic, versioned digit datasets in Zarr v3 stores.

`pipelines.load(...)` reads a split by dataset name or store location (`pipelines.loading`).
"""


def __getattr__(name):
    if name == "load":  # imported on first use: `import pipelines.X` stays light
        from pipelines.loading import load

        return load
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
