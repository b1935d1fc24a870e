#!/usr/bin/env bash
# CI step, before the tests: Debian's chromium for the real-browser report test
# (tests/report/test_report.py opens the Snakemake report headless and screenshots it to
# results/report_screenshot.png, the CI artefact). Without chromium that test skips.
# Needs root; about a minute.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # fonts-dejavu-core: text in the page and in the screenshot
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
chromium --version 2>/dev/null  # the Debian launcher warns on stderr about memory probing
