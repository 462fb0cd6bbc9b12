"""The workflow seam: the frame every Snakemake script runs in, and the DAG's input functions."""
