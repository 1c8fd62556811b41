"""Machine learning parts of forgather: data, models, optimizers and trainers (they import torch)."""
