"""Auto-scheduling with MetaSchedule and the per-target tuning cache."""
