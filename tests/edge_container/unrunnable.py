"""A real model that the interpreter loads but cannot run, made from the tiny artifact's int8 edge model.

Its first op gathers each token id from a constant remap table (full vocabulary -> the pruned embedding's
rows). Setting every entry to an id far past the embedding table leaves the flatbuffer valid, so the
interpreter loads it and allocates tensors, but every invoke fails: "gather index out of bounds".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from modelpack.litert import interpreter_class
from modelpack.manifest import load_manifest, sha256_file, write_manifest


def make_unrunnable(folder: Path) -> None:
    """Poison `folder`'s edge model in place and update its manifest entry, so checksums still match."""
    path = folder / "edge_int8.tflite"
    data = path.read_bytes()
    interpreter = interpreter_class()(model_content=data)
    interpreter.allocate_tensors()
    (remap,) = [t for t in interpreter.get_tensor_details()
                if "token_remap" in t["name"] and len(t["shape"]) == 1]
    table = interpreter.get_tensor(remap["index"])
    assert data.count(table.tobytes()) == 1, "the remap table's bytes must be found exactly once"
    poisoned = np.full_like(table, np.iinfo(table.dtype).max)
    path.write_bytes(data.replace(table.tobytes(), poisoned.tobytes()))
    manifest = load_manifest(folder, verify=False)
    entry = dataclasses.replace(manifest.edge, sha256=sha256_file(path), size_bytes=path.stat().st_size)
    write_manifest(dataclasses.replace(manifest, edge=entry), folder)
