import sys

from clusterkit.cli import main

sys.exit(main())
