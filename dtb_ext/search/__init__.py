"""Length-configuration search: the accuracy/cost Pareto front over per-layer token budgets, and picking one
configuration from it for a budget. See `run_search` (engine, any evaluator) and `search_lengths` (QA model)."""
