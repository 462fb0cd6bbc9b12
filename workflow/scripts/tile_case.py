from medseg.cohort.sheet import case_row
from medseg.jobs import job
from medseg.tiling import tile_case

with job(snakemake):
    row = case_row(snakemake.input.sheet, snakemake.wildcards.case)
    tile_case(snakemake.wildcards.case, snakemake.input.npz, row["convention"], snakemake.output.npy, snakemake.output.table)
