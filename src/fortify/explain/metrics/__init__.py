"""Attribution metrics, one per file; each registers itself in :data:`ATTRIBUTION_METRICS`."""
