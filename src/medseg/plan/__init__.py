"""The resolved plan of a dataset: every decision (recipe, model runs) made once."""
