"""Training: the Accelerate trainer, its resumable state, arguments and presets, schedules,
unfreezing."""

from .arguments import PRESETS, ReIDTrainingArguments, apply_preset, parse_arguments
from .schedules import WarmupSchedule
from .state import TrainerState
from .trainer import ReIDTrainer, build_model_and_processor, load_training_data
from .unfreezing import BlockwiseUnfreezing

__all__ = [
    "PRESETS",
    "BlockwiseUnfreezing",
    "ReIDTrainer",
    "ReIDTrainingArguments",
    "TrainerState",
    "WarmupSchedule",
    "apply_preset",
    "build_model_and_processor",
    "load_training_data",
    "parse_arguments",
]
