"""Attribution methods, one per file; each registers itself in :data:`fortify.explain.ATTRIBUTIONS`."""
