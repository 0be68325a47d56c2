"""The prediction service: `serving.app:create_app` (FastAPI) and its page in `static/`."""
