"""The coordinator service: the round engine over HTTPS with mTLS, a database, blobs and a model registry."""
