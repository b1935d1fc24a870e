import sys

from selectflow.cli import main

sys.exit(main())
