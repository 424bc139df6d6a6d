"""Reports of a study: what they compute (``analysis``), the figures (``plots``, ``figures``), the offline pages
(``page``, ``compare``, ``html``; written by ``write``), a live dashboard and a headless browser for the tests.
``python -m search.report [overrides]``."""
from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from .compare import joint_front
    from .data import StudyData, load, locate
    from .write import after_search, report, write_comparison, write_study_report

__all__ = ["StudyData", "load", "locate", "joint_front", "after_search", "report", "write_study_report", "write_comparison"]
__getattr__ = exports(__name__, {"joint_front": ".compare", "StudyData": ".data", "load": ".data", "locate": ".data",
                                 **dict.fromkeys(["after_search", "report", "write_comparison", "write_study_report"],
                                                 ".write")})
