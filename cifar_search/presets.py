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
        "the prescribed layers only: the recipe issue 6 measured; 77.69% validation accuracy "
        "after 25 epochs (trial 0 of study cifar10-prescribed, docs/RESULTS.md)",
    ),
    "aug-adamw": Preset(
        TrainConfig(optimizer="adamw", learning_rate=0.002840261491973015, batch_size=128,
                    schedule="warmup_cosine", weight_decay=0.022079434325294665,
                    label_smoothing=0.1, augment=True, shift=0.16745957632652922, flip=True),
        "the prescribed layers only: 78.05% validation accuracy after 15 epochs (trial 10 of "
        "study cifar10-main), 80.33% after 25 (trial 12 of cifar10-prescribed); "
        "81.05% test after retraining on 50K (docs/RESULTS.md)",
    ),
    "bn-aug-adamw": Preset(
        TrainConfig(optimizer="adamw", learning_rate=0.009797833128532118, batch_size=128,
                    schedule="warmup_cosine", weight_decay=0.00041036091540167923,
                    label_smoothing=0.1, batch_norm=True, augment=True,
                    shift=0.15898298037523345, flip=True),
        "81.66% validation accuracy after 15 epochs (trial 1 of study cifar10-main; 81.91% and "
        "81.82% in earlier runs on other machines); 83.27% test after retraining on 50K "
        "(mean of 3 seeds, docs/RESULTS.md)",
    ),
}

# The warm start of a new study, by its layers: the best measured preset for them.
DEFAULTS: dict[str, str] = {"variants": "bn-aug-adamw", "prescribed": "aug-adamw"}


def get(name: str) -> Preset:
    """The preset called ``name``, or a CifarSearchError listing the known ones."""
    if name not in PRESETS:
        raise CifarSearchError(f"no preset named {name!r} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]
