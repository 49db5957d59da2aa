"""moleflow plugin: the FIRM contrastive loss (`firm` in moleflow.losses) and a contrastive patch model
(`firm` in moleflow.models). moleflow finds both through this distribution's entry points."""

from moleflow_firm.loss import FIRMLoss, positive_mask
from moleflow_firm.model import FIRMPatchModel

__all__ = ["FIRMLoss", "FIRMPatchModel", "positive_mask"]
