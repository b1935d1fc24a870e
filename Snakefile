from snakemake.utils import min_version

min_version("8.20")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/router.smk"
include: "rules/select.smk"
include: "rules/train.smk"
include: "rules/index.smk"


rule all:
    default_target: True
    input:
        final_targets,
