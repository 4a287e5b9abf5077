"""inclinet-serve: a model bundle behind a REST API and a web page (FastAPI + uvicorn).

Modules: :mod:`~inclinet.service.cli` (the command line, importable without FastAPI or
TensorFlow), :mod:`~inclinet.service.app` (the application and its routes),
:mod:`~inclinet.service.inference` (one thread that owns the bundle and batches requests),
:mod:`~inclinet.service.sources` (uploaded bytes and catalog galaxies to image arrays),
``static/`` (the web page, served from local files only).
"""
