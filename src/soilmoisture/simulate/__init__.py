"""The simulated study area (the platform's embedded default data set): an observing-system simulation
written in the real file formats (docs/raw-layout.md, docs/simulation.md)."""
from __future__ import annotations

from soilmoisture.simulate.generate import generate, run

__all__ = ["generate", "run"]
