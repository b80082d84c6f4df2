"""The cloud's neighbour offset (`models.cloud.neighbours`): how far a text lies from every labelled training
text, in the sentence embedding of the *pretrained* encoder the teacher started from, added to the cloud's
logits.

    offset = scale × (cosine similarity to the nearest labelled training text) + shift

is added to every one of the cloud's raw logits for that text. A constant added to all of a text's logits
leaves its probabilities exactly as they were (softmax, temperature and oos bias alike) and moves its energy
(log-sum-exp over the intents, `modelpack.scores.neg_energy`) by exactly the offset: the cloud's oos rule
(`oos_score: neg_energy`) then reads energy and similarity together, and nothing that reads the cloud's
answers has to know. Why: the fine-tuned teacher's energy and the pretrained encoder's distances err on
different texts; summed (each standardised on in-scope validation texts: `scale` = σ(energy) / σ(similarity),
`shift` = −scale × mean similarity) they tell unseen out-of-domain requests apart better than either
(`bench/results/open_set.md`, "The cloud's neighbours").

The files: `embedder` (TFLite: int32 ids [batch, seq] -> float32 [batch, dim], L2-normalised sentence
embeddings) and `bank` (.npy, float16 [n, dim]: the labelled training texts' embeddings, normalised). This
module is the manifest's entry (stdlib only); `modelpack.nearest` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelpack._fields import Reader
from modelpack.errors import ManifestError


@dataclass(frozen=True)
class NeighbourEntry:
    embedder: str
    embedder_sha256: str
    bank: str
    bank_sha256: str
    scale: float
    shift: float

    def files(self) -> dict[str, str]:
        return {self.embedder: self.embedder_sha256, self.bank: self.bank_sha256}


def read_neighbours(r: Reader) -> NeighbourEntry:
    entry = NeighbourEntry(embedder=r.file("embedder"), embedder_sha256=r.sha256("embedder_sha256"),
                           bank=r.file("bank"), bank_sha256=r.sha256("bank_sha256"),
                           scale=r.float("scale", low=0.0), shift=r.float("shift"))
    if entry.embedder == entry.bank:
        raise ManifestError(f"{r.where}: embedder and bank must be two files")
    return entry
