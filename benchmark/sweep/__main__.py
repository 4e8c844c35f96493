import sys

from benchmark.sweep.cli import main

sys.exit(main())
