"""``python -m simulation.nemesis --seed N --nodes 5 --faults partitions,crashes,pauses``."""

import sys

from .cli import main

sys.exit(main())
