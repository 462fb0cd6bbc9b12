from pathlib import Path

from medseg.cohort.synth import SynthConfig, generate_cohort
from medseg.jobs import job

with job(snakemake) as p:
    demo = dict(p["demo"])
    out = Path(snakemake.output.manifest).parent
    if demo.pop("kind", "brats") == "tissue":
        from medseg.cohort.synth_tissue import TissueSynthConfig, generate_tissue_cohort

        generate_tissue_cohort(TissueSynthConfig.from_dict(demo), out, workers=snakemake.threads)
    else:
        demo.pop("n_unlabelled", None)  # a tissue-demo setting
        generate_cohort(SynthConfig.from_dict(demo), out, workers=snakemake.threads)
