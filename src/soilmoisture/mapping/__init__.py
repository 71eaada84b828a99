"""Daily 10 m soil-moisture maps (thesis 4.2 / Fig. 28): per-window pixel feature cubes -> the registered LSTM
-> Cloud-Optimised GeoTIFFs (docs/maps.md). One job per module, in the order the data flows:

* :mod:`.inputs` - the region's rasters on one grid, pixel feature cubes through the data rules of harmonise;
* :mod:`.predict` - :class:`MapModel` and the compiled forward pass over pixel batches;
* :mod:`.validate` - :class:`Validation` of a map against the truth (simulated area);
* :mod:`.products` - the COG written window by window, PNG quicklooks;
* :mod:`.stage` - the ``map`` stage :func:`run` (model loading, output path, MLflow record).

The series starts at a warm-up before ``map.start`` (``data.start``, the start of the training series) so the
recurrent state is spun up as in training; only the requested days are written.
"""
from __future__ import annotations

from soilmoisture.mapping.inputs import build_cube, open_sources
from soilmoisture.mapping.predict import MapModel, predict_cube
from soilmoisture.mapping.products import make_map
from soilmoisture.mapping.stage import load_map_model, model_uri, output_path, run
from soilmoisture.mapping.validate import Validation

__all__ = ["MapModel", "Validation", "build_cube", "load_map_model", "make_map", "model_uri", "open_sources",
           "output_path", "predict_cube", "run"]
