"""The evaluate phase: scoring, quality, statistics, promotion, tables, figures, the report."""
