"""Cohorts: the embedded demo cohort generator and the validated case sheet."""
