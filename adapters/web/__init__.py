"""The web adapter of ``pipestate serve`` (``pipestate[web]``: FastAPI and uvicorn)."""
