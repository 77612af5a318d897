"""The study: compare pretext objectives per dataset and answer with evidence.

``config`` (what a study is: datasets x arms x seeds at one budget and backbone), ``cells`` (the grid as
pretraining configs, one per cell, plus the random-init baseline), ``results`` (cells' evaluations ->
one table, paired comparisons and verdicts) and ``report`` (Markdown, self-contained HTML, Parquet and
JSON). Pure: the Ray runner is ``pretextlab.jobs.study``.
"""

from pretextlab.study.cells import Cell, plan_cells
from pretextlab.study.config import ArmSpec, DatasetSpec, StudyConfig, load_study

__all__ = ["ArmSpec", "Cell", "DatasetSpec", "StudyConfig", "load_study", "plan_cells"]
