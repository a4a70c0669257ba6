import sys

from optim4rl.cli import main

sys.exit(main())
