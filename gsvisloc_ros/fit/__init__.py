"""Fitting a 3DGS map to posed photos on the CPU: :func:`fit` (training) and its report."""

from .trainer import FitConfig, FitResult, Trainer, fit

__all__ = ["FitConfig", "FitResult", "Trainer", "fit"]
