"""Analysis of trained models and study records: representation drift, grounding probes,
and the report (tables and plots). Task metrics live in vlpdist.metrics, below the engine."""
