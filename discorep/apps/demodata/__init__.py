"""Deterministic, offline demo data: shape scenes and videos (`scenes`), the same shapes on photos
(`photo_scenes`), coin composites with exact masks (`photo_objects`), all assembled by `build`."""
