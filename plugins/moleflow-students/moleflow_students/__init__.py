"""Uninformed Students (Bergmann et al., CVPR 2020) as a moleflow model plugin; see README.md."""

from __future__ import annotations

from moleflow_students.model import UninformedStudents
from moleflow_students.options import StudentsOptions

__all__ = ["StudentsOptions", "UninformedStudents"]
