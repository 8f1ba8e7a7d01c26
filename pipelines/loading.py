"""`pipelines.load`: a dataset split by name or location, like `tfds.load`.

    from pipelines import load
    train = load("mnist-cluttered-60", split="train", build=True)   # built and cached on first use
    images, labels = train.images, train.labels                     # numpy, (N, 60, 60, 1) and (N,)
    model.fit(train.as_keras(batch_size=128, shuffle=True), epochs=5)
    test = load("https://example.org/mnist-cluttered-60-1.0.0.zarr.zip", split="test")
"""

from __future__ import annotations

from pipelines import catalog, reader, store
from pipelines.build import build_dataset


def load(name_or_location, split: str = "train", *, version: str | None = None, source: str | None = None,
         build: bool = False, lazy: bool = False, limit: int | None = None, verify: bool = True,
         memory_limit: int = reader.DEFAULT_MEMORY_LIMIT, workers: int | None = None,
         progress: bool = False) -> reader.Split:
    """One split of a store, checked against its digests (and the lock) unless `verify=False`.

    name_or_location: a dataset name (`"mnist-pairs"`, `"mnist-pairs@1.0.0"`, with `:sample` for
        the embedded sample source), looked up in the cache (`$VISATT_HOME/stores`); or any
        store location: a folder, a packed file, a URL of either.
    version, source: for a name (default: the dataset's current version and first source).
    build: build a frozen version into the cache when it is not there yet (its digests must
        equal the lock's; MNIST datasets need `visatt-data fetch mnist` first, or source="sample").
    lazy: read chunk by chunk as samples are asked for, instead of loading the split.
    limit: the first `limit` samples only.

    Returns a `pipelines.reader.Split`: `.images`, `.labels`, `split[i]`, `len(split)`, and the
    adapters `.as_keras(...)` (a Keras PyDataset), `.as_tf_dataset(...)`, `.as_torch(...)` (a
    map-style dataset for a PyTorch DataLoader). `split.info` says what the store holds.
    """
    location = name_or_location
    ref = None if store.is_url(location) else catalog.parse_ref(str(location))
    if ref is not None and not catalog.resolve_is_path(location):
        name, ref_version, ref_source = ref
        wanted = f"{name}@{version or ref_version}:{source or ref_source}"
        parsed = catalog.parse_ref(wanted)
        if parsed is None:
            raise ValueError(f"{wanted}: not a dataset version and source (NAME@VERSION:SOURCE)")
        name, version, source = parsed
        location = catalog.cached_path(name, version, source)
        if not location.exists():
            if not build:
                catalog.resolve(wanted)  # raises, saying how to get it
            if version != catalog.get_dataset(name).version:
                raise store.StoreError(f"{name} {version}: only the current version "
                                       f"{catalog.get_dataset(name).version} can be built by this visatt")
            try:
                build_dataset(name, location, source=source, workers=workers, progress=progress)
            except store.StoreError:
                if not location.exists():  # another process may have built it meanwhile: use that one
                    raise
    elif version is not None or source is not None:
        raise ValueError("version and source apply to a dataset name, not to a store location")
    info = reader.open_store(location, verify=verify)
    return reader.Split(info, split, limit=limit, memory_limit=0 if lazy else memory_limit, verify=verify)
