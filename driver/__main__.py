"""``python -m driver`` is the same as the ``csi-smb-nfs`` command."""

import sys

from driver.cli import main

sys.exit(main())
