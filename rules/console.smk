import time

from selectflow.report.summary import print_run_summary

# the summary lists warnings logged after this moment (logs are appended to across runs)
RUN_STARTED = time.time()


onsuccess:
    print_run_summary(config, ok=True, since=RUN_STARTED)


onerror:
    print_run_summary(config, ok=False, since=RUN_STARTED)
