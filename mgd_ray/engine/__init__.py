"""The MGD engine: plain PyTorch teacher training (CPS + CutMix), distillation, evaluation and a
single-process runner. Both runs go through one loop (`fit`) as tasks. It knows nothing about Ray;
whoever runs it passes a RunContext."""

from .checkpoint import atomic_save, load_checkpoint, load_model_state
from .context import LocalContext, RunContext
from .distill import distill_student
from .evaluate import evaluate, sliding_window_logits
from .loop import DivergedError, Task, fit
from .mgd_step import mgd_losses
from .presets import load_preset
from .target_store import write_targets
from .teacher import train_teacher

__all__ = [
    "DivergedError",
    "LocalContext",
    "RunContext",
    "Task",
    "atomic_save",
    "distill_student",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_model_state",
    "load_preset",
    "mgd_losses",
    "sliding_window_logits",
    "train_teacher",
    "write_targets",
]
