import sys

from push.standin.cli import main

sys.exit(main())
