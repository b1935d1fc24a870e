import sys
import time

from selectflow.check import data_check_text, is_dry_run
from selectflow.summary import print_run_summary

# the summary lists warnings logged after this moment (logs are appended to across runs)
RUN_STARTED = time.time()

if workflow.is_main_process and is_dry_run(sys.argv):
    # a dry run also checks the data: format, records, id source, first bad line per dataset
    _problems = data_check_text(config)
    if _problems:
        raise WorkflowError(_problems)


onsuccess:
    print_run_summary(config, ok=True, since=RUN_STARTED)


onerror:
    print_run_summary(config, ok=False, since=RUN_STARTED)
