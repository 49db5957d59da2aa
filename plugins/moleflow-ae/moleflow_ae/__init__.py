"""moleflow-ae: a reconstruction autoencoder model (`--model ae`) and AE losses for moleflow.

Registered through this distribution's entry points (setup.cfg); moleflow never imports it by path.
"""

from __future__ import annotations

from moleflow_ae.losses import FocalFrequencyLoss, MSELoss, SobelGradientLoss, SSIMLoss
from moleflow_ae.model import ReconstructionAE
from moleflow_ae.options import AEOptions

__all__ = ["AEOptions", "FocalFrequencyLoss", "MSELoss", "ReconstructionAE", "SSIMLoss", "SobelGradientLoss"]
