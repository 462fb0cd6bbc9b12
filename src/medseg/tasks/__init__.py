"""Task definitions (modalities, labels, regions), presets (BraTS) and dataset layouts."""
from __future__ import annotations

from medseg.tasks.definition import LabelError, Task
from medseg.tasks.presets import brats_task

__all__ = ["LabelError", "Task", "brats_task"]
