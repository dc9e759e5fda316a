import sys

from wg_wrap.cli import main

sys.exit(main())
