"""Training: the teacher (trained once, cached), recovery fine-tunes, student distillation and early stopping."""
from .early_stopping import EarlyStopping, Monitor, replay
from .loops import distill, distillation_loss, logits_of, recover, train_teacher
from .teacher import build_model, cache_key, cached_logits, ensemble_logits, trained_teacher, weights_key

__all__ = ["EarlyStopping", "Monitor", "replay", "distill", "distillation_loss", "logits_of", "recover",
           "train_teacher", "build_model", "cache_key", "cached_logits", "ensemble_logits", "trained_teacher",
           "weights_key"]
