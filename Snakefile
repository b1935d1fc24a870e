from snakemake.utils import min_version

min_version("8.20")


# The demo's config only when no --configfile is given: Snakemake would merge a user's
# file into it, and the demo's datasets would be selected from too.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/router.smk"
include: "rules/select.smk"
include: "rules/train.smk"
include: "rules/index.smk"
include: "rules/compare.smk"
include: "rules/report.smk"
include: "rules/console.smk"


rule all:
    default_target: True
    input:
        FINAL_TARGETS,
        rules.report_figures.output,
