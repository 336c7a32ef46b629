"""fortify: make neural networks robust, compact and trustworthy, and prove it with measured numbers."""
from __future__ import annotations

from fortify import errors
from fortify.threat import ThreatModel

__version__ = "0.1.0"

__all__ = ["ThreatModel", "errors", "__version__"]
