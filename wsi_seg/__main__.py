"""``python -m wsi_seg``: the ``wsi-seg`` command."""

import sys

from wsi_seg.cli import main

if __name__ == "__main__":
    sys.exit(main())
