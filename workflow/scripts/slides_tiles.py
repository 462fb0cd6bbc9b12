from pathlib import Path

from medseg.config import from_mapping
from medseg.jobs import job
from medseg.wsi.stain import load_stain
from medseg.wsi.tiles import TileConfig, tile_slide

with job(snakemake) as p:
    tile_slide(p["slide"], p["annotation"], p["classes"], Path(snakemake.output.npy).with_suffix(""),
               from_mapping(TileConfig, p["tiles"], f"datasets.{snakemake.wildcards.slideset}.tiles."),
               load_stain(snakemake.input.stain), mpp0=p["slide_mpp"])
