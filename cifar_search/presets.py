"""Named training configurations worth starting from: enqueue them with ``search --preset``.

Each was measured by a study of this project (named in its note, chosen on validation
accuracy only); enqueued first, it gives a new study the best known result at the cost of one
trial, and the sampler goes on from there.
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
    "bn-aug-adamw": Preset(
        TrainConfig(optimizer="adamw", learning_rate=0.009797833128532118, batch_size=128,
                    schedule="warmup_cosine", weight_decay=0.00041036091540167923,
                    label_smoothing=0.1, batch_norm=True, augment=True,
                    shift=0.15898298037523345, flip=True),
        "trial 1 of study cifar10-main: 81.91% validation accuracy after 15 epochs",
    ),
}


def get(name: str) -> Preset:
    """The preset called ``name``, or a CifarSearchError listing the known ones."""
    if name not in PRESETS:
        raise CifarSearchError(f"no preset named {name!r} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]
