"""Recovery plans and restore drills: restore into a sandbox, verify, score RPO/RTO."""
