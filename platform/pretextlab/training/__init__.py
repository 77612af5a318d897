"""The single-process training step shared by local runs, tests, benchmarks and the Ray Train loop."""

from pretextlab.training.step import StepResult, Trainer, build_optimizer

__all__ = ["StepResult", "Trainer", "build_optimizer"]
