import sys

from benchmark.concepts.cli import main

sys.exit(main())
