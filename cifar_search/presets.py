"""Named training configurations worth starting from: enqueue them with ``search --preset``.

Each was measured (its note says where; chosen on validation accuracy only); enqueued first,
it gives a new study the best known result at the cost of one trial, and the sampler goes on
from there. A new study starts from :data:`DEFAULTS` unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from cifar_search.config import TrainConfig
from cifar_search.errors import CifarSearchError


@dataclass(frozen=True)
class Preset:
    config: TrainConfig
    note: str


PRESETS: dict[str, Preset] = {
    "seed-baseline": Preset(
        TrainConfig(),
        "the seed assignment's configuration: RMSprop, lr 1e-4, batch 128, nothing else",
    ),
    "prescribed-adam-cosine": Preset(
        TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=128, schedule="cosine",
                    augment=True, shift=0.1, flip=True),
        "the prescribed layers only: issue 6's quick measurement of this recipe reached about "
        "75% validation accuracy at epoch 22 of 30",
    ),
    "bn-aug-adamw": Preset(
        TrainConfig(optimizer="adamw", learning_rate=0.009797833128532118, batch_size=128,
                    schedule="warmup_cosine", weight_decay=0.00041036091540167923,
                    label_smoothing=0.1, batch_norm=True, augment=True,
                    shift=0.15898298037523345, flip=True),
        "study cifar10-main (docs/RESULTS.md): 81.82% validation accuracy after 15 epochs "
        "(81.91% in an earlier run on another machine); 83.43% test after retraining on 50K",
    ),
}

# The warm start of a new study, by its layers: the best measured preset for them.
DEFAULTS: dict[str, str] = {"variants": "bn-aug-adamw", "prescribed": "prescribed-adam-cosine"}


def get(name: str) -> Preset:
    """The preset called ``name``, or a CifarSearchError listing the known ones."""
    if name not in PRESETS:
        raise CifarSearchError(f"no preset named {name!r} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]
