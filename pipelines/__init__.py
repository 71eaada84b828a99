"""Prefect 3 flows: thin callers of :mod:`soilmoisture.stages`, so a flow run and ``dvc repro`` do the same work.

Prefect needs nothing set up: without ``PREFECT_API_URL`` the first flow call starts a temporary local API.
"""
