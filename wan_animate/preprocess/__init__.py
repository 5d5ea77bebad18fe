"""Preprocessing: a photo and a driving video become model-ready `Conditioning`, previews and a report.

Each module is one stage of the contract (``WAN_ANIMATE_CONTRACT.md``); `Preprocessor` runs them in order.
"""

from .mask import PointPrompt
from .prepare import Preprocessed, PreprocessOptions, Preprocessor
from .report import QualityReport

__all__ = ["PointPrompt", "PreprocessOptions", "Preprocessed", "Preprocessor", "QualityReport"]
