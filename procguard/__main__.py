import sys

from procguard.cli import main

sys.exit(main())
