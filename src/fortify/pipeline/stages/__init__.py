"""Built-in pipeline stages; every module here is imported by :mod:`fortify.pipeline`."""
