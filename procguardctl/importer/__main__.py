"""python -m procguardctl.importer SUPERVISORD_CONF: the same as `procguardctl import-supervisor`."""

import sys

from procguardctl.importer.cli import main

sys.exit(main())
