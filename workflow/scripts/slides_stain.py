import json

from medseg.jobs import job
from medseg.wsi.tiles import fit_stain_target

with job(snakemake) as p:
    if p["method"] == "none":
        with open(snakemake.output.stain, "w") as f:
            json.dump({"method": "none"}, f)
    else:
        fit_stain_target(p["slides"], p["method"], p["mpp"], mpp0=p["slide_mpp"]).save(snakemake.output.stain)
