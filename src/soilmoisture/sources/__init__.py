"""Readers: one module per raw source format, each returning tidy pandas frames named as in
:mod:`soilmoisture.schema`. Each module declares its file pattern, date format, bands, units and
nodata at the top (the way torchgeo's dataset classes do). Readers never write into their inputs.

The common probe frame the raster readers take has the columns ``probe_id, lat, lon`` (WGS84 degrees).
"""
